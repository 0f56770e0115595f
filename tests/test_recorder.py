"""The feed recorder (PROTOCOL section 8): what it writes, and that the
backtest's ``FeedReader`` reads it back, including a gzip file cut short by a
crash after a flush."""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adapters.recorder as recorder_module
from adapters.recorder import Recorder
from adapters.replay import FeedReader
from engine import events as ev
from engine.codec import encode_event
from engine.errors import FeedError, UsageError
from tests import gen

UTC = timezone.utc
T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
RECV = re.compile(rb'^\{"recvTs":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)"')


def quote(i: int, symbol: str = "EURUSD") -> ev.Quote:
    bid = 1.1 + i * 1e-5
    return ev.Quote(symbol, bid, bid + 2e-5, T0 + timedelta(milliseconds=i))


def quote_msg(i: int) -> bytes:
    return encode_event(quote(i))


class FakeTime:
    """Stands in for the ``time`` module inside ``adapters.recorder``."""

    def __init__(self) -> None:
        self.mono = 0.0
        self.wall_ns = int(T0.timestamp() * 1e9)

    def monotonic(self) -> float:
        return self.mono

    def time_ns(self) -> int:
        return self.wall_ns


@pytest.fixture
def fake_time(monkeypatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(recorder_module, "time", SimpleNamespace(
        monotonic=fake.monotonic, time_ns=fake.time_ns))
    return fake


def lines_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.splitlines(keepends=True)


# ------------------------------------------------------------- the lines


def test_a_line_is_the_message_as_received_with_recv_ts_first(tmp_path):
    raw = b'{"type":"quoteEvent","payload":{"symbol":"EURUSD","bid":1.10000,"ask":1.1e0,"ts":"2026-06-01T12:00:00Z"}}'
    path = tmp_path / "f.jsonl"
    with Recorder(path) as rec:
        rec.write(raw, T0 + timedelta(microseconds=7))
        rec.write(raw.decode(), T0.replace(microsecond=123456))
    assert lines_of(path) == [
        b'{"recvTs":"2026-06-01T12:00:00.000007Z",' + raw[1:] + b"\n",
        b'{"recvTs":"2026-06-01T12:00:00.123456Z",' + raw[1:] + b"\n",
    ]
    assert rec.lines == 2 and rec.bytes == path.stat().st_size and rec.skipped == 0


def test_recv_ts_defaults_to_the_wall_clock_or_the_clock_given(tmp_path, fake_time):
    fake_time.wall_ns = int(T0.timestamp()) * 10**9 + 5_000_042_999  # 12:00:05.000042999
    path = tmp_path / "f.jsonl"
    with Recorder(path) as rec:
        rec.write(quote_msg(0))
        fake_time.wall_ns += 60 * 10**9  # a new second: the cached prefix must follow
        rec.write(quote_msg(1))
    with Recorder(path2 := tmp_path / "g.jsonl", clock=lambda: T0 + timedelta(hours=1)) as rec2:
        rec2.write(quote_msg(0))
    stamps = [RECV.match(line).group(1) for line in lines_of(path) + lines_of(path2)]
    assert stamps == [b"2026-06-01T12:00:05.000042Z", b"2026-06-01T12:01:05.000042Z",
                      b"2026-06-01T13:00:00.000000Z"]


def test_recv_ts_in_another_zone_is_written_in_utc_and_a_naive_one_is_refused(tmp_path):
    path = tmp_path / "f.jsonl"
    plus2 = timezone(timedelta(hours=2))
    with Recorder(path) as rec:
        rec.write(quote_msg(0), datetime(2026, 6, 1, 14, 0, 0, 999, tzinfo=plus2))
        with pytest.raises(UsageError, match="naive"):
            rec.write(quote_msg(0), datetime(2026, 6, 1))
    assert [RECV.match(line).group(1) for line in lines_of(path)] == [b"2026-06-01T12:00:00.000999Z"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("{}", {}),
        ("{ \t}", {}),
        ('  \n{"type":"subscribed","payload":{}}', {"type": "subscribed", "payload": {}}),
        ('{"type":"x","payload":{}}\n', {"type": "x", "payload": {}}),
        ('{\n  "type": "x",\n  "payload": {"text": "a\\nb"}\n}\n',
         {"type": "x", "payload": {"text": "a\nb"}}),
        ('{ "type":"x"}', {"type": "x"}),
    ],
)
def test_odd_but_valid_json_objects_stay_one_valid_line(tmp_path, raw, expected):
    path = tmp_path / "f.jsonl"
    with Recorder(path) as rec:
        rec.write(raw, T0)
    (line,) = lines_of(path)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"recvTs": "2026-06-01T12:00:00.000000Z", **expected}


@pytest.mark.parametrize("raw", ["", "   ", "[1,2]", "null", '"text"', b"\xff\xfe", "\ud800{}", b"42"])
def test_what_is_not_a_json_object_is_counted_and_not_written(tmp_path, raw):
    path = tmp_path / "f.jsonl"
    with Recorder(path) as rec:
        rec.write(raw, T0)
        rec.write(quote_msg(0), T0)
    assert rec.skipped == 1 and rec.lines == 1
    assert len(lines_of(path)) == 1


