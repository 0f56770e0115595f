"""Seeded synthetic FX feeds (``triotrade make-feed``).

Writes a recorded feed (PROTOCOL section 8) that looks like the real ones in
``tests/data``: several pairs interleaved by time, each mid a random walk in
log space with fat tails (Student t, 4 degrees of freedom), a spread that
wanders around the pair's typical value and widens when the market is quiet,
prices on the pair's tick (5 decimals, 3 for JPY pairs), and tick times from a
Poisson process whose rate follows the intraday session cycle and stops over
the weekend (Friday 21:00 to Sunday 21:00 UTC). Optional ``depthEvent``
snapshots follow some quotes, their top level equal to that quote.

Everything is drawn from ``numpy.random.default_rng(seed)`` a block at a time
and encoded by msgspec, so the same seed gives the same bytes (gzip with
mtime 0 and no file name in the header), memory stays bounded, and a million
quotes take a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import attrs
import msgspec
import numpy as np

__all__ = ["PAIRS", "PairSpec", "generate_feed", "main", "pair_spec"]

UTC = timezone.utc
BLOCK = 50_000
"""Quotes generated and written per block (bounds memory)."""
BASE_RATE = 1.5
"""Ticks per second of a pair of weight 1 at activity 1 (EURUSD in London)."""
DEPTH_PROB = 0.2
"""Chance that a quote is followed by a depth snapshot (when depth > 0)."""
_GZIP_LEVEL = 6

# Relative tick activity by UTC hour: quiet late Asia, London open, the
# London/New York overlap busiest, the 21:00 rollover quietest.
ACTIVITY = np.array([
    0.35, 0.40, 0.45, 0.40, 0.35, 0.35, 0.50, 0.90, 1.00, 0.95, 0.85, 0.85,
    1.10, 1.30, 1.40, 1.20, 0.90, 0.60, 0.45, 0.40, 0.30, 0.15, 0.25, 0.30,
])
_TRADING_SECONDS_PER_YEAR = 260 * 86_400


@attrs.frozen
class PairSpec:
    """How a pair behaves: start mid, annual volatility, typical spread in
    pips, price decimals and relative tick frequency."""

    mid: float
    vol: float
    spread_pips: float
    precision: int
    weight: float

    @property
    def pip(self) -> float:
        return 10.0 ** -(self.precision - 1)


PAIRS: dict[str, PairSpec] = {
    "EURUSD": PairSpec(1.0950, 0.070, 0.8, 5, 1.0),
    "GBPUSD": PairSpec(1.2700, 0.080, 1.2, 5, 0.8),
    "USDJPY": PairSpec(141.50, 0.090, 1.0, 3, 0.9),
    "NZDUSD": PairSpec(0.6150, 0.100, 1.6, 5, 0.5),
    "AUDUSD": PairSpec(0.6800, 0.090, 1.2, 5, 0.6),
    "USDCHF": PairSpec(0.8450, 0.075, 1.4, 5, 0.5),
    "EURGBP": PairSpec(0.8620, 0.050, 1.2, 5, 0.4),
}


def pair_spec(symbol: str) -> PairSpec:
    """The known pair's parameters, or generic ones (JPY pairs: 3 decimals)."""
    if symbol in PAIRS:
        return PAIRS[symbol]
    if "JPY" in symbol:
        return PairSpec(100.0, 0.10, 2.0, 3, 0.3)
    return PairSpec(1.0, 0.10, 2.0, 5, 0.3)


# -- wire shapes (field order is the order on the line) -----------------------


class _QuotePayload(msgspec.Struct, gc=False):
    symbol: str
    bid: float
    ask: float
    ts: str


class _DepthPayload(msgspec.Struct, gc=False):
    symbol: str
    bids: list
    asks: list
    ts: str


_LINE = dict(tag_field="type", gc=False, rename={"recv_ts": "recvTs"})


class _QuoteLine(msgspec.Struct, tag="quoteEvent", **_LINE):
    payload: _QuotePayload
    recv_ts: str


class _DepthLine(msgspec.Struct, tag="depthEvent", **_LINE):
    payload: _DepthPayload
    recv_ts: str


# -- tick times -----------------------------------------------------------------


