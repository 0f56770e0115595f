"""Recorded-feed streaming (PROTOCOL section 8): real fixtures and damaged files."""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.replay import FeedReader, FeedStats, merge
from engine.codec import format_time
from engine.errors import FeedError
from engine.events import Depth, Quote

DATA = Path(__file__).parent / "data"
T0 = datetime(2024, 1, 2, tzinfo=timezone.utc)


def ts(seconds: float) -> str:
    return format_time(T0 + timedelta(seconds=seconds))


def quote(t: float = 0.0, sym: str = "EURUSD", bid: float = 1.1, ask: float = 1.1002) -> bytes:
    return msgspec.json.encode({
        "type": "quoteEvent",
        "payload": {"symbol": sym, "bid": bid, "ask": ask, "ts": ts(t)},
        "recvTs": ts(t + 0.001),
    })


def depth(t: float = 0.0, sym: str = "EURUSD", bid: float = 1.1, ask: float = 1.1002) -> bytes:
    return msgspec.json.encode({
        "type": "depthEvent",
        "payload": {"symbol": sym, "bids": [[bid, 1e6], [bid - 1e-4, 2e6]],
                    "asks": [[ask, 1e6], [ask + 1e-4, 2e6]], "ts": ts(t)},
    })


EXECUTION = msgspec.json.encode({"type": "executionEvent", "payload": {"accountId": "a", "orderId": "o"}})
PORTFOLIO = msgspec.json.encode({"type": "portfolioEvent", "payload": {"accountId": "a"}})


def write(path: Path, lines: list[bytes], *, sep: bytes = b"\n", head: bytes = b"") -> Path:
    data = head + b"".join(line + sep for line in lines)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def read_all(reader: FeedReader) -> list[Quote | Depth]:
    return list(reader)


# -- real recorded feeds --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "quotes", "depths", "first", "last"),
    [
        ("eurusd_oanda_3k.jsonl.gz", 3000, 0, "2014-05-04T21:00:00.462Z", "2014-05-05T02:25:05.906Z"),
        ("eurusd_nzdusd_oanda_2k.jsonl.gz", 2000, 0, "2014-05-08T00:00:00.036Z", "2014-05-08T00:40:46.710Z"),
        ("usdjpy_truefx_1k.jsonl.gz", 1000, 0, "2013-01-01T22:00:00.295Z", "2013-01-01T22:35:13.494Z"),
        ("btcusdt_binance_depth10_300.jsonl.gz", 0, 300, "2024-08-08T23:54:15.408Z", "2024-08-08T23:54:49.024Z"),
    ],
)
def test_real_fixtures_decode_with_expected_counts(name, quotes, depths, first, last):
    reader = FeedReader(DATA / name)
    events = read_all(reader)
    s = reader.stats
    assert (s.lines, s.quotes, s.depths, len(events)) == (quotes + depths, quotes, depths, quotes + depths)
    assert (s.malformed, s.late, s.crossed, s.blank, s.other_types, s.truncated) == (0, 0, 0, 0, 0, False)
    assert format_time(s.first_ts) == format_time(datetime.fromisoformat(first))
    assert format_time(s.last_ts) == format_time(datetime.fromisoformat(last))
    assert events[0].ts == s.first_ts and events[-1].ts == s.last_ts


def test_real_depth_snapshots_have_ten_ordered_levels():
    events = read_all(FeedReader(DATA / "btcusdt_binance_depth10_300.jsonl.gz"))
    assert all(isinstance(e, Depth) for e in events)
    for e in events:
        assert len(e.bids) == len(e.asks) == 10
        assert [p for p, _ in e.bids] == sorted((p for p, _ in e.bids), reverse=True)
        assert [p for p, _ in e.asks] == sorted(p for p, _ in e.asks)
        assert e.bids[0][0] < e.asks[0][0]
    assert events[0].bids[0] == (61837.63, 3.78826)