def test_a_closed_recorder_refuses_writes_and_close_is_idempotent(tmp_path):
    rec = Recorder(tmp_path / "f.jsonl.gz")
    rec.write(quote_msg(0))
    rec.close()
    rec.close()
    with pytest.raises(UsageError, match="closed"):
        rec.write(quote_msg(1))
    rec.flush()  # a no-op, not an error
    assert rec.lines == 1 and "closed" in repr(rec)
    assert not rec._writer.is_alive()  # no thread left behind


def test_a_failing_disk_is_a_feed_error(tmp_path):
    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    rec = Recorder(tmp_path / "f.jsonl.gz")
    rec._writer.file.close()
    rec._writer.file = Full()
    rec.write(quote_msg(0))
    with pytest.raises(FeedError, match="No space left"):
        rec.flush()
    with pytest.raises(FeedError, match="No space left"):
        rec.close()
    assert rec.closed and not rec._writer.is_alive()


def test_a_file_that_cannot_be_created_is_a_feed_error(tmp_path):
    with pytest.raises(FeedError) as info:
        Recorder(tmp_path / "no" / "such" / "dir.jsonl")
    assert "dir.jsonl" in str(info.value)


# --------------------------------------------------- read back by the backtest


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(gen.events(), max_size=40), gz=st.booleans(), as_str=st.booleans())
def test_a_recording_replays_the_same_market_events(events, gz, as_str):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("f.jsonl.gz" if gz else "f.jsonl")
        with Recorder(path) as rec:
            for e in events:
                raw = encode_event(e)
                rec.write(raw.decode() if as_str else raw)
        reader = FeedReader(path)
        got = list(reader)
    market = [e for e in events if type(e) in (ev.Quote, ev.Depth)]
    assert got == market
    st_ = reader.stats
    assert st_.malformed == 0 and not st_.truncated
    assert st_.other_types == len(events) - len(market)
    assert rec.lines == len(events)


def test_a_big_gzip_recording_replays_every_quote_and_gunzip_reads_it(tmp_path):
    n = 10_000  # several internal batches
    path = tmp_path / "f.jsonl.gz"
    with Recorder(path) as rec:
        for i in range(n):
            rec.write(quote_msg(i))
            if i % 3000 == 0:
                rec.flush()
    assert list(FeedReader(path)) == [quote(i) for i in range(n)]
    assert len(gzip.decompress(path.read_bytes()).splitlines()) == n
    assert rec.bytes == len(gzip.decompress(path.read_bytes()))


# ------------------------------------------------------------ crash safety


def test_the_time_based_flush_makes_lines_readable_while_recording(tmp_path, fake_time):
    path = tmp_path / "f.jsonl.gz"
    rec = Recorder(path, flush_interval_s=1.0)
    rec.write(quote_msg(0))
    fake_time.mono = 0.5
    rec.write(quote_msg(1))
    rec.wait()
    assert list(FeedReader(path)) == []  # nothing handed to the writer yet
    fake_time.mono = 1.0
    rec.write(quote_msg(2))  # the interval has passed: this write flushes all three
    rec.wait()
    reader = FeedReader(path)
    assert list(reader) == [quote(0), quote(1), quote(2)]
    assert reader.stats.truncated  # the stream has no end yet: reported, not fatal
    rec.close()
    reader = FeedReader(path)
    assert len(list(reader)) == 3 and not reader.stats.truncated


async def test_run_flushes_a_quiet_feed(tmp_path, fake_time, autojump_clock):
    path = tmp_path / "f.jsonl"
    rec = Recorder(path, flush_interval_s=1.0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(rec.run)
            rec.write(quote_msg(0))
            await trio.sleep(0.5)
            rec.wait()
            assert path.stat().st_size == 0
            fake_time.mono = 1.0
            await trio.sleep(1.0)
            rec.wait()
            assert list(FeedReader(path)) == [quote(0)]
            nursery.cancel_scope.cancel()
    rec.close()


@pytest.fixture(scope="module")
def crashed_recording(tmp_path_factory):
    """The bytes of a gzip recording that was never closed, and the
    (file size, lines) after each of its flushes."""
    path = tmp_path_factory.mktemp("crash") / "f.jsonl.gz"
    rec = Recorder(path, flush_interval_s=3600)
    flushes = [(0, 0)]
    i = 0
    for batch in (5, 1, 2500, 7, 4100, 3):
        for _ in range(batch):
            rec.write(quote_msg(i))
            i += 1
        rec.flush()
        flushes.append((path.stat().st_size, rec.lines))
    for _ in range(20_000):  # written, partly handed to the compressor, never flushed
        rec.write(quote_msg(i))
        i += 1
    rec.wait()
    data = path.read_bytes()  # the process "dies" here: no close()
    assert len(data) > flushes[-1][0]  # a batch went out unflushed
    return data, flushes


@settings(max_examples=60, deadline=None)
@given(cut=st.data())
def test_a_gzip_file_cut_after_a_flush_replays_everything_up_to_it(crashed_recording, cut):
    data, flushes = crashed_recording
    k = cut.draw(st.integers(1, len(flushes) - 1), label="flush")
    size, flushed = flushes[k]
    end = cut.draw(st.integers(size, len(data)), label="cut at")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.jsonl.gz"
        path.write_bytes(data[:end])
        reader = FeedReader(path)
        got = list(reader)
    assert len(got) >= flushed
    assert got == [quote(i) for i in range(len(got))]  # a clean prefix, nothing invented
    assert reader.stats.truncated and reader.stats.malformed == 0
