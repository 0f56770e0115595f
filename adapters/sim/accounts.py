"""Venue-side state of the matching engine: orders and accounts.

An ``Order`` is the venue's mutable record of one order (client or
server-created); it renders itself as the executionEvent payloads of
PROTOCOL 5.1, and, in its latest state, as an ``orderHistory`` item. An
``Account`` holds one ``Ledger`` (the money, shared code with the client's
book) and the account's orders by id and by clientOrderId. History queries
(PROTOCOL 5, "History queries") are answered by ``select``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

import attrs

from engine import events
from engine.enums import OrderStatus, OrderType, Reason, Side, TimeInForce
from engine.ledger import ZERO, Ledger

_WORKING = frozenset({OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.AMENDED})
_STOPS = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})


@attrs.define(eq=False)
class Order:
    """One order as the venue sees it.

    ``cause`` is set on orders the server creates (CLOSE_POSITION, STOP_LOSS,
    TAKE_PROFIT, STOP_OUT) and is their ``reason`` on every event.
    ``arrival`` is when a MARKET order may fill: at the first quote of its
    symbol with ``ts >= arrival`` (None: at the latest quote).
    """

    account_id: str
    order_id: str
    client_order_id: str | None
    symbol: str
    side: Side
    type: OrderType
    tif: TimeInForce
    quantity: Decimal
    price: float | None
    stop_price: float | None
    created_at: datetime
    origin: object = None
    stop_loss: float | None = None
    take_profit: float | None = None
    cause: Reason | None = None
    position_id: str | None = None
    arrival: datetime | None = None
    expires_at: datetime | None = None
    status: OrderStatus = OrderStatus.NEW
    reason: Reason | None = None
    filled: Decimal = ZERO
    value: Decimal = ZERO
    commission: Decimal = ZERO
    last_qty: Decimal | None = None
    last_price: Decimal | None = None
    exec_id: str = ""
    updated_at: datetime | None = None
    triggered: bool = False

    @property
    def working(self) -> bool:
        return self.status in _WORKING

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.filled

    @property
    def stop_pending(self) -> bool:
        """A STOP / STOP_LIMIT that has not triggered yet."""
        return self.type in _STOPS and not self.triggered

    def event(
        self,
        exec_id: str,
        ts: datetime,
        *,
        last_qty: Decimal | None = None,
        last_price: Decimal | None = None,
        commission: Decimal = ZERO,
    ) -> events.Execution:
        """The executionEvent of the order's current status (``exec_id`` is new)."""
        self.exec_id = exec_id
        self.updated_at = ts
        filled = self.filled
        return events.Execution(
            account_id=self.account_id, order_id=self.order_id,
            client_order_id=self.client_order_id, exec_id=exec_id, symbol=self.symbol,
            side=self.side, type=self.type, status=self.status,
            quantity=float(self.quantity), filled_quantity=float(filled),
            remaining_quantity=float(self.quantity - filled), price=self.price,
            stop_price=self.stop_price,
            last_quantity=None if last_qty is None else float(last_qty),
            last_price=None if last_price is None else float(last_price),
            average_price=float(self.value / filled) if filled else None,
            commission=float(commission), position_id=self.position_id,
            reason=self.cause or self.reason, ts=ts, time_in_force=self.tif,
            stop_loss=self.stop_loss, take_profit=self.take_profit,
        )

    def snapshot(self) -> events.Execution:
        """The ``orderHistory`` item: latest state, total commission, last fill."""
        filled = self.filled
        return events.Execution(
            account_id=self.account_id, order_id=self.order_id,
            client_order_id=self.client_order_id, exec_id=self.exec_id, symbol=self.symbol,
            side=self.side, type=self.type, status=self.status,
            quantity=float(self.quantity), filled_quantity=float(filled),
            remaining_quantity=float(self.quantity - filled), price=self.price,
            stop_price=self.stop_price,
            last_quantity=None if self.last_qty is None else float(self.last_qty),
            last_price=None if self.last_price is None else float(self.last_price),
            average_price=float(self.value / filled) if filled else None,
            commission=float(self.commission), position_id=self.position_id,
            reason=self.cause or self.reason, ts=self.updated_at or self.created_at, time_in_force=self.tif,
            stop_loss=self.stop_loss, take_profit=self.take_profit,
        )


@attrs.define(eq=False)
class Account:
    """One venue account: its money and every order it ever had."""

    ledger: Ledger
    orders: dict[str, Order] = attrs.Factory(dict)
    by_client_id: dict[str, Order] = attrs.Factory(dict)
    dirty: bool = False  # balance or positions changed since the last portfolioEvent

    @property
    def account_id(self) -> str:
        return self.ledger.account_id

    def add(self, order: Order) -> None:
        self.orders[order.order_id] = order
        if order.client_order_id is not None:
            self.by_client_id[order.client_order_id] = order


T = TypeVar("T")


def select(
    items: Iterable[T],
    time_of: Callable[[T], datetime],
    symbol_of: Callable[[T], str],
    *,
    symbol: str | None,
    from_: datetime | None,
    to: datetime | None,
    limit: int,
) -> tuple[T, ...]:
    """History filter: time in ``[from_, to)``, oldest first, the latest ``limit``."""
    picked = [
        x for x in items
        if (symbol is None or symbol_of(x) == symbol)
        and (from_ is None or time_of(x) >= from_)
        and (to is None or time_of(x) < to)
    ]
    picked.sort(key=time_of)  # stable: equal times keep booking order
    return tuple(picked[-limit:]) if limit > 0 else ()
