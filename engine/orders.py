"""The order lifecycle of PROTOCOL 5.1 as one transition table.

The rules, all of them (``TRANSITIONS`` below spells them out move by move):

* The venue moves an order NEW -> PARTIALLY_FILLED* -> FILLED, or ends a
  working order CANCELLED or EXPIRED. REJECTED means it was never accepted.
  AMENDED is still working, and from AMENDED on it moves as from NEW;
  PARTIALLY_FILLED may also go to CANCELLED, EXPIRED or AMENDED.
* PENDING_NEW is ours, not the venue's: the book holds a sent createOrder in
  it, by clientOrderId, until the first event for it, so strategies and the
  risk gate see their orders in flight. Any venue status may come first: a
  fill before the NEW ack (fill-before-ack race), or a reconciliation that
  finds the order already over. An ``error`` answering the createOrder is a
  REJECTED; the venue MAY also send a REJECTED execution: one rejection.
* A late event does not move the state back: a NEW after a fill or after an
  AMENDED leaves the order where it is (the table maps it to the current
  state). Its cumulative fields still merge.
* ``filled_quantity`` never decreases (an AMENDED crossing a fill carries an
  older one), and ``remaining_quantity`` is always ``quantity - filled``.
* A final state (FILLED, CANCELLED, EXPIRED, REJECTED) takes only a repeat of
  itself (a REJECTED execution after the rejecting ``error``, a history
  snapshot); anything else after it raises ``IllegalTransition``.
* A cancel request is a flag (``cancel_requested``, the PENDING_CANCEL idea),
  not a state: the order keeps working and a fill still applies. If the fill
  wins, the order ends FILLED and the venue's UNKNOWN_ORDER answer to the
  cancel is harmless.

Booking fills into money is not this module's business (``engine.book``
does it once per ``execId``); this one keeps an order's status and terms.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

import attrs

from engine.enums import OrderStatus, OrderType, Reason, Side, TimeInForce
from engine.errors import IllegalTransition, WireError
from engine.events import Execution
from engine.instruments import dec
from engine.intents import CreateOrder

ZERO = Decimal(0)


class OrderState(StrEnum):
    """An order's status in the book: the wire's ``OrderStatus`` plus PENDING_NEW.

    A ``StrEnum``, so ``OrderState.NEW == OrderStatus.NEW == "NEW"``.
    """

    PENDING_NEW = "PENDING_NEW"
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"
    AMENDED = "AMENDED"


S, E = OrderState, OrderStatus

WORKING = frozenset({S.PENDING_NEW, S.NEW, S.PARTIALLY_FILLED, S.AMENDED})
"""States that may still fill: what the risk gate counts as exposure in flight."""
FINAL = frozenset({S.FILLED, S.CANCELLED, S.EXPIRED, S.REJECTED})

TRANSITIONS: dict[tuple[OrderState, OrderStatus], OrderState] = {
    # A sent order: the first event may be any status (ack, fill-before-ack,
    # an end found by reconciliation, the rejection).
    (S.PENDING_NEW, E.NEW): S.NEW,
    (S.PENDING_NEW, E.PARTIALLY_FILLED): S.PARTIALLY_FILLED,
    (S.PENDING_NEW, E.FILLED): S.FILLED,
    (S.PENDING_NEW, E.CANCELLED): S.CANCELLED,
    (S.PENDING_NEW, E.EXPIRED): S.EXPIRED,
    (S.PENDING_NEW, E.AMENDED): S.AMENDED,
    (S.PENDING_NEW, E.REJECTED): S.REJECTED,
    # Accepted.
    (S.NEW, E.NEW): S.NEW,  # a repeated ack
    (S.NEW, E.PARTIALLY_FILLED): S.PARTIALLY_FILLED,
    (S.NEW, E.FILLED): S.FILLED,
    (S.NEW, E.CANCELLED): S.CANCELLED,
    (S.NEW, E.EXPIRED): S.EXPIRED,
    (S.NEW, E.AMENDED): S.AMENDED,
    # Part filled.
    (S.PARTIALLY_FILLED, E.NEW): S.PARTIALLY_FILLED,  # late ack: stay
    (S.PARTIALLY_FILLED, E.PARTIALLY_FILLED): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, E.FILLED): S.FILLED,
    (S.PARTIALLY_FILLED, E.CANCELLED): S.CANCELLED,
    (S.PARTIALLY_FILLED, E.EXPIRED): S.EXPIRED,
    (S.PARTIALLY_FILLED, E.AMENDED): S.AMENDED,  # may cross a fill
    # Amended: as from NEW.
    (S.AMENDED, E.NEW): S.AMENDED,  # late ack: stay
    (S.AMENDED, E.PARTIALLY_FILLED): S.PARTIALLY_FILLED,
    (S.AMENDED, E.FILLED): S.FILLED,
    (S.AMENDED, E.CANCELLED): S.CANCELLED,
    (S.AMENDED, E.EXPIRED): S.EXPIRED,
    (S.AMENDED, E.AMENDED): S.AMENDED,
    # Final: a repeat only.
    (S.FILLED, E.FILLED): S.FILLED,
    (S.CANCELLED, E.CANCELLED): S.CANCELLED,
    (S.EXPIRED, E.EXPIRED): S.EXPIRED,
    (S.REJECTED, E.REJECTED): S.REJECTED,
}
"""(current state, event status) -> new state. A pair not listed is illegal."""

# Members as module constants: ``OrderState.NEW`` is a metaclass attribute
# lookup (~75 ns), too slow for the per-event path.
_PENDING_NEW = S.PENDING_NEW
_AMENDED = E.AMENDED
_NEXT: dict[OrderState, dict[OrderStatus, OrderState]] = {
    state: {status: new for (was, status), new in TRANSITIONS.items() if was is state}
    for state in OrderState
}
"""``TRANSITIONS`` by state, then status (no key tuple to build per event)."""
_NONE: dict = {}
_EXACT = 2.0**53
"""Integral floats below this subtract exactly."""
_DEFAULT_TIF = {
    t: CreateOrder("", "", Side.BUY, 1.0, t).effective_tif for t in OrderType
}
"""``CreateOrder.effective_tif`` of an order without a time in force, by type
(the property costs ~0.2 us, a tenth of recording a sent order)."""


@attrs.define(eq=False)
class Order:
    """One order as the book knows it. Mutated only by ``apply``/``reject``.

    Identity-compared (two objects are the same order only if they are the
    same object), so it can key a dict. Strategies get these through the
    book's read-only view and must treat them as read-only.

    ``order_id`` is None while PENDING_NEW; ``commission`` is the order's
    total so far in the account currency.
    """

    order_id: str | None
    client_order_id: str | None
    account_id: str
    symbol: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce | None
    quantity: float
    filled_quantity: float = 0.0
    remaining_quantity: float = attrs.field(default=None)
    price: float | None = None
    stop_price: float | None = None
    average_price: float | None = None
    status: OrderState = OrderState.PENDING_NEW
    reason: Reason | None = None
    position_id: str | None = None
    stop_loss: float | None = None
    take_profit: float | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    commission: Decimal = ZERO
    cancel_requested: bool = False
    amend_requested: bool = False

    def __attrs_post_init__(self) -> None:
        if self.remaining_quantity is None:
            self.remaining_quantity = _minus(self.quantity, self.filled_quantity)

    @property
    def is_working(self) -> bool:
        return self.status in WORKING

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    @property
    def is_pending(self) -> bool:
        """Sent, not yet seen by the venue's events."""
        return self.status is _PENDING_NEW

    @property
    def key(self) -> str:
        """A name for messages: the order id, else the clientOrderId."""
        return self.order_id or f"cid:{self.client_order_id}"

    @classmethod
    def from_create(cls, intent, ts: datetime | None = None) -> Order:
        """A PENDING_NEW order from a sent ``intents.CreateOrder``."""
        tif = intent.time_in_force
        if tif is None:
            kind = intent.type
            if type(intent) is CreateOrder and type(kind) is OrderType:
                tif = _DEFAULT_TIF[kind]
            else:
                tif = intent.effective_tif
        quantity = float(intent.quantity)
        # Positional, every field up to updated_at: one per sent order, so it
        # is on the trade path (keywords cost twice as much). Nothing filled:
        # remaining is the quantity (``_minus(q, 0.0) == q`` for every float).
        return cls(
            None, intent.client_order_id, intent.account_id, intent.symbol, intent.side,
            intent.type, tif, quantity, 0.0, quantity, intent.price, intent.stop_price,
            None, _PENDING_NEW, None, None, intent.stop_loss, intent.take_profit, ts, ts,
        )

    @classmethod
    def from_execution(cls, ev: Execution) -> Order:
        """A blank PENDING_NEW order for an event of an order the book never saw
        (another connection's, a server-created close, a fill before the ack);
        ``apply(order, ev)`` then moves it like any other."""
        return cls(
            order_id=ev.order_id, client_order_id=ev.client_order_id,
            account_id=ev.account_id, symbol=ev.symbol, side=ev.side, type=ev.type,
            time_in_force=ev.time_in_force, quantity=ev.quantity, price=ev.price,
            stop_price=ev.stop_price, reason=ev.reason, position_id=ev.position_id,
            stop_loss=ev.stop_loss, take_profit=ev.take_profit, created_at=ev.ts,
        )


