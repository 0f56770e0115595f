"""The seeded synthetic feed generator (``triotrade make-feed``)."""

from __future__ import annotations

import gzip
import json
import re
import statistics
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from adapters import feedgen
from adapters.feedgen import PAIRS, generate_feed, main, pair_spec
from adapters.replay import FeedReader
from engine.events import Depth, Quote

UTC = timezone.utc
SYMS = ["EURUSD", "GBPUSD", "USDJPY"]


def make(tmp_path: Path, name: str = "f.jsonl.gz", **kw) -> tuple[Path, dict]:
    kw.setdefault("symbols", SYMS)
    kw.setdefault("quotes", 5000)
    path = tmp_path / name
    return path, generate_feed(path, **kw)


def read(path: Path) -> tuple[list, FeedReader]:
    reader = FeedReader(path, strict=True)
    return list(reader), reader


# -- determinism -------------------------------------------------------------------------


def test_same_seed_gives_the_same_bytes_wherever_written(tmp_path):
    a, _ = make(tmp_path, "a.jsonl.gz", seed=7, depth=5)
    b, _ = make(tmp_path, "other-name.jsonl.gz", seed=7, depth=5)
    assert a.read_bytes() == b.read_bytes()
    plain, _ = make(tmp_path, "c.jsonl", seed=7, depth=5)
    assert gzip.decompress(a.read_bytes()) == plain.read_bytes()
    assert a.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0


def test_a_different_seed_gives_a_different_feed(tmp_path):
    a, _ = make(tmp_path, "a.jsonl", seed=1)
    b, _ = make(tmp_path, "b.jsonl", seed=2)
    assert a.read_bytes() != b.read_bytes()
    qa, _ = read(a)
    qb, _ = read(b)
    assert [q.bid for q in qa[:50]] != [q.bid for q in qb[:50]]


def test_blocks_join_seamlessly(tmp_path, monkeypatch):
    monkeypatch.setattr(feedgen, "BLOCK", 700)
    path, stats = make(tmp_path, quotes=5000, depth=3)
    events, reader = read(path)
    assert reader.stats.quotes == 5000 and reader.stats.late == 0
    # No jump at a block edge: each pair's mid moves by a few pips at most per tick.
    last: dict[str, float] = {}
    for q in events:
        if isinstance(q, Quote):
            if q.symbol in last:
                assert abs(q.mid / last[q.symbol] - 1) < 0.002
            last[q.symbol] = q.mid


# -- shape -------------------------------------------------------------------------------


def test_the_feed_reads_back_with_no_errors_and_the_requested_count(tmp_path):
    path, stats = make(tmp_path, quotes=20_000, seed=3)
    events, reader = read(path)
    s = reader.stats
    assert (s.quotes, s.depths, s.malformed, s.late, s.crossed, s.other_types, s.blank) == (20_000, 0, 0, 0, 0, 0, 0)
    assert stats["quotes"] == 20_000 and sum(stats["symbols"].values()) == 20_000
    assert Counter(q.symbol for q in events) == stats["symbols"]
    assert stats["first_ts"] == events[0].ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert stats["bytes"] == path.stat().st_size


def test_quotes_look_like_fx(tmp_path):
    path, _ = make(tmp_path, quotes=30_000, seed=11, symbols=list(PAIRS))
    events, _ = read(path)
    ts = [q.ts for q in events]
    assert ts == sorted(ts)
    assert all(q.bid < q.ask for q in events)
    by_sym: dict[str, list[Quote]] = {}
    for q in events:
        by_sym.setdefault(q.symbol, []).append(q)
    assert set(by_sym) == set(PAIRS)
    for sym, qs in by_sym.items():
        spec = PAIRS[sym]
        assert all(round(q.bid, spec.precision) == q.bid and round(q.ask, spec.precision) == q.ask for q in qs)
        spreads_pips = [(q.ask - q.bid) / spec.pip for q in qs]
        med = statistics.median(spreads_pips)
        assert 0.5 * spec.spread_pips <= med <= 2.5 * spec.spread_pips, (sym, med)
        mids = [q.mid for q in qs]
        assert all(abs(m / spec.mid - 1) < 0.05 for m in mids), sym  # days, not years, of drift
        moved = sum(a != b for a, b in zip(mids, mids[1:])) / (len(mids) - 1)
        assert 0.7 < moved < 1.0, (sym, moved)  # like the recorded feeds (about 0.9)
    # The busiest pair ticks more often than the quietest.
    assert len(by_sym["EURUSD"]) > len(by_sym["EURGBP"])


def test_wire_text_matches_recorded_feeds(tmp_path):
    path, _ = make(tmp_path, quotes=200, seed=5)
    lines = gzip.decompress(path.read_bytes()).splitlines()
    assert len(lines) == 200
    first = json.loads(lines[0])
    assert list(first) == ["type", "payload", "recvTs"]
    assert list(first["payload"]) == ["symbol", "bid", "ask", "ts"]
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    for line in lines:
        msg = json.loads(line)
        t, r = msg["payload"]["ts"], msg["recvTs"]
        assert stamp.match(t) and stamp.match(r)
        assert datetime.fromisoformat(r) - datetime.fromisoformat(t) == timedelta(milliseconds=1)


