"""Record a live feed to a file the backtest can replay (PROTOCOL section 8).

Every server message is written as received, one per line, with a top-level
``"recvTs"`` (the local receive time, ISO-8601 UTC with 6 fractional digits)
spliced in right after the opening ``{``: the rest of the text is copied,
never re-encoded, so the file holds what the strategy saw, byte for byte.

Recording runs beside live trading, so ``write`` does as little as it can
(about 1 us): a cached ``YYYY-MM-DDTHH:MM:SS`` prefix (rebuilt once a second),
a byte format and a list append. The lines are joined in batches and handed
to a writer thread that compresses them (for a ``.gz`` name) and writes them:
zlib and file writes release the GIL, so deflating (about 2 us a line) never
stalls the event loop. At least every ``flush_interval_s`` (checked on
``write``, and by ``run`` when the feed is quiet) a batch ends with a flush to
the OS, gzip with ``Z_SYNC_FLUSH``, so a crash of the process loses at most
the last interval: ``adapters.replay.FeedReader`` reads such a file up to the
last flush and reports the missing end as truncation.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import zlib
from collections.abc import Callable
from datetime import datetime, timezone
from types import TracebackType
from typing import Self

import trio

from engine.errors import FeedError, UsageError

__all__ = ["Recorder"]

_UTC = timezone.utc
_BATCH = 512
"""Lines buffered before they are handed to the writer thread at once."""
_QUEUE = 128
"""Batches the writer thread may fall behind before ``write`` waits for it."""
_WS = b" \t\r\n"
_HEAD = b'{"recvTs":"'


class Recorder:
    """Append server messages with their receive time to a JSON Lines file.

    Args:
        path: the file to create (truncated if it exists); gzip when the name
            ends in ``.gz``.
        flush_interval_s: the longest time written lines may sit in memory or
            in the compressor before they reach the OS.
        clock: where ``recvTs`` comes from when ``write`` is not given one
            (None: the wall clock, read through ``time.time_ns``).

    Raises:
        FeedError: the file cannot be created (or, later, written).

    ``lines`` and ``bytes`` count what was recorded (text, before
    compression); ``skipped`` counts messages that were not JSON object text
    and so were not recorded. Call it from one thread (the event loop's); a
    writer thread of its own does the compressing and writing, and ``close``
    (or the ``with`` block) stops it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval_s: float = 1.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not flush_interval_s >= 0:
            raise ValueError(f"flush_interval_s must be >= 0, got {flush_interval_s}")
        self.path = os.fspath(path)
        self.flush_interval_s = flush_interval_s
        self.clock = clock
        self.gzip = self.path.endswith(".gz")
        self.skipped = 0
        self.closed = False
        try:
            file = open(self.path, "wb")  # noqa: SIM115 (the writer thread closes it)
        except OSError as exc:
            raise FeedError(f"cannot create feed file: {exc.strerror}", path=self.path) from None
        # wbits 31: one gzip member (header + trailer) that FeedReader and gunzip read
        z = zlib.compressobj(6, zlib.DEFLATED, 31) if self.gzip else None
        self._writer = _Writer(file, z, self.path)
        self._writer.start()
        self._unsynced = False  # batches handed over since the last sync point
        self._buf: list[bytes] = []
        self._append = self._buf.append
        self._lines = 0  # handed to the writer thread
        self._bytes = 0
        self._last_flush = time.monotonic()
        self._sec = -1  # the whole second the cached prefix is for
        self._prefix = b""
        self._dt_key: tuple | None = None
        self._dt_prefix = b""

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Recorder({self.path!r}, {state}, lines={self.lines}, skipped={self.skipped})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def lines(self) -> int:
        """Messages recorded so far."""
        return self._lines + len(self._buf)

    @property
    def bytes(self) -> int:
        """Bytes of text recorded so far (before compression)."""
        return self._bytes + sum(map(len, self._buf))

    # -- the hot path -------------------------------------------------------

    def write(self, raw: bytes | str, recv_ts: datetime | None = None) -> None:
        """Record one message as received (``recv_ts``: None means now).

        A message that is not JSON object text (does not start with ``{``
        after leading whitespace) is counted in ``skipped`` and not written.

        Raises:
            UsageError: the recorder is closed, or ``recv_ts`` is naive.
            FeedError: the file could not be written.
        """
        if type(raw) is str:
            try:
                raw = raw.encode()
            except UnicodeError:  # lone surrogates: not text a server sent
                self.skipped += 1
                return
        if raw[:1] != b"{":
            raw = raw.lstrip(_WS)
            if raw[:1] != b"{":
                self.skipped += 1
                return
        if raw[-1:] != b"}":  # e.g. a trailing newline
            raw = raw.rstrip(_WS)
        if raw[1:2] != b'"' and raw[1:].lstrip(_WS)[:1] == b"}":
            rest = b'"' + raw[1:]  # an empty object: no comma
        else:
            rest = b'",' + raw[1:]
        if recv_ts is None and self.clock is None:
            sec, us = divmod(time.time_ns() // 1000, 1_000_000)
            if sec != self._sec:
                self._sec = sec
                self._prefix = _HEAD + _second(datetime.fromtimestamp(sec, _UTC))
            self._append(b"%b.%06dZ%b\n" % (self._prefix, us, rest))
        else:
            self._append(self._dt_head(self.clock() if recv_ts is None else recv_ts) + rest + b"\n")
        if len(self._buf) >= _BATCH:
            self._drain(sync=False)
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self._sync()

    def _dt_head(self, ts: datetime) -> bytes:
        if ts.tzinfo is not _UTC:
            if ts.tzinfo is None:
                raise UsageError(f"recvTs must be an aware datetime, got naive {ts!r}")
            ts = ts.astimezone(_UTC)
        key = (ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second)
        if key != self._dt_key:
            self._dt_key = key
            self._dt_prefix = _HEAD + _second(ts)
        return b"%b.%06dZ" % (self._dt_prefix, ts.microsecond)

    # -- flushing -----------------------------------------------------------

    def maybe_flush(self) -> None:
        """Start a flush if ``flush_interval_s`` has passed since the last one
        (does not wait for the writer: safe to call from the event loop)."""
        if not self.closed and time.monotonic() - self._last_flush >= self.flush_interval_s:
            self._sync()

    def flush(self) -> None:
        """Put everything written so far in the file (gzip: a sync flush point)
        and wait until the OS has it."""
        if self.closed:
            return
        self._sync()
        self.wait()

    def wait(self) -> None:
        """Block until the writer thread has written all it was handed."""
        self._writer.queue.join()
        self._check()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Flush on time even when no message arrives (a trio task; runs until
        cancelled). Without it a quiet feed flushes only on the next ``write``."""
        task_status.started()
        period = max(self.flush_interval_s, 0.01)
        while not self.closed:
            await trio.sleep(period)
            self.maybe_flush()

    def close(self) -> None:
        """Write what is left, end the gzip stream and close the file
        (idempotent; waits for the writer thread)."""
        if self.closed:
            return
        self.closed = True
        self._append = _refuse
        try:
            self._drain(sync=False)
        finally:
            self._writer.queue.put(_STOP)
            self._writer.join()
        self._check()

    def _sync(self) -> None:
        self._drain(sync=True)
        self._last_flush = time.monotonic()

    def _drain(self, *, sync: bool) -> None:
        """Hand the buffered lines to the writer thread as one batch."""
        self._check()
        buf = self._buf
        if not buf and not (sync and self._unsynced):
            return
        data = b"".join(buf)
        if data.count(b"\n") != len(buf):
            # A raw newline can only be whitespace between JSON tokens (a
            # string holds it escaped): make it a space so a line stays a line.
            # Looked for here, over the batch in C, to keep ``write`` cheap.
            data = b"".join(line[:-1].replace(b"\n", b" ") + b"\n" for line in buf)
        self._lines += len(buf)
        self._bytes += len(data)
        buf.clear()
        self._unsynced = not sync
        self._writer.queue.put((data, sync))  # blocks only if the disk falls far behind

    def _check(self) -> None:
        exc = self._writer.error
        if exc is not None:
            raise FeedError(f"cannot write feed: {exc.strerror or exc}", path=self.path)


_STOP = None


class _Writer(threading.Thread):
    """Compresses and writes batches away from the caller's thread.

    zlib and file writes release the GIL, so the event loop that calls
    ``Recorder.write`` keeps running while a batch is deflated: no stall of a
    few milliseconds every couple of thousand messages. The first OSError is
    kept in ``error`` (later batches are dropped) for the Recorder to raise.
    """

    def __init__(self, file, z, path: str) -> None:
        super().__init__(name=f"triotrade-recorder {os.path.basename(path)}", daemon=True)
        self.file = file
        self.z = z
        self.queue: queue.Queue = queue.Queue(maxsize=_QUEUE)
        self.error: OSError | None = None

    def run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is _STOP:
                    self._finish()
                    return
                if self.error is None:
                    self._write(*item)
            except OSError as exc:
                self.error = exc
            finally:
                self.queue.task_done()

    def _write(self, data: bytes, sync: bool) -> None:
        z = self.z
        if z is not None:
            data = z.compress(data)
            if sync:
                data += z.flush(zlib.Z_SYNC_FLUSH)
        if data:
            self.file.write(data)
        if sync:
            self.file.flush()

    def _finish(self) -> None:
        try:
            if self.error is None and self.z is not None:
                self.file.write(self.z.flush(zlib.Z_FINISH))
        finally:
            self.file.close()


def _refuse(line: bytes) -> None:
    raise UsageError("write to a closed Recorder")


def _second(ts: datetime) -> bytes:
    """``YYYY-MM-DDTHH:MM:SS`` of a UTC time (built once a second)."""
    return ts.strftime("%Y-%m-%dT%H:%M:%S").encode()
