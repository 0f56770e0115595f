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
    symbol with ``ts >= arrival`` (None: at the latest quote). Money and
    quantities are Decimals; their wire floats are cached as they change,
    because Decimal -> float costs 0.3 us and events are built often.
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
    # ``qty_f``/``remaining_f`` may be given when the caller has the float
    # already (a request's quantity: float(dec(x)) == x), saving a 0.2 us
    # conversion; they come right after ``arrival`` to be passed by position
    _qty_f: float = attrs.field(
        default=attrs.Factory(lambda self: float(self.quantity), takes_self=True))
    _remaining_f: float = attrs.field(
        default=attrs.Factory(lambda self: self._qty_f, takes_self=True))
    expires_at: datetime | None = None
    status: OrderStatus = OrderStatus.NEW
    reason: Reason | None = None
    filled: Decimal = ZERO
    value: Decimal = ZERO
    commission: Decimal = ZERO
    last_qty: float | None = None
    last_price: float | None = None
    exec_id: str = ""
    updated_at: datetime | None = None
    triggered: bool = False
    _filled_f: float = 0.0
    _avg_f: float | None = None

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

    def set_quantity(self, quantity: Decimal) -> None:
        self.quantity = quantity
        self._qty_f = float(quantity)
        self._remaining_f = float(quantity - self.filled)

    def add_fill(self, qty: Decimal, price: Decimal, price_f: float, commission: Decimal) -> float:
        """Record a fill; returns ``qty`` as a float (the event's lastQuantity)."""
        first = not self.filled
        self.filled = filled = self.filled + qty
        self.value += qty * price
        self.commission += commission
        if filled == self.quantity:
            # filled whole by its first fill: qty equals quantity, so its float too
            qty_f = self._qty_f if first else float(qty)
            self.status = OrderStatus.FILLED
            self._filled_f, self._remaining_f = self._qty_f, 0.0
        else:
            qty_f = float(qty)
            self.status = OrderStatus.PARTIALLY_FILLED
            self._filled_f = float(filled)
            self._remaining_f = float(self.quantity - filled)
        self.last_qty, self.last_price = qty_f, price_f
        self._avg_f = price_f if first else float(self.value / filled)
        return qty_f

    def event(
        self,
        exec_id: str,
        ts: datetime,
        last_qty: float | None = None,
        last_price: float | None = None,
        commission: float = 0.0,
    ) -> events.Execution:
        """The executionEvent of the order's current status (``exec_id`` is new)."""
        self.exec_id = exec_id
        self.updated_at = ts
        return events.Execution(
            self.account_id, self.order_id, self.client_order_id, exec_id, self.symbol,
            self.side, self.type, self.status, self._qty_f, self._filled_f, self._remaining_f,
            self.price, self.stop_price, last_qty, last_price, self._avg_f, commission,
            self.position_id, self.cause or self.reason, ts, self.tif, self.stop_loss,
            self.take_profit,
        )

    def snapshot(self) -> events.Execution:
        """The ``orderHistory`` item: latest state, total commission, last fill."""
        return events.Execution(
            self.account_id, self.order_id, self.client_order_id, self.exec_id, self.symbol,
            self.side, self.type, self.status, self._qty_f, self._filled_f, self._remaining_f,
            self.price, self.stop_price, self.last_qty, self.last_price, self._avg_f,
            float(self.commission), self.position_id, self.cause or self.reason,
            self.updated_at or self.created_at, self.tif, self.stop_loss, self.take_profit,
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


# ------------------------------------------------------------------ state
# An order as plain JSON-able data, for the server's durable store. ``origin``
# (a live connection) is not state: a restored order has none, so its later
# events go to the account's subscribers as the server's own would.

_DECIMALS = frozenset({"quantity", "filled", "value", "commission"})
_TIMES = frozenset({"created_at", "arrival", "expires_at", "updated_at"})
_ENUMS = {"side": Side, "type": OrderType, "tif": TimeInForce, "status": OrderStatus,
          "cause": Reason, "reason": Reason}
_FIELDS = tuple((a.name, a.alias) for a in attrs.fields(Order) if a.name != "origin")


def order_state(order: Order) -> dict:
    """Every field of ``order`` but its origin, by its ``__init__`` name."""
    out = {}
    for name, key in _FIELDS:
        v = getattr(order, name)
        if v is not None:
            if name in _DECIMALS:
                v = str(v)
            elif name in _TIMES:
                v = v.isoformat()
            elif name in _ENUMS:
                v = v.value
        out[key] = v
    return out


def order_from_state(state: dict) -> Order:
    """The order ``order_state`` described (origin None)."""
    kw = {}
    for name, key in _FIELDS:
        v = state[key]
        if v is not None:
            if name in _DECIMALS:
                v = Decimal(v)
            elif name in _TIMES:
                v = datetime.fromisoformat(v)
            elif name in _ENUMS:
                v = _ENUMS[name](v)
        kw[key] = v
    return Order(**kw)
