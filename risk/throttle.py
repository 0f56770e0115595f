"""A token bucket in exact integer arithmetic, for order and amend rates.

The bucket holds up to ``burst`` tokens and refills at ``rate`` a second; a
request takes one token or is refused (denied, not queued). Time is integer
microseconds given by the caller, never read from a clock.

Floats would drift: after many refills a bucket could hold 0.9999999 or
1.0000001 tokens and let one request too many through. So ``rate`` is read
as the exact decimal it was written as (``0.1`` is 1/10) and the level is
an integer count of ``1 / (denominator * 1e6)`` token: a microsecond adds
``numerator`` units, a token costs ``denominator * 1e6``. The promise then
holds exactly: in any window of ``t`` seconds at most ``burst + rate * t``
requests pass.
"""

from __future__ import annotations

import math
from fractions import Fraction

from engine.instruments import dec

US_PER_S = 1_000_000


class TokenBucket:
    """``burst`` requests at once, ``rate`` a second on average.

    Args:
        rate: tokens added per second (> 0).
        burst: bucket size; defaults to ``max(1, ceil(rate))``. It starts full.
    """

    __slots__ = ("rate", "burst", "_fill", "_cost", "_capacity", "_level", "_last_us")

    def __init__(self, rate: float, burst: int | None = None) -> None:
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
        if burst is None:
            burst = max(1, math.ceil(rate))
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        exact = Fraction(dec(rate))
        self.rate = rate
        self.burst = burst
        self._fill = exact.numerator  # units per microsecond
        self._cost = exact.denominator * US_PER_S  # units per token
        self._capacity = burst * self._cost
        self._level = self._capacity
        self._last_us: int | None = None

    def try_take(self, now_us: int) -> bool:
        """Take a token at ``now_us`` if one is there. Time running backwards adds nothing."""
        last = self._last_us
        if last is None or now_us > last:
            if last is not None:
                self._level = min(self._capacity, self._level + (now_us - last) * self._fill)
            self._last_us = now_us
        if self._level >= self._cost:
            self._level -= self._cost
            return True
        return False

    def wait_us(self) -> int:
        """Microseconds from the last request until a token is there (0: one is)."""
        missing = self._cost - self._level
        return 0 if missing <= 0 else -(-missing // self._fill)

    @property
    def tokens(self) -> float:
        """Tokens in the bucket as of the last request (for statistics)."""
        return self._level / self._cost
