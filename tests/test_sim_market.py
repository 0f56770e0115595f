"""The simulator's market source: replay schedules on real fixtures, the
seeded synthetic generator, and depth made from quotes."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest

from adapters.replay import FeedReader, merge
from adapters.sim.market import replay_schedule, synthesize_depth, synthetic_schedule
from adapters.sim.rules import SyntheticDepth, levels
from engine.enums import Side
from engine.errors import FeedError
from engine.events import Depth, Quote
from engine.instruments import Instrument

UTC = timezone.utc
DATA = Path(__file__).parent / "data"
EURUSD = DATA / "eurusd_oanda_3k.jsonl.gz"  # 2014-05-04 21:00 .. 2014-05-05 02:25
USDJPY = DATA / "usdjpy_truefx_1k.jsonl.gz"  # 2013-01-01 22:00 .. 22:35
BTC = DATA / "btcusdt_binance_depth10_300.jsonl.gz"  # depth only, 2024-08-08
T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


def recorded(path) -> list:
    return list(FeedReader(path))


# -- replay: pacing ---------------------------------------------------------------------


def test_real_time_offsets_equal_the_ts_differences(monkeypatch):
    import adapters.sim.market as market

    replaced = []
    monkeypatch.setattr(market, "_replace", lambda e, **kw: replaced.append(e) or e)
    events = recorded(EURUSD)
    sched = list(replay_schedule(EURUSD, speed=1.0, loop=False))
    assert [e for _, e in sched] == events
    assert replaced == []  # one feed, no loop: nothing to shift, nothing rewritten
    first = events[0].ts
    for at, ev in sched:
        assert at == pytest.approx((ev.ts - first).total_seconds(), abs=1e-9)
    assert sched[0][0] == 0.0
    assert sched[-1][0] == pytest.approx(5 * 3600 + 25 * 60 + 5.444)


def test_speed_ten_is_a_tenth_of_the_time():
    slow = list(replay_schedule(USDJPY, speed=1.0, loop=False))
    fast = list(replay_schedule(USDJPY, speed=10.0, loop=False))
    assert [e for _, e in fast] == [e for _, e in slow]
    for (a1, _), (a10, _) in zip(slow, fast):
        assert a10 == pytest.approx(a1 / 10, abs=1e-9)
    assert fast[-1][0] == pytest.approx((35 * 60 + 13.199) / 10)


def test_no_speed_means_every_event_at_once():
    sched = list(replay_schedule([EURUSD, USDJPY], speed=None, loop=False))
    assert len(sched) == 4000
    assert {at for at, _ in sched} == {0.0}


def test_offsets_never_go_back_and_follow_the_venue_clock(tmp_path):
    feed = tmp_path / "late.jsonl"
    lines = []
    for sec in (0, 5, 3, 8):  # the third line is late
        lines.append(msgspec.json.encode({"type": "quoteEvent", "payload": {
            "symbol": "EURUSD", "bid": 1.1, "ask": 1.1002,
            "ts": f"2024-01-02T00:00:0{sec}Z"}}))
    feed.write_bytes(b"\n".join(lines) + b"\n")
    sched = list(replay_schedule(feed, speed=1.0, loop=False))
    assert [at for at, _ in sched] == [0.0, 5.0, 5.0, 8.0]
    assert [e.ts.second for _, e in sched] == [0, 5, 3, 8]  # file order kept


# -- replay: several feeds --------------------------------------------------------------


def test_feeds_from_different_days_start_together_and_interleave():
    eur, jpy = recorded(EURUSD), recorded(USDJPY)
    sched = list(replay_schedule([EURUSD, USDJPY], speed=1.0, loop=False))
    assert len(sched) == len(eur) + len(jpy)
    got = [e for _, e in sched]
    # USDJPY (2013) starts first: it keeps its ts; EURUSD moves back to start with it.
    origin = jpy[0].ts
    shift = origin - eur[0].ts
    got_eur = [e for e in got if e.symbol == "EURUSD"]
    got_jpy = [e for e in got if e.symbol == "USDJPY"]
    assert got_jpy == jpy
    assert got_eur == [msgspec.structs.replace(e, ts=e.ts + shift) for e in eur]
    assert got_eur[0].ts == got_jpy[0].ts == origin
    # interleaved by shifted ts: both symbols appear in the first half hour, in ts order
    ts = [e.ts for e in got]
    assert ts == sorted(ts)
    first_100 = Counter(e.symbol for e in got[:100])
    assert first_100["EURUSD"] > 10 and first_100["USDJPY"] > 10
    for at, ev in sched:
        assert at == pytest.approx((ev.ts - origin).total_seconds(), abs=1e-9)


def test_feed_order_breaks_ties_like_merge():
    # aligned, both feeds' first events share a ts: the first path's comes first
    sched = list(replay_schedule([USDJPY, EURUSD], speed=None, loop=False))
    assert [e.symbol for _, e in sched[:2]] == ["USDJPY", "EURUSD"]
    sched = list(replay_schedule([EURUSD, USDJPY], speed=None, loop=False))
    assert [e.symbol for _, e in sched[:2]] == ["EURUSD", "USDJPY"]


def test_align_false_keeps_the_recorded_times():
    got = [e for _, e in replay_schedule([EURUSD, USDJPY], speed=None, loop=False, align=False)]
    assert got == list(merge([FeedReader(EURUSD), FeedReader(USDJPY)]))
    assert [e.symbol for e in got[:1000]] == ["USDJPY"] * 1000  # 2013 before 2014


def test_depth_feed_replays_its_snapshots():
    sched = list(replay_schedule([BTC, USDJPY], speed=2.0, loop=False))
    depths = [e for _, e in sched if isinstance(e, Depth)]
    assert len(depths) == 300 and all(len(d.bids) == len(d.asks) == 10 for d in depths)
    assert depths[0].ts == recorded(USDJPY)[0].ts


# -- replay: looping -----------------------------------------------------------------------


def test_loop_repeats_the_data_with_ts_strictly_increasing_across_the_wrap():
    events = recorded(USDJPY)
    n = len(events)
    sched = list(itertools.islice(replay_schedule(USDJPY, speed=1.0, loop=True), 3 * n + 5))
    got = [e for _, e in sched]
    span = events[-1].ts - events[0].ts
    for k in range(3):
        chunk = got[k * n:(k + 1) * n]
        assert [(e.symbol, e.bid, e.ask) for e in chunk] == [(e.symbol, e.bid, e.ask) for e in events]
        shifts = {c.ts - e.ts for c, e in zip(chunk, events)}
        assert len(shifts) == 1  # each pass is the feed moved as a whole
        assert shifts.pop() >= k * span
    for k in (1, 2, 3):
        assert got[k * n].ts > got[k * n - 1].ts  # the wrap moves forward
        assert sched[k * n][0] > sched[k * n - 1][0]
    ats = [at for at, _ in sched]
    assert ats == sorted(ats)
    assert sched[n][0] == pytest.approx((got[n].ts - got[0].ts).total_seconds())


def test_loop_with_speed_none_and_several_feeds():
    n = 4000
    sched = list(itertools.islice(replay_schedule([EURUSD, USDJPY], speed=None, loop=True), 2 * n))
    assert {at for at, _ in sched} == {0.0}
    assert sched[n][1].ts > max(e.ts for _, e in sched[:n])
    assert Counter(e.symbol for _, e in sched[n:]) == Counter({"EURUSD": 3000, "USDJPY": 1000})


def test_without_loop_the_schedule_stops_at_the_end():
    assert len(list(replay_schedule(USDJPY, speed=1.0, loop=False))) == 1000


def test_an_empty_feed_ends_even_when_looping(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n")
    assert list(replay_schedule(empty, speed=1.0, loop=True)) == []


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError):
        replay_schedule([], speed=1.0, loop=False)
    for speed in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            replay_schedule(USDJPY, speed=speed, loop=False)
    with pytest.raises(FeedError):
        replay_schedule(tmp_path / "missing.jsonl", speed=1.0, loop=False)


# -- synthetic ----------------------------------------------------------------------------------


def take(n: int, **kw) -> list:
    args = dict(symbols=["EURUSD", "USDJPY", "GBPUSD"], seed=7, rate_per_s=50.0, start=T0)
    return list(itertools.islice(synthetic_schedule(**(args | kw)), n))


def test_synthetic_is_deterministic_per_seed():
    a, b, c = take(5000), take(5000), take(5000, seed=8)
    assert a == b
    assert a != c


def test_synthetic_quotes_look_like_quotes():
    sched = take(10_000)
    quotes = [e for _, e in sched]
    assert all(type(q) is Quote and 0 < q.bid < q.ask for q in quotes)
    assert Counter(q.symbol for q in quotes).keys() == {"EURUSD", "USDJPY", "GBPUSD"}
    jpy = [q for q in quotes if q.symbol == "USDJPY"]
    assert all(round(q.bid, 3) == q.bid and round(q.ask, 3) == q.ask for q in jpy)
    assert all(100 < q.bid < 200 for q in jpy)
    eur = [q for q in quotes if q.symbol == "EURUSD"]
    assert all(round(q.bid, 5) == q.bid for q in eur)
    assert 0.5 < sorted(q.ask - q.bid for q in eur)[len(eur) // 2] * 1e4 < 2  # spread ~1 pip
    for at, q in sched:
        assert q.ts == T0 + timedelta(seconds=at)


def test_synthetic_rate_is_as_asked():
    for rate in (5.0, 200.0):
        sched = take(10_000, rate_per_s=rate)
        ats = [at for at, _ in sched]
        assert ats == sorted(ats) and ats[0] > 0
        assert 10_000 / ats[-1] == pytest.approx(rate, rel=0.05)


def test_every_symbol_appears_by_its_weight():
    counts = Counter(e.symbol for _, e in take(10_000, symbols=["EURUSD", "NZDUSD", "XAUUSD"]))
    assert set(counts) == {"EURUSD", "NZDUSD", "XAUUSD"}
    assert counts["EURUSD"] > counts["NZDUSD"] > counts["XAUUSD"] > 1000


def test_synthetic_depth_snapshots_sit_on_their_quote():
    sched = take(5000, depth=5)
    depths = [(i, e) for i, (_, e) in enumerate(sched) if isinstance(e, Depth)]
    assert 0.1 < len(depths) / (len(sched) - len(depths)) < 0.3
    for i, d in depths:
        at_q, q = sched[i - 1]
        assert type(q) is Quote and q.symbol == d.symbol and q.ts == d.ts and sched[i][0] == at_q
        assert d.bids[0][0] == q.bid and d.asks[0][0] == q.ask
        assert len(d.bids) == len(d.asks) == 5 and not d.crossed
        assert [p for p, _ in d.bids] == sorted((p for p, _ in d.bids), reverse=True)
        assert [p for p, _ in d.asks] == sorted(p for p, _ in d.asks)
        assert [s for _, s in d.asks] == sorted(s for _, s in d.asks)
    assert take(3000, depth=5)[:50] == sched[:50]


def test_naive_start_means_utc():
    naive = take(10, start=datetime(2026, 6, 1, 12))
    assert naive == take(10)


@pytest.mark.parametrize("kw", [
    dict(symbols=[]), dict(symbols=["EURUSD", "EURUSD"]), dict(rate_per_s=0.0),
    dict(rate_per_s=math.inf), dict(depth=51), dict(depth=-1),
])
def test_synthetic_refuses_bad_arguments(kw):
    args = dict(symbols=["EURUSD"], seed=1, rate_per_s=10.0, start=T0) | kw
    with pytest.raises(ValueError):
        synthetic_schedule(**args)


# -- depth from a quote -----------------------------------------------------------------------------


EUR = Instrument("EURUSD", "USD", price_precision=5)


def test_synthesized_depth_is_what_the_matching_engine_walks():
    q = Quote("EURUSD", 1.10000, 1.10020, T0)
    synthetic = SyntheticDepth(levels=4, size=2_000_000, spacing_ticks=2)
    d = synthesize_depth(q, synthetic, EUR)
    assert d.symbol == "EURUSD" and d.ts == T0 and not d.crossed
    assert d.bids == ((1.1, 2e6), (1.09998, 2e6), (1.09996, 2e6), (1.09994, 2e6))
    assert d.asks == ((1.1002, 2e6), (1.10022, 2e6), (1.10024, 2e6), (1.10026, 2e6))
    assert d.asks == tuple((p, float(s)) for p, s in levels(Side.BUY, q, None, synthetic, EUR))
    assert msgspec.json.decode(msgspec.json.encode(d), type=Depth) == d  # valid on the wire


def test_synthesized_depth_takes_the_quote_sizes_and_a_depth_limit():
    q = Quote("EURUSD", 1.1, 1.1002, T0, bid_size=300_000.0, ask_size=400_000.0)
    d = synthesize_depth(q, SyntheticDepth(levels=5), EUR, levels=2)
    assert d.bids == ((1.1, 3e5), (1.09999, 1e6))
    assert d.asks == ((1.1002, 4e5), (1.10021, 1e6))
    assert len(synthesize_depth(q, SyntheticDepth(levels=3), EUR, levels=10).bids) == 3