def next_state(order: Order, status: OrderStatus) -> OrderState:
    """The state ``status`` moves ``order`` to. Raises IllegalTransition."""
    new = TRANSITIONS.get((order.status, status))
    if new is None:
        raise IllegalTransition(order.key, str(order.status), str(status))
    return new


def validate(order: Order, ev: Execution) -> OrderState:
    """The state ``ev`` would move ``order`` to, changing nothing; raises what
    ``apply`` would (so a caller can book money only for an event that applies)."""
    if (ev.filled_quantity > ev.quantity or ev.symbol != order.symbol or ev.side != order.side
            or (order.order_id is not None and ev.order_id != order.order_id)):
        _check(order, ev)  # raises, naming the contradiction
    new = _NEXT.get(order.status, _NONE).get(ev.status)
    if new is None:
        raise IllegalTransition(order.key, str(order.status), str(ev.status))
    return new


def apply(
    order: Order, ev: Execution, *, snapshot: bool = False, commission: Decimal | None = None,
) -> bool:
    """Move ``order`` by one execution event; returns True if anything changed.

    Args:
        order: the book's order (mutated in place).
        ev: an ``executionEvent`` of this order; the caller has deduplicated
            it by ``execId``.
        snapshot: ``ev`` is an ``orderHistory`` entry: its ``commission`` is
            the order's total, not this event's.
        commission: what of this event's commission was booked, if not all
            of it (the book books none for a fill it had already taken).

    Raises:
        IllegalTransition: the table forbids the move (nothing is changed).
        WireError: the event contradicts itself or the order (another
            symbol or side, more filled than ordered).
    """
    return apply_valid(order, ev, validate(order, ev), snapshot=snapshot, commission=commission)


