"""Clocks. The core reads time only from the clock it is given (DESIGN rule 1).

``VirtualClock`` is the venue clock of PROTOCOL section 7: the largest ``ts``
of the market events taken so far, so it never runs backwards. ``WallClock``
is the live one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Clock(Protocol):
    @property
    def now(self) -> datetime: ...


class VirtualClock:
    """Time that moves only when told to, and only forward."""

    __slots__ = ("now",)

    def __init__(self, start: datetime = EPOCH) -> None:
        self.now = start

    def advance_to(self, ts: datetime) -> bool:
        """Move to ``ts`` if it is later. Returns False if ``ts`` was behind."""
        if ts >= self.now:
            self.now = ts
            return True
        return False


class WallClock:
    """UTC wall-clock time, for live trading."""

    @property
    def now(self) -> datetime:
        return datetime.now(timezone.utc)