def test_real_quote_values_survive_decoding():
    first = next(iter(FeedReader(DATA / "usdjpy_truefx_1k.jsonl.gz")))
    assert (first.symbol, first.bid, first.ask) == ("USDJPY", 86.655, 86.728)
    locked = [q for q in FeedReader(DATA / "usdjpy_truefx_1k.jsonl.gz") if q.bid == q.ask]
    assert len(locked) == 1  # locked is not crossed


def test_symbols_filter_on_a_two_pair_feed():
    reader = FeedReader(DATA / "eurusd_nzdusd_oanda_2k.jsonl.gz", symbols={"EURUSD"})
    events = read_all(reader)
    assert {e.symbol for e in events} == {"EURUSD"}
    assert (reader.stats.quotes, reader.stats.filtered, reader.stats.lines) == (598, 1402, 2000)
    everything = read_all(FeedReader(DATA / "eurusd_nzdusd_oanda_2k.jsonl.gz"))
    assert events == [e for e in everything if e.symbol == "EURUSD"]
    assert read_all(FeedReader(DATA / "eurusd_nzdusd_oanda_2k.jsonl.gz", symbols=[])) == []


@pytest.mark.parametrize("chunk", [1 << 20, 4096, 97])
def test_batches_and_iteration_agree(chunk):
    reader = FeedReader(DATA / "eurusd_nzdusd_oanda_2k.jsonl.gz", chunk_size=chunk)
    batches = list(reader.batches())
    assert all(batches)  # never an empty batch
    flat = [e for b in batches for e in b]
    assert flat == list(reader)
    assert len(flat) == 2000
    if chunk < 4096:
        assert len(batches) > 100


def test_reader_can_be_read_again_with_fresh_stats():
    reader = FeedReader(DATA / "usdjpy_truefx_1k.jsonl.gz")
    assert len(list(reader)) == len(list(reader)) == 1000
    assert reader.stats.quotes == 1000


def test_stats_as_dict_is_json():
    reader = FeedReader(DATA / "eurusd_oanda_3k.jsonl.gz")
    list(reader)
    d = json.loads(json.dumps(reader.stats.as_dict()))
    assert d["quotes"] == 3000 and d["path"].endswith("eurusd_oanda_3k.jsonl.gz")
    assert d["first_ts"].startswith("2014-05-04T21:00:00.462") and d["first_ts"].endswith("Z")


# -- line rules -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["f.jsonl", "f.jsonl.gz"])
def test_bom_at_the_start_is_skipped(tmp_path, name):
    path = write(tmp_path / name, [quote(0), quote(1)], head=b"\xef\xbb\xbf")
    reader = FeedReader(path)
    assert len(read_all(reader)) == 2
    assert reader.stats.malformed == 0


def test_bom_later_in_the_file_is_malformed(tmp_path):
    path = write(tmp_path / "f.jsonl", [quote(0), b"\xef\xbb\xbf" + quote(1)])
    reader = FeedReader(path)
    assert len(read_all(reader)) == 1
    assert [line for line, _ in reader.stats.errors] == [2]


def test_blank_lines_are_skipped_and_counted(tmp_path):
    path = write(tmp_path / "f.jsonl", [b"", quote(0), b"", b"   ", quote(1), b"\t", b"{bad", quote(2)])
    reader = FeedReader(path)
    assert [e.ts for e in read_all(reader)] == [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)]
    assert (reader.stats.blank, reader.stats.lines, reader.stats.malformed) == (4, 8, 1)
    assert reader.stats.errors[0][0] == 7


def test_blank_lines_alone_take_the_fast_path_correctly(tmp_path):
    path = write(tmp_path / "f.jsonl", [quote(0), b"", quote(1), b"", quote(0.5)])
    reader = FeedReader(path)
    assert len(read_all(reader)) == 3
    assert (reader.stats.blank, reader.stats.late_lines) == (2, [5])


def test_crlf_line_ends(tmp_path):
    path = write(tmp_path / "f.jsonl", [quote(0), quote(1), b"", EXECUTION], sep=b"\r\n")
    reader = FeedReader(path)
    assert len(read_all(reader)) == 2
    s = reader.stats
    assert (s.malformed, s.blank, s.other_types, s.lines) == (0, 1, 1, 4)