def apply_valid(
    order: Order, ev: Execution, new: OrderState, *, snapshot: bool = False,
    commission: Decimal | None = None,
) -> bool:
    """``apply`` of an event ``validate`` has just passed (``new`` is what it
    returned): the book validates before it books money, then applies
    without checking twice. Same result as ``apply``."""
    status = ev.status
    # Whether anything changed: a new state always does (the usual case:
    # PENDING_NEW -> NEW -> FILLED); only else are the fields compared.
    changed = new is not order.status
    before = None if changed else _fingerprint(order)
    filled_before = order.filled_quantity
    ev_filled = ev.filled_quantity
    if order.order_id is None:
        order.order_id = ev.order_id
    if order.client_order_id is None and ev.client_order_id is not None:
        order.client_order_id = ev.client_order_id
    if status is _AMENDED or (new == status and ev_filled >= filled_before):  # not late
        order.quantity = ev.quantity
        order.price = ev.price
        order.stop_price = ev.stop_price
        if ev.time_in_force is not None:
            order.time_in_force = ev.time_in_force
        if ev.position_id is not None:
            order.position_id = ev.position_id
        order.reason = ev.reason
    if ev_filled >= filled_before:
        order.filled_quantity = ev_filled
        if ev.average_price is not None:
            order.average_price = ev.average_price
    quantity, filled = order.quantity, order.filled_quantity
    if quantity < filled:  # an inconsistent venue: never below filled
        order.quantity = quantity = filled
    if (type(quantity) is float and type(filled) is float and quantity.is_integer()
            and filled.is_integer() and 0.0 <= filled and quantity < _EXACT):
        order.remaining_quantity = quantity - filled  # _minus's exact case, inline
    else:
        order.remaining_quantity = _minus(quantity, filled)
    if snapshot:
        total = dec(ev.commission)
        if total > order.commission:
            order.commission = total
    elif commission is not None:
        order.commission += commission
    elif ev.commission:
        order.commission += dec(ev.commission)
    if status is _AMENDED:
        order.amend_requested = False
    if not changed:
        order.status = new
        changed = _fingerprint(order) != before
    _settle(order, new, ev.ts if changed else None)
    return changed


