"""Outbound commands: every client->server message of PROTOCOL.md section 4.

A strategy never sends anything; it emits these intents, the risk gate
approves or denies each, and only approved ones reach a venue (DESIGN rule
3). They are frozen attrs classes with snake_case names; ``engine.codec``
turns them into wire bytes and back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import attrs

from engine.enums import EventKind, OrderType, Side, TimeInForce


class _Keep:
    """The type of ``KEEP``: a field left as it is (``null`` would remove it)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "KEEP"

    def __bool__(self) -> bool:
        return False


KEEP: Final = _Keep()


@attrs.frozen
class Subscribe:
    symbols: tuple[str, ...]
    events: tuple[EventKind, ...]


@attrs.frozen
class Unsubscribe:
    symbols: tuple[str, ...]
    events: tuple[EventKind, ...]


@attrs.frozen
class DepthSubscribe:
    symbol: str
    depth: int = 10


@attrs.frozen
class DepthUnsubscribe:
    symbol: str


@attrs.frozen
class MetricsSubscribe:
    account_id: str


@attrs.frozen
class CreateOrder:
    account_id: str
    symbol: str
    side: Side
    quantity: float
    type: OrderType = OrderType.MARKET
    price: float | None = None
    stop_price: float | None = None
    time_in_force: TimeInForce | None = None
    client_order_id: str | None = None
    stop_loss: float | None = None
    take_profit: float | None = None

    @property
    def effective_tif(self) -> TimeInForce:
        """The time in force the venue applies: IOC for MARKET, else GTC, by default."""
        if self.time_in_force is not None:
            return self.time_in_force
        return TimeInForce.IOC if self.type is OrderType.MARKET else TimeInForce.GTC


@attrs.frozen
class CancelOrder:
    account_id: str
    order_id: str | None = None
    client_order_id: str | None = None


@attrs.frozen
class AmendOrder:
    account_id: str
    order_id: str
    quantity: float | None = None
    price: float | None = None
    stop_price: float | None = None


@attrs.frozen
class ClosePosition:
    account_id: str
    position_id: str
    quantity: float | None = None


@attrs.frozen
class AmendPosition:
    """``stop_loss``/``take_profit``: a price sets, None removes, KEEP leaves it."""

    account_id: str
    position_id: str
    stop_loss: float | None | _Keep = KEEP
    take_profit: float | None | _Keep = KEEP


@attrs.frozen
class HistoryQuery:
    account_id: str
    symbol: str | None = None
    from_: datetime | None = None
    to: datetime | None = None
    limit: int = 100


@attrs.frozen
class OrderHistoryQuery(HistoryQuery):
    pass


@attrs.frozen
class PositionHistoryQuery(HistoryQuery):
    pass


@attrs.frozen
class DealHistoryQuery(HistoryQuery):
    pass


TradingIntent = CreateOrder | CancelOrder | AmendOrder | ClosePosition | AmendPosition
"""The intents the risk gate rules on."""

Intent = (
    TradingIntent | Subscribe | Unsubscribe | DepthSubscribe | DepthUnsubscribe
    | MetricsSubscribe | OrderHistoryQuery | PositionHistoryQuery | DealHistoryQuery
)