def test_jpy_pairs_have_three_decimals_and_unknown_pairs_get_generic_parameters(tmp_path):
    assert pair_spec("USDJPY").precision == 3
    assert pair_spec("CADJPY").precision == 3 and pair_spec("CADJPY").mid > 10
    assert pair_spec("USDSEK").precision == 5
    path, _ = make(tmp_path, symbols=["CADJPY", "USDSEK"], quotes=3000)
    events, reader = read(path)
    assert reader.stats.quotes == 3000
    for q in events:
        p = 3 if q.symbol == "CADJPY" else 5
        assert round(q.bid, p) == q.bid and q.bid < q.ask


def test_ticks_follow_the_trading_week_and_the_day(tmp_path):
    friday_evening = datetime(2024, 1, 5, 18, tzinfo=UTC)
    path, _ = make(tmp_path, quotes=100_000, start=friday_evening, symbols=["EURUSD"])
    events, _ = read(path)
    ts = [q.ts for q in events]
    assert ts[0] >= friday_evening
    close, reopen = datetime(2024, 1, 5, 21, tzinfo=UTC), datetime(2024, 1, 7, 21, tzinfo=UTC)
    assert not [t for t in ts if close <= t < reopen]  # closed over the weekend
    assert ts[-1] > reopen + timedelta(days=1)
    hours = Counter(t.hour for t in ts if reopen <= t < reopen + timedelta(days=1))
    assert hours[14] > 3 * hours[21]  # London/New York overlap vs. the rollover
    assert hours[8] > 1.5 * hours[3]  # London morning vs. late Asia


def test_the_first_tick_follows_the_start(tmp_path):
    start = datetime(2024, 3, 5, 9, 30, 15, 250000, tzinfo=UTC)
    path, _ = make(tmp_path, quotes=10, start=start)
    events, _ = read(path)
    assert start <= events[0].ts < start + timedelta(minutes=1)


# -- depth -------------------------------------------------------------------------------


def test_depth_snapshots_decode_and_sit_on_the_quote_before_them(tmp_path):
    path, stats = make(tmp_path, quotes=5000, depth=7, seed=2)
    events, reader = read(path)
    assert reader.stats.quotes == 5000
    assert reader.stats.depths == stats["depths"] > 500
    prev = None
    for e in events:
        if isinstance(e, Depth):
            assert isinstance(prev, Quote) and prev.symbol == e.symbol and prev.ts == e.ts
            assert len(e.bids) == len(e.asks) == 7
            assert (e.bids[0][0], e.asks[0][0]) == (prev.bid, prev.ask)
            bid_px, ask_px = [p for p, _ in e.bids], [p for p, _ in e.asks]
            assert bid_px == sorted(set(bid_px), reverse=True) and ask_px == sorted(set(ask_px))
            for side in (e.bids, e.asks):
                sizes = [s for _, s in side]
                assert sizes == sorted(set(sizes)) and sizes[0] >= 500_000
        prev = e
    assert reader.stats.crossed == 0


def test_depth_one_is_just_the_top(tmp_path):
    path, _ = make(tmp_path, quotes=500, depth=1)
    depths = [e for e in read(path)[0] if isinstance(e, Depth)]
    assert depths and all(len(d.bids) == len(d.asks) == 1 for d in depths)


# -- arguments and the command line --------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [{"symbols": []}, {"symbols": ["EURUSD", "EURUSD"]}, {"quotes": -1}, {"depth": 51}, {"depth": -1}],
)
def test_bad_arguments_are_refused(tmp_path, kw):
    with pytest.raises(ValueError):
        make(tmp_path, **kw)


def test_zero_quotes_writes_an_empty_feed(tmp_path):
    path, stats = make(tmp_path, "e.jsonl", quotes=0)
    assert path.read_bytes() == b"" and stats["quotes"] == 0 and stats["first_ts"] is None


def test_main_writes_the_feed_and_prints_its_summary(tmp_path, capsys):
    out = tmp_path / "cli.jsonl.gz"
    assert main(["--out", str(out), "--symbols", "EURUSD,USDJPY", "--quotes", "1500",
                 "--seed", "4", "--depth", "3", "--start", "2024-02-01T08:00:00Z"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["quotes"] == 1500 and set(summary["symbols"]) == {"EURUSD", "USDJPY"}
    assert summary["first_ts"].startswith("2024-02-01T08:")
    again = tmp_path / "api.jsonl.gz"
    generate_feed(again, symbols=["EURUSD", "USDJPY"], quotes=1500, seed=4, depth=3,
                  start=datetime(2024, 2, 1, 8, tzinfo=UTC))
    assert out.read_bytes() == again.read_bytes()


@pytest.mark.parametrize("argv", [["--quotes", "10"], ["--out", "x", "--start", "yesterday"],
                                  ["--out", "x", "--depth", "99"]])
def test_main_rejects_bad_command_lines(tmp_path, argv, capsys):
    argv = [a if a != "x" else str(tmp_path / "x.jsonl") for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