def test_last_line_without_newline_is_read(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(quote(0) + b"\n" + quote(1))
    reader = FeedReader(path)
    assert len(read_all(reader)) == 2
    assert reader.stats.lines == 2


def test_other_types_are_skipped_not_errors(tmp_path):
    subscribed = b'{"type":"subscribed","payload":{"symbols":["EURUSD"],"events":["quoteEvent"]}}'
    path = write(tmp_path / "f.jsonl", [EXECUTION, quote(0), PORTFOLIO, subscribed, depth(1), b'{"type":"newKind"}'])
    reader = FeedReader(path, strict=True)
    events = read_all(reader)
    assert [type(e) for e in events] == [Quote, Depth]
    assert (reader.stats.other_types, reader.stats.malformed) == (4, 0)
    assert (reader.stats.quotes, reader.stats.depths) == (1, 1)


BAD_LINES = {
    "not json": b"{not json",
    "negative bid": quote(0).replace(b'"bid":1.1', b'"bid":-1.1'),
    "bid as a string": quote(0).replace(b'"bid":1.1', b'"bid":"1.1"'),
    "no ts": b'{"type":"quoteEvent","payload":{"symbol":"EURUSD","bid":1.1,"ask":1.2}}',
    "bad ts": quote(0).replace(b"2024-01-02T", b"2024-13-02T"),
    "depth level shape": depth(0).replace(b"[[1.1,1000000.0]", b"[[1.1]"),
    "an array": b"[1, 2]",
    "type not a string": b'{"type": 5, "payload": {}}',
    "two envelopes on one line": quote(0) + b" " + quote(0),
    "invalid utf-8": quote(0).replace(b"EURUSD", b"EUR\xffSD"),
}


@pytest.mark.parametrize("bad", list(BAD_LINES), ids=list(BAD_LINES))
def test_a_malformed_line_is_counted_with_its_number(tmp_path, bad):
    path = write(tmp_path / "f.jsonl", [quote(0), b"", quote(1), BAD_LINES[bad], quote(2)])
    reader = FeedReader(path)
    assert [e.ts.second for e in read_all(reader)] == [0, 1, 2]
    assert reader.stats.malformed == 1
    assert reader.stats.errors[0][0] == 4
    with pytest.raises(FeedError) as exc:
        read_all(FeedReader(path, strict=True))
    assert exc.value.line == 4 and exc.value.path == str(path)
    assert f"{path}:4" in str(exc.value)


def test_malformed_messages_name_the_field(tmp_path):
    path = write(tmp_path / "f.jsonl", [BAD_LINES["negative bid"], BAD_LINES["no ts"]])
    reader = FeedReader(path)
    read_all(reader)
    (l1, m1), (l2, m2) = reader.stats.errors
    assert (l1, l2) == (1, 2)
    assert "$.payload.bid" in m1 and "quoteEvent" in m1
    assert "ts" in m2


def test_strict_delivers_good_batches_before_the_bad_line(tmp_path):
    lines = [quote(i) for i in range(50)] + [b"{oops"] + [quote(60)]
    path = write(tmp_path / "f.jsonl", lines)
    got = []
    with pytest.raises(FeedError, match=":51"):
        for e in FeedReader(path, strict=True, chunk_size=500):
            got.append(e)
    assert len(got) >= 40 and all(e.ts.second == i for i, e in enumerate(got))


def test_only_the_first_hundred_errors_are_kept(tmp_path):
    path = write(tmp_path / "f.jsonl", [b"{x"] * 150 + [quote(0)])
    reader = FeedReader(path)
    assert len(read_all(reader)) == 1
    assert reader.stats.malformed == 150
    assert [line for line, _ in reader.stats.errors] == list(range(1, 101))


# -- time order and crossed prices -----------------------------------------------------


def test_late_lines_are_counted_and_still_delivered_in_file_order(tmp_path):
    times = [1, 2, 0.5, 3, 2.5, 3, 4]
    path = write(tmp_path / "f.jsonl", [quote(t) for t in times])
    reader = FeedReader(path)
    got = [(e.ts - T0).total_seconds() for e in read_all(reader)]
    assert got == times
    assert (reader.stats.late, reader.stats.late_lines) == (2, [3, 5])
    assert reader.stats.last_ts == T0 + timedelta(seconds=4)
    assert reader.stats.first_ts == T0 + timedelta(seconds=1)


def test_late_detection_spans_batches_and_symbols(tmp_path):
    lines = [quote(t, sym) for t, sym in [(5, "EURUSD"), (6, "USDJPY"), (5.5, "EURUSD"), (7, "USDJPY")]]
    path = write(tmp_path / "f.jsonl", lines)
    for chunk in (1 << 20, len(lines[0]) + 1):
        reader = FeedReader(path, chunk_size=chunk)
        assert len(read_all(reader)) == 4
        assert reader.stats.late_lines == [3]
        # Only what is delivered sets the clock: alone, EURUSD is in order.
        reader = FeedReader(path, chunk_size=chunk, symbols={"EURUSD"})
        read_all(reader)
        assert reader.stats.late == 0


def test_late_lines_keep_the_first_hundred(tmp_path):
    path = write(tmp_path / "f.jsonl", [quote(1000)] + [quote(i) for i in range(150)])
    reader = FeedReader(path)
    read_all(reader)
    assert reader.stats.late == 150
    assert reader.stats.late_lines == list(range(2, 102))


def test_crossed_quotes_and_depths_are_counted(tmp_path):
    lines = [quote(0), quote(1, bid=1.2, ask=1.1), quote(2, bid=1.1, ask=1.1),
             depth(3, bid=1.3, ask=1.2), depth(4)]
    path = write(tmp_path / "f.jsonl", lines)
    reader = FeedReader(path)
    assert len(read_all(reader)) == 5
    assert reader.stats.crossed == 2


# -- damaged and missing files -----------------------------------------------------------


def _gz_feed(tmp_path: Path, n: int) -> tuple[Path, list[bytes]]:
    lines = [quote(i * 0.25, bid=1.1 + i * 1e-5, ask=1.1002 + i * 1e-5) for i in range(n)]
    path = tmp_path / "full.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(l + b"\n" for l in lines), compresslevel=1, mtime=0))
    return path, lines


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.97])
def test_truncated_gzip_delivers_everything_before_the_cut(tmp_path, fraction):
    full, lines = _gz_feed(tmp_path, 5000)
    blob = full.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(blob[: int(len(blob) * fraction)])
    # What an ideal reader can recover: every complete line of the inflatable prefix.
    prefix = zlib.decompressobj(31).decompress(cut.read_bytes())
    complete = prefix.count(b"\n")

    reader = FeedReader(cut, chunk_size=10_000)
    events = read_all(reader)
    s = reader.stats
    assert s.truncated and complete > 0
    assert len(events) == s.quotes == s.lines == complete
    assert events == [msgspec.json.decode(l, type=_Env).payload for l in lines[:complete]]
    assert f"after line {complete}" in s.truncation_error
    assert "end-of-stream" in s.truncation_error
    assert s.malformed == 0

    with pytest.raises(FeedError) as exc:
        read_all(FeedReader(cut, strict=True))
    assert exc.value.path == str(cut)


