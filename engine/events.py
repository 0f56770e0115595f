"""Inbound facts: every server->client payload of PROTOCOL.md section 5.

Each is a frozen msgspec ``Struct`` whose fields are the schema: msgspec
checks types and constraints in one C call while decoding and names the
failing field. Python names are snake_case; ``rename="camel"`` maps them
to the wire. ``gc=False`` because quotes arrive by the million and hold
no cycles. The envelopes that carry them live in ``engine.codec``.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated

import msgspec

from engine.enums import ErrorCode, EventKind, OrderStatus, OrderType, PositionSide, Reason, Side, TimeInForce

_MAX = sys.float_info.max
Price = Annotated[float, msgspec.Meta(gt=0, le=_MAX)]
"""A finite price > 0 (JSON has no NaN; ``1e999`` would decode as inf)."""
Qty = Annotated[float, msgspec.Meta(gt=0, le=_MAX)]
NonNegQty = Annotated[float, msgspec.Meta(ge=0, le=_MAX)]
Money = Annotated[float, msgspec.Meta(ge=-_MAX, le=_MAX)]
Time = Annotated[datetime, msgspec.Meta(tz=True)]
Level = tuple[Price, Qty]

_OPTS = dict(frozen=True, gc=False, rename="camel")


class Quote(msgspec.Struct, **_OPTS):
    symbol: str
    bid: Price
    ask: Price
    ts: Time
    bid_size: Qty | None = None
    ask_size: Qty | None = None

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) * 0.5

    @property
    def crossed(self) -> bool:
        """bid > ask: accepted (markets do this) but worth flagging."""
        return self.bid > self.ask


class Depth(msgspec.Struct, **_OPTS):
    symbol: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    ts: Time

    @property
    def crossed(self) -> bool:
        return bool(self.bids and self.asks and self.bids[0][0] > self.asks[0][0])


class Execution(msgspec.Struct, **_OPTS):
    account_id: str
    order_id: str
    client_order_id: str | None
    exec_id: str
    symbol: str
    side: Side
    type: OrderType
    status: OrderStatus
    quantity: Qty
    filled_quantity: NonNegQty
    remaining_quantity: NonNegQty
    price: Price | None
    stop_price: Price | None
    last_quantity: NonNegQty | None
    last_price: Price | None
    average_price: Price | None
    commission: Money
    position_id: str | None
    reason: Reason | None
    ts: Time
    time_in_force: TimeInForce | None = None
    stop_loss: Price | None = None
    take_profit: Price | None = None

    @property
    def is_fill(self) -> bool:
        return bool(self.last_quantity)


class Position(msgspec.Struct, **_OPTS):
    position_id: str
    symbol: str
    side: PositionSide
    quantity: Qty
    open_price: Price
    current_price: Price
    unrealized_pnl: Money
    stop_loss: Price | None
    take_profit: Price | None
    opened_at: Time


class ClosedPosition(msgspec.Struct, **_OPTS):
    position_id: str
    symbol: str
    side: PositionSide
    quantity: Qty
    open_price: Price
    opened_at: Time
    closed_at: Time
    close_price: Price
    realized_pnl: Money
    stop_loss: Price | None = None
    take_profit: Price | None = None
    current_price: Price | None = None
    unrealized_pnl: Money | None = None


class Portfolio(msgspec.Struct, **_OPTS):
    account_id: str
    currency: str
    balance: Money
    positions: tuple[Position, ...]
    ts: Time


class Metrics(msgspec.Struct, **_OPTS):
    account_id: str
    currency: str
    balance: Money
    equity: Money
    margin: Money
    free_margin: Money
    margin_level: Money | None
    unrealized_pnl: Money
    realized_pnl: Money
    ts: Time


class Subscription(msgspec.Struct, **_OPTS, omit_defaults=True):
    """An echo of a (un)subscribe request: ``{symbols, events}``,
    ``{symbol, depth}`` or ``{accountId}`` (fields it lacks are left out)."""

    symbols: tuple[str, ...] | None = None
    events: tuple[EventKind, ...] | None = None
    symbol: str | None = None
    depth: int | None = None
    account_id: str | None = None


class Subscribed(Subscription, frozen=True, gc=False):
    """Payload of ``subscribed``."""


class Unsubscribed(Subscription, frozen=True, gc=False):
    """Payload of ``unsubscribed``."""


class Error(msgspec.Struct, **_OPTS):
    code: ErrorCode
    message: str
    request_type: str | None = None
    client_order_id: str | None = None
    order_id: str | None = None


class Deal(msgspec.Struct, **_OPTS):
    deal_id: str
    order_id: str
    position_id: str
    symbol: str
    side: Side
    quantity: Qty
    price: Price
    commission: Money
    realized_pnl: Money
    ts: Time


class OrderHistory(msgspec.Struct, **_OPTS):
    account_id: str
    orders: tuple[Execution, ...]


class PositionHistory(msgspec.Struct, **_OPTS):
    account_id: str
    positions: tuple[ClosedPosition, ...]


class DealHistory(msgspec.Struct, **_OPTS):
    account_id: str
    deals: tuple[Deal, ...]


Event = (
    Quote | Depth | Execution | Portfolio | Metrics | Subscribed | Unsubscribed | Error
    | OrderHistory | PositionHistory | DealHistory
)
