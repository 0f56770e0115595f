"""The order lifecycle table (PROTOCOL 5.1): every move, every forbidden move, the races."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import attrs
import pytest

from engine import orders
from engine.enums import OrderStatus, OrderType, Reason, Side, TimeInForce
from engine.errors import IllegalTransition, UsageError, WireError
from engine.events import Execution
from engine.intents import CreateOrder
from engine.orders import FINAL, TRANSITIONS, WORKING, Order, OrderState

T0 = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
_ids = itertools.count(1)


def ex(status, *, filled=0.0, qty=10_000.0, last=None, last_price=None, price=1.084,
       avg=None, commission=0.0, reason=None, position_id=None, order_id="o-1",
       cid="c-1", ts=T0, symbol="EURUSD", side=Side.BUY):
    return Execution(
        account_id="acc", order_id=order_id, client_order_id=cid, exec_id=f"x-{next(_ids)}",
        symbol=symbol, side=side, type=OrderType.LIMIT, status=OrderStatus(status),
        quantity=qty, filled_quantity=filled, remaining_quantity=qty - filled, price=price,
        stop_price=None, last_quantity=last, last_price=last_price,
        average_price=avg if avg is not None else (price if filled else None),
        commission=commission, position_id=position_id, reason=reason, ts=ts,
    )


def pending(qty=10_000.0) -> Order:
    intent = CreateOrder(account_id="acc", symbol="EURUSD", side=Side.BUY, quantity=qty,
                         type=OrderType.LIMIT, price=1.084, client_order_id="c-1")
    return Order.from_create(intent, ts=T0)


def order_in(state: OrderState) -> Order:
    """An order brought to ``state`` by legal events (filled part way where it can be)."""
    o = pending()
    if state is OrderState.PENDING_NEW:
        return o
    if state is OrderState.REJECTED:
        orders.reject(o, Reason.INVALID_ORDER, T0)
        return o
    orders.apply(o, ex("NEW"))
    path = {
        OrderState.NEW: [],
        OrderState.PARTIALLY_FILLED: [ex("PARTIALLY_FILLED", filled=4000, last=4000, last_price=1.084)],
        OrderState.AMENDED: [ex("AMENDED", qty=12_000)],
        OrderState.FILLED: [ex("FILLED", filled=10_000, last=10_000, last_price=1.084)],
        OrderState.CANCELLED: [ex("CANCELLED", reason=Reason.CLIENT)],
        OrderState.EXPIRED: [ex("EXPIRED", reason=Reason.DAY)],
    }[state]
    for e in path:
        orders.apply(o, e)
    assert o.status is state
    return o


def consistent_event(o: Order, status: OrderStatus) -> Execution:
    """An event with ``status`` whose numbers fit ``o`` (fills fill the rest)."""
    filled = o.filled_quantity
    if status is OrderStatus.PARTIALLY_FILLED:
        more = min(1000, o.quantity - filled)
        return ex(status, filled=filled + more, last=more or None, last_price=1.084, qty=o.quantity)
    if status is OrderStatus.FILLED:
        return ex(status, filled=o.quantity, last=o.quantity - filled or None,
                  last_price=1.084, qty=o.quantity)
    return ex(status, filled=filled, qty=o.quantity)


def test_state_values_compare_equal_to_wire_statuses():
    assert OrderState.NEW == OrderStatus.NEW == "NEW"
    assert {OrderState(s.value) for s in OrderStatus} | {OrderState.PENDING_NEW} == set(OrderState)
    assert WORKING | FINAL == set(OrderState) and not WORKING & FINAL


@pytest.mark.parametrize(("state", "status"), sorted(TRANSITIONS))
def test_every_listed_move_lands_where_the_table_says(state, status):
    o = order_in(state)
    filled_before = o.filled_quantity
    orders.apply(o, consistent_event(o, status))
    assert o.status is TRANSITIONS[state, status]
    assert o.filled_quantity >= filled_before
    assert o.remaining_quantity == o.quantity - o.filled_quantity


FORBIDDEN = sorted(set(itertools.product(OrderState, OrderStatus)) - set(TRANSITIONS))


@pytest.mark.parametrize(("state", "status"), FORBIDDEN)
def test_every_unlisted_move_raises_and_changes_nothing(state, status):
    o = order_in(state)
    before = attrs.asdict(o)
    with pytest.raises(IllegalTransition) as info:
        orders.apply(o, consistent_event(o, status))
    assert isinstance(info.value, UsageError)
    assert (info.value.state, info.value.status) == (state, status)
    assert attrs.asdict(o) == before


def test_named_forbidden_moves():
    assert ("FILLED", "NEW") in FORBIDDEN  # nothing after a final state
    assert ("NEW", "REJECTED") in FORBIDDEN  # a check failing after NEW is a CANCELLED
    assert ("CANCELLED", "FILLED") in FORBIDDEN
    assert ("EXPIRED", "AMENDED") in FORBIDDEN


def test_normal_life_new_partial_filled():
    o = pending()
    assert o.status is OrderState.PENDING_NEW and o.order_id is None and o.is_working
    assert orders.apply(o, ex("NEW"))
    assert (o.order_id, o.status, o.remaining_quantity) == ("o-1", OrderState.NEW, 10_000)
    orders.apply(o, ex("PARTIALLY_FILLED", filled=4000, last=4000, last_price=1.084,
                       commission=0.32, position_id="p-1"))
    assert (o.filled_quantity, o.remaining_quantity, o.position_id) == (4000, 6000, "p-1")
    orders.apply(o, ex("FILLED", filled=10_000, last=6000, last_price=1.0842, avg=1.08412,
                       commission=0.48, position_id="p-1"))
    assert o.status is OrderState.FILLED and o.is_final and not o.is_working
    assert o.average_price == 1.08412 and o.remaining_quantity == 0
    assert o.commission == D("0.80")


def test_fill_before_ack_creates_the_order_from_the_fill():
    first = ex("PARTIALLY_FILLED", filled=4000, last=4000, last_price=1.084, order_id="o-9")
    o = Order.from_execution(first)
    assert orders.apply(o, first)
    assert (o.order_id, o.status, o.filled_quantity) == ("o-9", OrderState.PARTIALLY_FILLED, 4000)
    # the ack arrives late: it neither moves the state back nor unfills
    late_ack = ex("NEW", order_id="o-9", ts=T0 + timedelta(seconds=1))
    assert not orders.apply(o, late_ack)
    assert (o.status, o.filled_quantity, o.remaining_quantity) == (OrderState.PARTIALLY_FILLED, 4000, 6000)
    assert o.updated_at == T0  # nothing changed, so not "updated"


def test_fill_before_ack_that_filled_whole_refuses_a_later_new():
    o = pending()
    orders.apply(o, ex("FILLED", filled=10_000, last=10_000, last_price=1.084))
    with pytest.raises(IllegalTransition):
        orders.apply(o, ex("NEW"))


def test_fill_after_cancel_request_still_applies_and_the_order_ends_filled():
    o = order_in(OrderState.NEW)
    o.cancel_requested = True  # the book's mark for a sent cancelOrder
    orders.apply(o, ex("PARTIALLY_FILLED", filled=4000, last=4000, last_price=1.084))
    assert o.status is OrderState.PARTIALLY_FILLED and o.cancel_requested
    orders.apply(o, ex("FILLED", filled=10_000, last=6000, last_price=1.084))
    assert o.status is OrderState.FILLED and not o.cancel_requested


def test_amended_crossing_a_fill_never_rolls_filled_back():
    o = order_in(OrderState.NEW)
    o.amend_requested = True
    orders.apply(o, ex("PARTIALLY_FILLED", filled=6000, last=6000, last_price=1.084, qty=8000))
    # the AMENDED was produced before that fill: it says 0 filled
    assert orders.apply(o, ex("AMENDED", qty=8000, price=1.083, filled=0))
    assert o.status is OrderState.AMENDED and not o.amend_requested
    assert (o.quantity, o.filled_quantity, o.remaining_quantity, o.price) == (8000, 6000, 2000, 1.083)
    # and from AMENDED on as from NEW
    orders.apply(o, ex("FILLED", filled=8000, last=2000, last_price=1.083, qty=8000, price=1.083))
    assert o.status is OrderState.FILLED


def test_amended_adopts_new_terms():
    o = order_in(OrderState.PARTIALLY_FILLED)
    orders.apply(o, ex("AMENDED", qty=5000, price=1.0835, filled=4000))
    assert (o.quantity, o.price, o.remaining_quantity) == (5000, 1.0835, 1000)


def test_stale_fill_does_not_undo_newer_numbers():
    o = order_in(OrderState.NEW)
    orders.apply(o, ex("PARTIALLY_FILLED", filled=7000, last=3000, last_price=1.085, avg=1.0846))
    orders.apply(o, ex("PARTIALLY_FILLED", filled=4000, last=4000, last_price=1.084, avg=1.084))
    assert (o.filled_quantity, o.average_price, o.remaining_quantity) == (7000, 1.0846, 3000)


def test_rejection_by_error_and_by_execution_is_one_rejection():
    o = pending()
    assert orders.reject(o, Reason.INSUFFICIENT_MARGIN, T0)
    assert o.status is OrderState.REJECTED and o.reason is Reason.INSUFFICIENT_MARGIN
    assert not orders.reject(o, Reason.INSUFFICIENT_MARGIN, T0)
    orders.apply(o, ex("REJECTED", reason=Reason.INSUFFICIENT_MARGIN))
    assert o.status is OrderState.REJECTED and o.reason is Reason.INSUFFICIENT_MARGIN


def test_an_accepted_order_cannot_be_rejected():
    o = order_in(OrderState.NEW)
    with pytest.raises(IllegalTransition):
        orders.reject(o, Reason.INVALID_ORDER, T0)


def test_cancelled_keeps_what_was_left_unfilled():
    o = order_in(OrderState.PARTIALLY_FILLED)
    orders.apply(o, ex("CANCELLED", filled=4000, reason=Reason.CLIENT))
    assert (o.status, o.filled_quantity, o.remaining_quantity, o.reason) == (
        OrderState.CANCELLED, 4000, 6000, Reason.CLIENT)


def test_remaining_is_exact_for_fractional_lots():
    o = pending(qty=0.3)
    orders.apply(o, ex("PARTIALLY_FILLED", qty=0.3, filled=0.1, last=0.1, last_price=1.0))
    assert o.remaining_quantity == 0.2


def test_server_created_order_keeps_its_cause():
    e = ex("NEW", cid=None, reason=Reason.STOP_LOSS, position_id="p-3", order_id="o-5")
    o = Order.from_execution(e)
    orders.apply(o, e)
    orders.apply(o, ex("FILLED", cid=None, order_id="o-5", filled=10_000, last=10_000,
                       last_price=1.08, reason=Reason.STOP_LOSS, position_id="p-3"))
    assert (o.reason, o.position_id, o.client_order_id) == (Reason.STOP_LOSS, "p-3", None)


def test_snapshot_commission_is_a_total_not_an_increment():
    o = order_in(OrderState.NEW)
    orders.apply(o, ex("PARTIALLY_FILLED", filled=4000, last=4000, last_price=1.084, commission=0.32))
    orders.apply(o, ex("PARTIALLY_FILLED", filled=4000, last=4000, last_price=1.084, commission=0.32),
                 snapshot=True)
    assert o.commission == D("0.32")


@pytest.mark.parametrize("bad", [
    dict(filled=11_000, last=11_000, last_price=1.0),   # more filled than ordered
    dict(symbol="GBPUSD"),
    dict(side=Side.SELL),
    dict(order_id="o-other"),
])
def test_an_event_that_contradicts_the_order_is_a_wire_error(bad):
    o = order_in(OrderState.NEW)
    status = "PARTIALLY_FILLED" if "filled" in bad else "NEW"
    with pytest.raises(WireError):
        orders.apply(o, ex(status, **bad))
    assert o.status is OrderState.NEW and o.filled_quantity == 0


def test_force_adopts_the_servers_word():
    o = order_in(OrderState.CANCELLED)
    orders.force(o, ex("FILLED", filled=10_000, last=10_000, last_price=1.084, commission=0.8))
    assert (o.status, o.filled_quantity, o.commission) == (OrderState.FILLED, 10_000, D("0.8"))


def test_from_create_takes_the_effective_time_in_force():
    intent = CreateOrder(account_id="acc", symbol="EURUSD", side=Side.SELL, quantity=1000,
                         client_order_id="c-2")
    o = Order.from_create(intent)
    assert (o.type, o.time_in_force, o.remaining_quantity, o.key) == (
        OrderType.MARKET, TimeInForce.IOC, 1000, "cid:c-2")