class _Env(msgspec.Struct):
    payload: Quote


def test_corrupt_gzip_is_reported_not_raised(tmp_path):
    full, _ = _gz_feed(tmp_path, 3000)
    blob = bytearray(full.read_bytes())
    mid = len(blob) // 2
    blob[mid : mid + 64] = bytes(64)
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(bytes(blob))
    reader = FeedReader(bad)
    events = read_all(reader)
    assert reader.stats.truncated
    assert 0 < len(events) < 3000
    assert "corrupt" in reader.stats.truncation_error or "end-of-stream" in reader.stats.truncation_error


def test_concatenated_gzip_members_read_as_one_feed(tmp_path):
    path = tmp_path / "multi.jsonl.gz"
    path.write_bytes(gzip.compress(quote(0) + b"\n", mtime=0) + gzip.compress(quote(1) + b"\n", mtime=0) + b"\0" * 8)
    reader = FeedReader(path)
    assert len(read_all(reader)) == 2
    assert not reader.stats.truncated


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    path = tmp_path / "feed.jsonl"
    path.write_bytes(gzip.compress(quote(0) + b"\n", mtime=0))
    assert len(read_all(FeedReader(path))) == 1


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.jsonl.gz"
    with pytest.raises(FeedError, match="nope.jsonl.gz") as exc:
        FeedReader(path)
    assert exc.value.path == str(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    reader = FeedReader(path)
    assert read_all(reader) == []
    assert reader.stats == FeedStats(str(path))


# -- merging ----------------------------------------------------------------------------


def test_merge_orders_by_ts_and_keeps_reader_order_on_ties(tmp_path):
    a = write(tmp_path / "a.jsonl", [quote(t, "EURUSD") for t in (0, 2, 2, 5)])
    b = write(tmp_path / "b.jsonl.gz", [quote(t, "USDJPY", 150.0, 150.02) for t in (1, 2, 3)])
    got = [((e.ts - T0).total_seconds(), e.symbol) for e in merge([FeedReader(a), FeedReader(b)])]
    assert got == [(0, "EURUSD"), (1, "USDJPY"), (2, "EURUSD"), (2, "EURUSD"), (2, "USDJPY"),
                   (3, "USDJPY"), (5, "EURUSD")]
    got = [e.symbol for e in merge([FeedReader(b), FeedReader(a)]) if e.ts == T0 + timedelta(seconds=2)]
    assert got == ["USDJPY", "EURUSD", "EURUSD"]


def test_merge_of_real_feeds_is_sorted_and_complete():
    readers = [FeedReader(DATA / "eurusd_oanda_3k.jsonl.gz"), FeedReader(DATA / "usdjpy_truefx_1k.jsonl.gz"),
               FeedReader(DATA / "btcusdt_binance_depth10_300.jsonl.gz")]
    events = list(merge(readers))
    assert len(events) == 4300
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert [r.stats.events for r in readers] == [3000, 1000, 300]
    assert list(merge(readers[:1])) == list(readers[0])


# -- property: any mix of lines, any chunking ------------------------------------------------

_KINDS = st.sampled_from(["quote", "depth", "blank", "other", "bad", "double", "crossed"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kinds=st.lists(st.tuples(_KINDS, st.integers(0, 20)), max_size=40),
    chunk=st.integers(1, 600),
    crlf=st.booleans(),
    gz=st.booleans(),
)
def test_any_feed_in_any_chunking_matches_a_line_by_line_model(tmp_path, kinds, chunk, crlf, gz):
    lines, want, bad, late = [], [], [], []
    clock = -1
    for n, (kind, t) in enumerate(kinds, start=1):
        line = {"quote": lambda: quote(t), "depth": lambda: depth(t), "blank": lambda: b" ",
                "other": lambda: EXECUTION, "bad": lambda: b'{"type":"quoteEvent"}',
                "double": lambda: quote(t) + quote(t),
                "crossed": lambda: quote(t, bid=2.0, ask=1.0)}[kind]()
        lines.append(line)
        if kind in ("quote", "depth", "crossed"):
            want.append((kind, t))
            if t < clock:
                late.append(n)
            clock = max(clock, t)
        elif kind in ("bad", "double"):
            bad.append(n)
    path = write(tmp_path / ("f.jsonl.gz" if gz else "f.jsonl"), lines, sep=b"\r\n" if crlf else b"\n")
    reader = FeedReader(path, chunk_size=chunk)
    got = read_all(reader)
    assert [(e.ts - T0).total_seconds() for e in got] == [t for _, t in want]
    s = reader.stats
    assert [line for line, _ in s.errors] == bad
    assert s.late_lines == late
    assert s.lines == len(lines)
    assert s.blank == sum(k == "blank" for k, _ in kinds)
    assert s.other_types == sum(k == "other" for k, _ in kinds)
    assert s.crossed == sum(k == "crossed" for k, _ in kinds)
    assert s.depths == sum(k == "depth" for k, _ in kinds)