def reject(order: Order, reason: Reason | None, ts: datetime | None = None) -> bool:
    """End a sent order REJECTED (an ``error`` answered its createOrder).

    Returns False if it already was (the venue's REJECTED execution and its
    ``error`` are one rejection). Raises IllegalTransition on an accepted order.
    """
    new = next_state(order, OrderStatus.REJECTED)
    if order.status is new:
        return False
    order.reason = reason
    _settle(order, new, ts)
    return True


def force(order: Order, ev: Execution) -> None:
    """Adopt ``ev``'s state and numbers without the table (reconciliation:
    the server's word wins over a book that went wrong)."""
    _check(order, ev)
    order.order_id = ev.order_id
    if ev.client_order_id is not None:
        order.client_order_id = ev.client_order_id
    order.quantity = ev.quantity
    order.filled_quantity = ev.filled_quantity
    order.remaining_quantity = _minus(ev.quantity, ev.filled_quantity)
    order.price, order.stop_price = ev.price, ev.stop_price
    order.average_price = ev.average_price
    order.reason = ev.reason
    if ev.position_id is not None:
        order.position_id = ev.position_id
    order.commission = dec(ev.commission)
    _settle(order, OrderState(ev.status.value), ev.ts)


def _settle(order: Order, new: OrderState, ts: datetime | None) -> None:
    order.status = new
    if ts is not None:
        order.updated_at = ts
        if order.created_at is None:
            order.created_at = ts
    if new in FINAL:
        order.cancel_requested = False
        order.amend_requested = False


def _check(order: Order, ev: Execution) -> None:
    if ev.filled_quantity > ev.quantity:
        raise WireError(
            f"filledQuantity {ev.filled_quantity} exceeds quantity {ev.quantity}",
            msg_type="executionEvent", path="$.payload.filledQuantity",
        )
    if ev.symbol != order.symbol or ev.side != order.side:
        raise WireError(
            f"order {order.key} is {order.side} {order.symbol}, the event says "
            f"{ev.side} {ev.symbol}",
            msg_type="executionEvent", path="$.payload.symbol",
        )
    if order.order_id is not None and ev.order_id != order.order_id:
        raise WireError(
            f"order {order.key}: the event is of order {ev.order_id}",
            msg_type="executionEvent", path="$.payload.orderId",
        )


def _fingerprint(o: Order) -> tuple:
    return (
        o.order_id, o.status, o.quantity, o.filled_quantity, o.price, o.stop_price,
        o.average_price, o.reason, o.position_id, o.commission, o.time_in_force,
        o.client_order_id, o.amend_requested,
    )


def _minus(a: float, b: float) -> float:
    """``a - b`` without float noise (``0.3 - 0.1`` is 0.2 here)."""
    if (type(a) is float and type(b) is float and a.is_integer() and b.is_integer()
            and 0.0 <= b <= a < _EXACT):
        return a - b  # whole units (the usual lots): float is exact, Decimal is slow
    return float(dec(a) - dec(b))
