"""The simulator's market source, as schedules (PROTOCOL sections 7 and 8).

A schedule is an iterator of ``(at, event)``: ``at`` is when, in seconds of
wall time since the source started, the server should publish ``event`` (a
``Quote`` or ``Depth``). The server's market task sleeps until ``at`` and
feeds the event to the matching engine and the subscribers; this module only
computes, so it can be tested without a clock. ``at`` never decreases.

Two sources: a recorded feed replayed at a speed factor (several files merged
by ``ts``, shifted to start together, optionally looping), and a seeded
synthetic generator built on ``adapters.feedgen``'s pair parameters.
``synthesize_depth`` makes the depth snapshot of a quote for a feed without
recorded depth, from the same rule the matching engine walks.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from operator import attrgetter

import msgspec
import numpy as np

from adapters.feedgen import DEPTH_PROB, pair_spec
from adapters.replay import FeedReader
from adapters.sim.rules import SyntheticDepth, levels
from engine.enums import Side
from engine.events import Depth, Quote
from engine.instruments import Instrument

__all__ = ["Schedule", "replay_schedule", "synthesize_depth", "synthetic_schedule"]

Schedule = Iterator[tuple[float, Quote | Depth]]
"""``(seconds since the source started, event)``, ``at`` nondecreasing."""

_UTC = timezone.utc
_ts = attrgetter("ts")
_replace = msgspec.structs.replace
_DEFAULT_GAP = timedelta(seconds=1)
"""Gap between a loop's passes when the feed has a single instant."""
_MIN_GAP = timedelta(microseconds=1)
_YEAR_S = 260 * 86_400
"""Trading seconds in a year, to turn annual volatility into a per-tick one."""
_BLOCK = 4096
"""Synthetic events drawn per numpy call."""


# -- replay ----------------------------------------------------------------------------


