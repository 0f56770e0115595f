"""The sans-IO core of triotrade: wire values, the book, the kernel and the drivers.

The leaves (enums, events, intents, errors, clock, instruments, codec,
orders, ledger, book) import nothing else of ours; ``engine.kernel`` joins
book, strategies and risk gate; ``engine.backtest`` drives it on a virtual
clock; ``engine.cli`` is the composition root. Import from the submodules;
this package re-exports only what a strategy author or a driver needs.
"""

from engine.clock import VirtualClock, WallClock
from engine.enums import ErrorCode, EventKind, OrderStatus, OrderType, PositionSide, Reason, Side, TimeInForce
from engine.errors import ConfigError, FeedError, IllegalTransition, TriotradeError, UsageError, WireError
from engine.instruments import Instrument

__all__ = [
    "ConfigError",
    "ErrorCode",
    "EventKind",
    "FeedError",
    "IllegalTransition",
    "Instrument",
    "OrderStatus",
    "OrderType",
    "PositionSide",
    "Reason",
    "Side",
    "TimeInForce",
    "TriotradeError",
    "UsageError",
    "VirtualClock",
    "WallClock",
    "WireError",
]