class _Clock:
    """Tick times of a Poisson process with a piecewise-constant hourly rate.

    Arrivals are unit exponentials in "expected ticks" ``S``; the time of a
    tick is where the integrated rate reaches its ``S`` (a time change), so
    quiet hours stretch the gaps and weekends (rate 0) are skipped.
    """

    def __init__(self, start_s: float, rate: float) -> None:
        self.start_s = start_s
        self.rate = rate
        self.t0 = np.empty(0)  # segment start, seconds since start
        self.lam = np.empty(0)  # expected ticks before the segment
        self.r = np.empty(0)  # ticks/s in the segment
        self.act = np.empty(0)  # activity of the segment
        self._next_hour = math.floor(start_s / 3600)
        self._lam_end = 0.0  # expected ticks before the end of the table

    def _extend(self, hours: int = 24 * 7) -> None:
        h = np.arange(self._next_hour, self._next_hour + hours, dtype=np.int64)
        self._next_hour += hours
        starts = np.maximum(h * 3600.0, self.start_s) - self.start_s
        ends = (h + 1) * 3600.0 - self.start_s
        hour = h % 24
        weekday = (h // 24 + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
        weekend = (weekday == 5) | ((weekday == 4) & (hour >= 21)) | ((weekday == 6) & (hour < 21))
        act = np.where(weekend, 0.0, ACTIVITY[hour])
        r = act * self.rate
        w = r * (ends - starts)
        cum = self._lam_end + np.cumsum(w)
        self._lam_end = float(cum[-1])
        self.t0 = np.concatenate((self.t0, starts))
        self.lam = np.concatenate((self.lam, cum - w))
        self.r = np.concatenate((self.r, r))
        self.act = np.concatenate((self.act, act))

    def times(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Seconds since start and activity for nondecreasing ``s``."""
        while self._lam_end <= s[-1]:
            self._extend()
        i = np.searchsorted(self.lam, s, side="right") - 1
        return self.t0[i] + (s - self.lam[i]) / self.r[i], self.act[i]


# -- the generator ----------------------------------------------------------------


def generate_feed(
    path: str | os.PathLike[str],
    *,
    symbols: Sequence[str],
    quotes: int,
    seed: int = 0,
    depth: int = 0,
    start: datetime = datetime(2024, 1, 2, tzinfo=UTC),
) -> dict[str, Any]:
    """Write a deterministic synthetic feed of ``quotes`` quoteEvents.

    Args:
        path: output file; gzip-compressed when it ends in ``.gz``.
        symbols: pairs to interleave (unknown ones get generic parameters).
        quotes: number of quoteEvent lines.
        seed: the same seed (and arguments) gives a byte-identical file.
        depth: levels per depthEvent snapshot (0: no depth events).
        start: time of the process start (naive means UTC); the first tick
            comes a little after it, or at the Sunday open on a weekend.

    Returns:
        A JSON-able summary: counts per symbol, depth events, span, bytes.

    Raises:
        ValueError: no symbols, a repeated symbol, quotes < 0, depth outside 0..50.
    """
    symbols = list(symbols)
    if not symbols or any(not s for s in symbols):
        raise ValueError("symbols must be a non-empty list of names")
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"repeated symbol in {symbols}")
    if quotes < 0:
        raise ValueError(f"quotes must be >= 0, got {quotes}")
    if not 0 <= depth <= 50:
        raise ValueError(f"depth must be in 0..50, got {depth}")
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)

    specs = [pair_spec(s) for s in symbols]
    weights = np.array([p.weight for p in specs])
    prob = weights / weights.sum()
    scale = np.array([10.0**p.precision for p in specs])
    mean_act = float(ACTIVITY.mean())
    sigma = np.array([
        p.vol / math.sqrt(p.weight * BASE_RATE * mean_act * _TRADING_SECONDS_PER_YEAR)
        for p in specs
    ])
    spread_ticks = np.array([p.spread_pips * p.pip for p in specs]) * scale
    log_mid = np.log([p.mid for p in specs])
    names = np.array(symbols, dtype=object)

    rng = np.random.default_rng(seed)
    start_s = start.timestamp()
    start_ms = round(start_s * 1000)
    clock = _Clock(start_s, BASE_RATE * float(weights.sum()))
    s_last = 0.0
    enc = msgspec.json.Encoder()
    counts = dict.fromkeys(symbols, 0)
    n_depth = 0
    first_ms = last_ms = None

    # Compression (zlib drops the GIL) runs on a thread while the next block
    # is drawn; one block in flight keeps memory bounded and the order fixed.
    pending: Future | None = None
    with _open(path) as out, ThreadPoolExecutor(1) as writer, _gc_paused():
        done = 0
        while done < quotes:
            n = min(BLOCK, quotes - done)
            done += n
            s = s_last + np.cumsum(rng.standard_exponential(n))
            s_last = float(s[-1])
            t, act = clock.times(s)
            ms = start_ms + np.floor(t * 1000.0).astype(np.int64)
            sym = rng.choice(len(symbols), size=n, p=prob)

            mid = np.empty(n)
            for k in range(len(symbols)):
                idx = np.flatnonzero(sym == k)
                if not idx.size:
                    continue
                steps = rng.standard_t(4, size=idx.size) * (sigma[k] / math.sqrt(2.0))
                path_k = log_mid[k] + np.cumsum(steps)
                log_mid[k] = path_k[-1]
                mid[idx] = np.exp(path_k)
                counts[symbols[k]] += int(idx.size)

            widen = np.clip(1.0 / np.sqrt(act), 1.0, 3.0)
            spread = spread_ticks[sym] * widen * np.exp(0.25 * rng.standard_normal(n))
            spread = np.maximum(1, np.rint(spread)).astype(np.int64)
            bid_i = np.floor(mid * scale[sym] - spread / 2.0 + 0.5).astype(np.int64)
            ask_i = bid_i + spread
            sc = scale[sym]

            ts = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms", timezone="UTC").tolist()
            recv = np.datetime_as_string((ms + 1).astype("datetime64[ms]"), unit="ms", timezone="UTC").tolist()
            name = names[sym].tolist()
            lines = [
                _QuoteLine(_QuotePayload(a, b, c, d), e)
                for a, b, c, d, e in zip(name, (bid_i / sc).tolist(), (ask_i / sc).tolist(), ts, recv)
            ]
            if depth:
                flags = rng.random(n) < DEPTH_PROB
                lines = _add_depth(lines, flags, rng, bid_i, ask_i, sc, depth, name, ts, recv)
                n_depth += int(flags.sum())
            data = enc.encode_lines(lines)
            del lines
            if pending is not None:
                pending.result()
            pending = writer.submit(out.write, data)
            if first_ms is None:
                first_ms = int(ms[0])
            last_ms = int(ms[-1])
        if pending is not None:
            pending.result()
    return {
        "path": os.fspath(path),
        "seed": seed,
        "quotes": quotes,
        "depths": n_depth,
        "lines": quotes + n_depth,
        "symbols": counts,
        "first_ts": _ms_text(first_ms),
        "last_ts": _ms_text(last_ms),
        "bytes": os.path.getsize(path),
    }


def _add_depth(lines, flags, rng, bid_i, ask_i, sc, depth, name, ts, recv) -> list:
    """``lines`` with a depth snapshot after each flagged quote, on its top."""
    idx = np.flatnonzero(flags)
    m = idx.size
    if not m:
        return lines
    # Levels 1-3 ticks apart; sizes 0.5-1.5M at the top, growing by as much per level.
    s = sc[idx][:, None]
    bid_px = ((bid_i[idx][:, None] - _steps(rng, m, depth)) / s).tolist()
    ask_px = ((ask_i[idx][:, None] + _steps(rng, m, depth)) / s).tolist()
    bid_sz = (np.cumsum(rng.integers(5, 16, (m, depth)), axis=1) * 100_000).tolist()
    ask_sz = (np.cumsum(rng.integers(5, 16, (m, depth)), axis=1) * 100_000).tolist()
    pick = idx.tolist()
    snaps = [
        _DepthLine(_DepthPayload(name[i], list(zip(bp, bs)), list(zip(ap, az)), ts[i]), recv[i])
        for i, bp, bs, ap, az in zip(pick, bid_px, bid_sz, ask_px, ask_sz)
    ]
    # Quote i moves down by the snapshots before it; snapshot j sits right after its quote.
    out = np.empty(len(lines) + m, dtype=object)
    out[np.arange(len(lines)) + np.cumsum(flags) - flags] = lines
    out[idx + np.arange(m) + 1] = snaps
    return out.tolist()


def _steps(rng: np.random.Generator, m: int, depth: int) -> np.ndarray:
    """Tick offsets of ``depth`` levels from the top: 0, then 1-3 ticks apart."""
    gaps = rng.integers(1, 4, (m, depth))
    gaps[:, 0] = 0
    return np.cumsum(gaps, axis=1)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cycle collector would rescan the block's millions of fresh (acyclic)
    objects again and again; pause it while a feed is written."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _open(path: str | os.PathLike[str]):
    raw = open(path, "wb")  # noqa: SIM115 - closed by the caller's with
    if os.fspath(path).endswith(".gz"):
        # No file name and mtime 0 in the header: same bytes wherever it is written.
        return _GzipOwner(gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                        compresslevel=_GZIP_LEVEL, mtime=0), raw)
    return raw


class _GzipOwner:
    """A GzipFile that also closes the file under it."""

    def __init__(self, gz: gzip.GzipFile, raw) -> None:
        self.gz, self.raw = gz, raw
        self.write = gz.write

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.gz.close()
        finally:
            self.raw.close()


def _ms_text(ms: int | None) -> str | None:
    if ms is None:
        return None
    return str(np.datetime_as_string(np.datetime64(ms, "ms"), unit="ms", timezone="UTC"))


def _parse_start(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    """``triotrade make-feed``: write a synthetic feed and print its summary."""
    ap = argparse.ArgumentParser(prog="triotrade make-feed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output .jsonl or .jsonl.gz")
    ap.add_argument("--symbols", default="EURUSD,GBPUSD,USDJPY", help="comma-separated pairs")
    ap.add_argument("--quotes", type=int, default=100_000, help="number of quoteEvents")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--depth", type=int, default=0, help="levels per depthEvent (0: none)")
    ap.add_argument("--start", type=_parse_start, default=datetime(2024, 1, 2, tzinfo=UTC),
                    help="ISO-8601 start time (UTC if no offset)")
    args = ap.parse_args(argv)
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    began = time.perf_counter()
    try:
        stats = generate_feed(args.out, symbols=symbols, quotes=args.quotes, seed=args.seed,
                              depth=args.depth, start=args.start)
    except ValueError as exc:
        ap.error(str(exc))
    stats["seconds"] = round(time.perf_counter() - began, 3)
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(stats)).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