def replay_schedule(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    speed: float | None,
    loop: bool,
    align: bool = True,
    strict: bool = False,
) -> Schedule:
    """Replay recorded feeds as a schedule.

    Args:
        paths: one feed or several; several are merged by ``ts`` (ties keep
            the order of ``paths``), as ``adapters.replay.merge`` does.
        speed: 1.0 real time, N for N times faster; None as fast as the
            consumer takes them (every ``at`` is 0.0).
        loop: at the end, start again with every ``ts`` moved forward by the
            feed's span plus one mean gap, so ``ts`` keeps increasing; False
            stops at the end.
        align: shift each feed's ``ts`` by (earliest feed start - its start),
            so feeds recorded on different days start together; False keeps
            the recorded times.
        strict: passed to ``FeedReader`` (a malformed line raises).

    ``at`` follows the venue clock (the largest ``ts`` so far), so a late
    line is published at once rather than pulling the schedule back. Events
    are replaced (``msgspec.structs.replace``) only when their ``ts`` moves.

    Raises:
        ValueError: no paths, or a speed that is not a finite number > 0.
        FeedError: a path that is not a file (at once), or in strict mode.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    readers = [FeedReader(p, strict=strict) for p in paths]
    if not readers:
        raise ValueError("replay_schedule needs at least one feed")
    if speed is not None and not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a finite number > 0 or None, got {speed!r}")
    return _replay(readers, speed, loop, align)


def _replay(readers: list[FeedReader], speed: float | None, loop: bool, align: bool) -> Schedule:
    rate = None if speed is None else 1.0 / speed
    offsets: list[timedelta] | None = None  # per feed, found on the first pass
    shift = timedelta(0)  # added to every ts of the current pass
    step: timedelta | None = None  # shift from one pass to the next
    t0 = clock = None  # the first event's ts, the venue clock (largest ts)
    while True:
        iters = [iter(r) for r in readers]
        if offsets is None:
            offsets, iters = _align(iters, align)
        n = 0
        for ev in _merge(iters, offsets, shift):
            ts = ev.ts
            if clock is None:
                t0 = clock = ts
            elif ts > clock:
                clock = ts
            n += 1
            yield (0.0 if rate is None else (clock - t0).total_seconds() * rate), ev
        if not loop or n == 0:
            return
        if step is None:  # the first pass's span plus its mean gap
            span = clock - t0
            gap = span / (n - 1) if n > 1 and span else _DEFAULT_GAP
            step = span + max(gap, _MIN_GAP)
        shift += step


def _align(iters: list[Iterator], align: bool) -> tuple[list[timedelta], list[Iterator]]:
    """Per-feed ts offsets that make every feed start at the earliest start."""
    heads = [next(it, None) for it in iters]
    starts = [h.ts for h in heads if h is not None]
    if not align or not starts:
        offsets = [timedelta(0)] * len(iters)
    else:
        origin = min(starts)
        offsets = [origin - h.ts if h is not None else timedelta(0) for h in heads]
    rebuilt = [_prepend(h, it) for h, it in zip(heads, iters)]
    return offsets, rebuilt


def _prepend(head, it: Iterator) -> Iterator:
    if head is None:
        return
    yield head
    yield from it


def _merge(iters: list[Iterator], offsets: list[timedelta], shift: timedelta) -> Iterator:
    shifted = [_shifted(it, off + shift) for it, off in zip(iters, offsets)]
    if len(shifted) == 1:
        return shifted[0]
    return heapq.merge(*shifted, key=_ts)


def _shifted(events: Iterator, by: timedelta) -> Iterator:
    if not by:
        return events
    return (_replace(e, ts=e.ts + by) for e in events)


# -- synthetic -------------------------------------------------------------------------


def synthetic_schedule(
    symbols: Sequence[str],
    *,
    seed: int,
    rate_per_s: float,
    start: datetime,
    depth: int = 0,
) -> Schedule:
    """An endless, seeded stream of realistic quotes.

    Each symbol follows ``adapters.feedgen``'s model with that pair's
    parameters (``pair_spec``): the mid a log random walk with Student-t(4)
    steps scaled to the pair's annual volatility at its tick rate, a spread
    wandering around the pair's typical one, prices on the pair's tick.
    Unlike a recorded day there is no session cycle: quotes arrive as one
    Poisson process of ``rate_per_s`` in total, shared by the symbols in
    proportion to the pairs' weights. A quote's ``ts`` is ``start + at``.

    Args:
        symbols: the pairs (unknown ones get generic parameters).
        seed: the same seed and arguments give the same events.
        rate_per_s: quotes per second over all symbols.
        start: the venue time of ``at`` = 0 (naive means UTC).
        depth: levels per side of a depth snapshot that follows about one
            quote in five (``feedgen.DEPTH_PROB``), at the same ``at``/``ts``,
            its top equal to the quote; 0: quotes only. Snapshots are extra:
            ``rate_per_s`` counts quotes.

    Raises:
        ValueError: no symbols or a repeated one, a rate that is not finite
            and > 0, depth outside 0..50.
    """
    symbols = list(symbols)
    if not symbols or any(not isinstance(s, str) or not s for s in symbols):
        raise ValueError("symbols must be a non-empty list of names")
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"repeated symbol in {symbols}")
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"rate_per_s must be a finite number > 0, got {rate_per_s!r}")
    if not 0 <= depth <= 50:
        raise ValueError(f"depth must be in 0..50, got {depth}")
    if start.tzinfo is None:
        start = start.replace(tzinfo=_UTC)
    return _synthetic(symbols, seed, float(rate_per_s), start, depth)


def _synthetic(symbols: list[str], seed: int, rate: float, start: datetime, depth: int) -> Schedule:
    specs = [pair_spec(s) for s in symbols]
    weights = np.array([p.weight for p in specs])
    prob = weights / weights.sum()
    scale = np.array([10.0 ** p.precision for p in specs])
    # Per-tick log step so that a pair ticking rate*prob times a second has its annual vol
    # (t(4) has variance 2, hence the sqrt(2)).
    sigma = np.array([p.vol for p in specs]) / np.sqrt(prob * rate * _YEAR_S * 2.0)
    spread_ticks = np.array([p.spread_pips * p.pip for p in specs]) * scale
    log_mid = np.log([p.mid for p in specs])
    rng = np.random.default_rng(seed)
    k = len(symbols)
    s_last = 0.0
    while True:
        n = _BLOCK
        at = (s_last + np.cumsum(rng.standard_exponential(n))) / rate
        s_last = float(at[-1]) * rate
        sym = rng.choice(k, size=n, p=prob)
        mid = np.empty(n)
        for j in range(k):
            idx = np.flatnonzero(sym == j)
            if idx.size:
                path = log_mid[j] + np.cumsum(rng.standard_t(4, size=idx.size) * sigma[j])
                log_mid[j] = path[-1]
                mid[idx] = np.exp(path)
        spread = np.maximum(1, np.rint(spread_ticks[sym] * np.exp(0.25 * rng.standard_normal(n))))
        sc = scale[sym]
        bid_i = np.maximum(1.0, np.floor(mid * sc - spread / 2.0 + 0.5))
        bids = (bid_i / sc).tolist()
        asks = ((bid_i + spread) / sc).tolist()
        ats = at.tolist()
        names = [symbols[j] for j in sym.tolist()]
        if depth:
            snap = (rng.random(n) < DEPTH_PROB).tolist()
            books = _books(rng, n, depth, bid_i, bid_i + spread, sc)
        for i in range(n):
            t = ats[i]
            ts = start + timedelta(seconds=t)
            q = Quote(names[i], bids[i], asks[i], ts)
            yield t, q
            if depth and snap[i]:
                bp, bs, ap, az = (b[i] for b in books)
                yield t, Depth(names[i], tuple(zip(bp, bs)), tuple(zip(ap, az)), ts)


def _books(rng: np.random.Generator, n: int, depth: int, bid_i, ask_i, sc):
    """Levels for every quote of a block (as feedgen draws them): 1-3 ticks
    apart, 0.5-1.5M units at the top, growing by as much per level."""
    s = sc[:, None]
    bid_px = ((bid_i[:, None] - _steps(rng, n, depth)) / s).tolist()
    ask_px = ((ask_i[:, None] + _steps(rng, n, depth)) / s).tolist()
    bid_sz = (np.cumsum(rng.integers(5, 16, (n, depth)), axis=1) * 100_000.0).tolist()
    ask_sz = (np.cumsum(rng.integers(5, 16, (n, depth)), axis=1) * 100_000.0).tolist()
    return bid_px, bid_sz, ask_px, ask_sz


def _steps(rng: np.random.Generator, n: int, depth: int) -> np.ndarray:
    gaps = rng.integers(1, 4, (n, depth))
    gaps[:, 0] = 0
    return np.cumsum(gaps, axis=1)


# -- depth from a quote ------------------------------------------------------------------


def synthesize_depth(
    quote: Quote, synthetic: SyntheticDepth, inst: Instrument, *, levels: int | None = None
) -> Depth:
    """The depth snapshot the venue's matching engine walks for ``quote``.

    Built by ``adapters.sim.rules.levels`` (the rule of ``MatchingEngine``
    for a symbol without recorded depth), so a client's depthEvent shows
    exactly the liquidity its market order will take: ``synthetic.levels``
    per side, ``synthetic.spacing_ticks`` ticks apart, ``synthetic.size``
    each (the top takes the quote's bidSize/askSize when given).

    Args:
        levels: at most this many levels per side (a depthSubscribe's
            ``depth``); None: all the venue has.
    """
    asks = _levels(Side.BUY, quote, synthetic, inst)
    bids = _levels(Side.SELL, quote, synthetic, inst)
    if levels is not None:
        asks, bids = asks[:levels], bids[:levels]
    return Depth(quote.symbol, bids, asks, quote.ts)


def _levels(side: Side, quote: Quote, synthetic: SyntheticDepth, inst: Instrument):
    """The side's levels as wire pairs; levels that would fall to a price <= 0
    (a low price, wide spacing) are left out."""
    return tuple((float(p), float(s)) for p, s in levels(side, quote, None, synthetic, inst) if p > 0)
