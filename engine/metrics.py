"""Performance maths of a backtest: pure functions over numbers, no I/O.

Kept apart from ``engine.report`` so each figure can be checked by hand.
Every function answers for the degenerate cases a user will meet (no trades,
one equity sample, a flat curve): an amount that cannot move is ``0.0``, a
ratio that is undefined is ``None``. Nothing here returns NaN or infinity.

The Sharpe and Sortino ratios are computed on *simple returns of the equity
curve resampled onto a regular grid* (hourly by default: the equity at each
whole hour is the last sample at or before it, carried forward through hours
with no sample, and the first sample starts the grid), with a risk-free rate
of zero, and
annualized by ``sqrt(periods per year)`` where a year is 365 days of calendar
time (8,760 for hourly returns): recorded feeds run through weekends and
nights as they were recorded, so calendar time is what the grid measures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import attrs
import numpy as np

YEAR = timedelta(days=365)
HOUR = timedelta(hours=1)


def finite(x: float | None) -> float | None:
    """``x`` as a plain float, or None if it is None, NaN or infinite."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def periods_per_year(period: timedelta) -> float:
    """How many ``period`` fit in a 365-day year (8760.0 for an hour)."""
    if period <= timedelta(0):
        raise ValueError(f"period must be > 0, got {period}")
    return YEAR / period


def _epoch_seconds(ts: datetime) -> float:
    if ts.tzinfo is None:  # naive times are taken as UTC, as the wire's are
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.timestamp()


def resample_last(
    times: Sequence[datetime], values: Sequence[float], period: timedelta = HOUR
) -> np.ndarray:
    """Equity on a regular grid: the first value, then the value at each grid time.

    Grid times are the multiples of ``period`` since the epoch (whole hours
    for ``HOUR``) after the first sample, up to the first one at or after the
    last sample; the value at a grid time is the last sample at or before it
    (carried forward through empty periods). So a curve sampled every hour on
    the hour comes back as it was, and the returns of the grid compound to
    exactly ``last / first``.

    Args:
        times: sample times, in time order (ties keep their order).
        values: the equity at each time.
        period: the grid step.

    Returns:
        A float array: empty with no samples, ``[first]`` when all samples
        sit at one grid time.
    """
    if len(times) != len(values):
        raise ValueError(f"{len(times)} times but {len(values)} values")
    if not len(times):
        return np.empty(0)
    step = period.total_seconds()
    if step <= 0:
        raise ValueError(f"period must be > 0, got {period}")
    t = np.fromiter((_epoch_seconds(x) for x in times), float, len(times))
    v = np.asarray(values, dtype=float)
    if np.any(np.diff(t) < 0):
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
    first = math.floor(t[0] / step) + 1
    last = math.ceil(t[-1] / step)
    if last < first:
        return v[:1].copy()
    ends = np.arange(first, last + 1, dtype=float) * step
    idx = np.searchsorted(t, ends, side="right") - 1  # last sample at or before
    return np.concatenate((v[:1], v[idx]))


def simple_returns(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``v[i] / v[i-1] - 1``; a step from a non-positive value counts as 0."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return np.empty(0)
    prev, cur = v[:-1], v[1:]
    out = np.zeros(prev.shape)
    ok = prev > 0
    out[ok] = cur[ok] / prev[ok] - 1.0
    return out


def sharpe(returns: Sequence[float] | np.ndarray, periods: float = 1.0) -> float | None:
    """Annualized Sharpe ratio: ``mean / std(ddof=1) * sqrt(periods)``.

    None with fewer than two returns or when they do not vary.
    """
    r = np.asarray(returns, dtype=float)
    if r.size < 2:
        return None
    sd = float(np.std(r, ddof=1))
    if not sd > 1e-15:
        return None
    return finite(float(np.mean(r)) / sd * math.sqrt(periods))


def sortino(returns: Sequence[float] | np.ndarray, periods: float = 1.0) -> float | None:
    """Annualized Sortino ratio: ``mean / downside deviation * sqrt(periods)``.

    The downside deviation is ``sqrt(mean(min(r, 0)**2))`` over all returns
    (target 0). None with fewer than two returns or no losing period.
    """
    r = np.asarray(returns, dtype=float)
    if r.size < 2:
        return None
    dd = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    if not dd > 1e-15:
        return None
    return finite(float(np.mean(r)) / dd * math.sqrt(periods))


def drawdown_series(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``value - running peak`` at each sample (0 at a new high, else negative)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return np.empty(0)
    return v - np.maximum.accumulate(v)


@attrs.frozen
class Drawdown:
    """The deepest fall from a running peak.

    Attributes:
        amount: largest ``peak - value`` in account currency (>= 0).
        pct: largest ``(peak - value) / peak`` in percent (>= 0), over the
            points where the peak is positive; it may sit at another point
            than ``amount`` when equity grew in between.
        peak_index: index of the peak before the deepest ``amount`` fall.
        trough_index: index of that fall's trough.
    """

    amount: float = 0.0
    pct: float = 0.0
    peak_index: int | None = None
    trough_index: int | None = None


def max_drawdown(values: Sequence[float] | np.ndarray) -> Drawdown:
    """The maximum drawdown of an equity curve (all zeros when it never falls)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return Drawdown()
    peak = np.maximum.accumulate(v)
    fall = peak - v
    trough = int(np.argmax(fall))
    amount = float(fall[trough])
    if not amount > 0:
        return Drawdown()
    peak_at = int(np.argmax(v[: trough + 1]))
    pos = peak > 0
    pct = float(np.max(fall[pos] / peak[pos])) * 100.0 if np.any(pos) else 0.0
    return Drawdown(amount=amount, pct=pct, peak_index=peak_at, trough_index=trough)


@attrs.frozen
class TradeStats:
    """Win/loss figures over closed positions.

    Attributes:
        count: closed positions.
        wins / losses: positions with pnl > 0 / < 0 (break-even ones are
            neither, but count in ``win_rate``'s denominator).
        win_rate: ``wins / count`` (0..1), None with no positions.
        gross_profit / gross_loss: sum of wins / of ``-losses`` (both >= 0).
        profit_factor: ``gross_profit / gross_loss``, None when no loss.
        avg_win / avg_loss: mean of wins / of losses (loss is negative),
            None when there are none.
        expectancy: mean pnl per position, None with no positions.
    """

    count: int = 0
    wins: int = 0
    losses: int = 0
    win_rate: float | None = None
    gross_profit: float = 0.0
    gross_loss: float = 0.0
    profit_factor: float | None = None
    avg_win: float | None = None
    avg_loss: float | None = None
    expectancy: float | None = None


def trade_stats(pnls: Sequence[float]) -> TradeStats:
    """Win rate, profit factor and averages of closed positions' pnl."""
    p = np.asarray(pnls, dtype=float)
    if p.size == 0:
        return TradeStats()
    won, lost = p[p > 0], p[p < 0]
    gross_profit = float(won.sum())
    gross_loss = float(-lost.sum())
    return TradeStats(
        count=int(p.size),
        wins=int(won.size),
        losses=int(lost.size),
        win_rate=won.size / p.size,
        gross_profit=gross_profit,
        gross_loss=gross_loss,
        profit_factor=finite(gross_profit / gross_loss) if gross_loss > 0 else None,
        avg_win=float(won.mean()) if won.size else None,
        avg_loss=float(lost.mean()) if lost.size else None,
        expectancy=float(p.mean()),
    )
