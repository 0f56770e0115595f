"""The local order/position book: in-flight orders, fills booked once, the races, reconciliation."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest

from engine.book import Book, BookView
from engine.enums import ErrorCode, OrderStatus, OrderType, PositionSide, Reason, Side
from engine.errors import IllegalTransition
from engine.events import Error, Execution, OrderHistory, Portfolio, Position, Quote
from engine.instruments import Instrument
from engine.intents import AmendOrder, CancelOrder, CreateOrder
from engine.orders import OrderState

T0 = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
INSTRUMENTS = {
    "EURUSD": Instrument("EURUSD", "USD", leverage=30, base_currency="EUR"),
    "USDJPY": Instrument("USDJPY", "JPY", leverage=20, base_currency="USD"),
    "GBPUSD": Instrument("GBPUSD", "USD", leverage=30, base_currency="GBP"),
}
_xids = itertools.count(1)


def make(balance=10_000) -> tuple[Book, dict]:
    quotes: dict[str, Quote] = {}
    return Book("acc", "USD", D(balance), INSTRUMENTS, quotes), quotes


def quote(quotes, bid, ask, symbol="EURUSD"):
    quotes[symbol] = Quote(symbol=symbol, bid=bid, ask=ask, ts=T0)


def create(cid="c-1", side=Side.BUY, qty=10_000, **kw) -> CreateOrder:
    return CreateOrder(account_id="acc", symbol=kw.pop("symbol", "EURUSD"), side=side,
                       quantity=qty, type=OrderType.LIMIT, price=1.084, client_order_id=cid, **kw)


def ex(status, *, oid="o-1", cid="c-1", side=Side.BUY, qty=10_000.0, filled=0.0, last=None,
       px=None, avg=None, commission=0.0, pid=None, reason=None, account="acc", xid=None,
       symbol="EURUSD", price=1.084):
    return Execution(
        account_id=account, order_id=oid, client_order_id=cid, exec_id=xid or f"x-{next(_xids)}",
        symbol=symbol, side=side, type=OrderType.LIMIT, status=OrderStatus(status), quantity=qty,
        filled_quantity=filled, remaining_quantity=qty - filled, price=price, stop_price=None,
        last_quantity=last, last_price=px, average_price=avg if avg is not None else px,
        commission=commission, position_id=pid, reason=reason, ts=T0,
    )


def err(code, *, cid=None, oid=None, request_type=None):
    return Error(code=ErrorCode(code), message="no", request_type=request_type,
                 client_order_id=cid, order_id=oid)


def fingerprint(book: Book):
    """Everything a redelivered event must leave alone."""
    return (
        [(o.order_id, o.status, o.filled_quantity, o.quantity, o.commission, o.cancel_requested)
         for o in book.all_orders()],
        {s: (p.position_id, p.side, p.quantity, p.open_price) for s, p in book.ledger.positions.items()},
        book.ledger.balance, book.ledger.realized_pnl, len(book.ledger.deals),
    )


# --------------------------------------------------------------- in flight

def test_a_sent_order_is_working_before_the_venue_answers():
    book, _ = make()
    book.on_sent(create())
    order = book.order_by_client_id("c-1")
    assert order.status is OrderState.PENDING_NEW and order.order_id is None
    assert book.working_orders() == [order] and book.working_orders("USDJPY") == []
    assert book.apply(ex("NEW"))
    assert book.order("o-1") is order and order.status is OrderState.NEW
    assert book.working_orders("EURUSD") == [order]


def test_a_resend_after_reconnect_is_the_same_order():
    book, _ = make()
    book.on_sent(create())
    book.on_sent(create())
    assert len(book.all_orders()) == 1 and book.statistics()["resends"] == 1


def test_an_order_without_client_order_id_is_not_tracked_until_the_venue_speaks():
    book, _ = make()
    book.on_sent(create(cid=None))
    assert book.working_orders() == [] and book.statistics()["untracked_sends"] == 1


# ------------------------------------------------------------------ fills

def test_fills_build_the_position_and_commission_leaves_the_balance():
    book, quotes = make()
    book.on_sent(create())
    book.apply(ex("NEW"))
    book.apply(ex("PARTIALLY_FILLED", filled=4000, last=4000, px=1.084, commission=0.09, pid="p-1"))
    book.apply(ex("FILLED", filled=10_000, last=6000, px=1.085, avg=1.0846, commission=0.13, pid="p-1"))
    assert book.net_quantity("EURUSD") == 10_000 and book.net_quantity("USDJPY") == 0
    assert book.position_of("p-1") == ("EURUSD", 10_000) and book.position_ids() == ["p-1"]
    assert book.balance == 10_000 - 0.22
    quote(quotes, 1.0856, 1.0857)  # marked lazily: no event needed
    pos = book.position("EURUSD")
    assert (pos.side, pos.current_price, pos.open_price) == (PositionSide.LONG, 1.0856, 1.0846)
    assert pos.unrealized_pnl == pytest.approx(10.0)
    assert book.equity() == pytest.approx(book.balance + 10.0)
    assert book.order("o-1").commission == D("0.22")
    assert book.working_orders() == []


def test_a_duplicate_exec_id_is_applied_once():
    book, _ = make()
    fill = ex("FILLED", filled=10_000, last=10_000, px=1.084, commission=0.2, pid="p-1")
    assert book.apply(fill)
    before = fingerprint(book)
    assert not book.apply(fill)
    assert fingerprint(book) == before
    assert book.net_quantity("EURUSD") == 10_000
    assert book.statistics()["duplicates"] == 1 and book.statistics()["executions"] == 1


def test_a_flip_closes_one_position_and_opens_the_reported_one():
    book, _ = make()
    book.apply(ex("FILLED", filled=10_000, last=10_000, px=1.0840, pid="p-1"))
    book.apply(ex("FILLED", oid="o-2", cid="c-2", side=Side.SELL, qty=15_000, filled=15_000,
                  last=15_000, px=1.0850, pid="p-2"))
    assert book.net_quantity("EURUSD") == -5000
    assert book.position_of("p-2") == ("EURUSD", -5000) and book.position_of("p-1") is None
    assert book.realized_pnl == pytest.approx(10.0)


def test_a_server_created_close_reduces_the_position():
    book, _ = make()
    book.apply(ex("FILLED", filled=10_000, last=10_000, px=1.084, pid="p-1"))
    book.apply(ex("NEW", oid="o-9", cid=None, side=Side.SELL, qty=4000, pid="p-1",
                  reason=Reason.CLOSE_POSITION))
    book.apply(ex("FILLED", oid="o-9", cid=None, side=Side.SELL, qty=4000, filled=4000,
                  last=4000, px=1.083, pid="p-1", reason=Reason.CLOSE_POSITION))
    assert book.net_quantity("EURUSD") == 6000
    assert book.order("o-9").reason is Reason.CLOSE_POSITION


def test_quotes_and_other_accounts_change_nothing():
    book, _ = make()
    assert not book.apply(Quote(symbol="EURUSD", bid=1.0, ask=1.1, ts=T0))
    assert not book.apply(ex("FILLED", filled=10_000, last=10_000, px=1.084, account="other"))
    assert book.all_orders() == [] and book.net_quantity("EURUSD") == 0
    assert book.statistics()["foreign"] == 1


# ------------------------------------------------------------------ races

def test_fill_after_cancel_request_ends_filled_and_the_cancel_error_is_harmless():
    book, _ = make()
    book.on_sent(create())
    book.apply(ex("NEW"))
    book.on_sent(CancelOrder(account_id="acc", order_id="o-1"))
    order = book.order("o-1")
    assert order.cancel_requested and order.is_working  # still working: it may fill
    book.apply(ex("FILLED", filled=10_000, last=10_000, px=1.084, pid="p-1"))
    assert order.status is OrderState.FILLED and not order.cancel_requested
    assert book.net_quantity("EURUSD") == 10_000
    # the venue answers the cancel: no such working order
    book.apply(err("UNKNOWN_ORDER", oid="o-1", request_type="cancelOrder"))
    assert order.status is OrderState.FILLED and book.net_quantity("EURUSD") == 10_000
    assert book.statistics()["rejections"] == 0


def test_a_cancel_error_before_the_fill_clears_the_request_only():
    book, _ = make()
    book.on_sent(create())
    book.apply(ex("NEW"))
    book.on_sent(CancelOrder(account_id="acc", client_order_id="c-1"))
    assert book.apply(err("UNKNOWN_ORDER", cid="c-1"))  # no request type: inferred
    order = book.order("o-1")
    assert order.status is OrderState.NEW and not order.cancel_requested
    assert book.statistics()["cancel_rejects"] == 1


def test_an_amend_error_clears_the_amend_request():
    book, _ = make()
    book.apply(ex("NEW"))
    book.on_sent(AmendOrder(account_id="acc", order_id="o-1", quantity=20_000))
    assert book.order("o-1").amend_requested
    book.apply(err("NOT_AMENDABLE", oid="o-1"))
    assert not book.order("o-1").amend_requested and book.order("o-1").status is OrderState.NEW


@pytest.mark.parametrize("status", ["PARTIALLY_FILLED", "FILLED"])
def test_fill_before_ack_resolves_the_sent_order(status):
    book, _ = make()
    book.on_sent(create())
    filled = 4000 if status == "PARTIALLY_FILLED" else 10_000
    book.apply(ex(status, filled=filled, last=filled, px=1.084, pid="p-1"))
    order = book.order_by_client_id("c-1")
    assert book.order("o-1") is order and order.status == status
    assert book.net_quantity("EURUSD") == filled
    assert len(book.all_orders()) == 1
    if status == "PARTIALLY_FILLED":
        book.apply(ex("NEW"))  # the late ack moves nothing back
        assert order.status is OrderState.PARTIALLY_FILLED and order.filled_quantity == 4000


def test_amended_crossing_a_fill_keeps_filled_and_the_position():
    book, _ = make()
    book.apply(ex("NEW"))
    book.on_sent(AmendOrder(account_id="acc", order_id="o-1", quantity=8000))
    book.apply(ex("PARTIALLY_FILLED", qty=8000, filled=6000, last=6000, px=1.084, pid="p-1"))
    book.apply(ex("AMENDED", qty=8000, filled=0))
    order = book.order("o-1")
    assert (order.status, order.filled_quantity, order.remaining_quantity) == (OrderState.AMENDED, 6000, 2000)
    assert book.net_quantity("EURUSD") == 6000


@pytest.mark.parametrize("order_of_arrival", ["error-first", "execution-first"])
def test_error_and_rejected_execution_are_one_rejection(order_of_arrival):
    book, _ = make()
    book.on_sent(create())
    events = [err("INSUFFICIENT_MARGIN", cid="c-1", request_type="createOrder"),
              ex("REJECTED", reason=Reason.INSUFFICIENT_MARGIN)]
    if order_of_arrival == "execution-first":
        events.reverse()
    for e in events:
        book.apply(e)
    order = book.order_by_client_id("c-1")
    assert order.status is OrderState.REJECTED and order.reason is Reason.INSUFFICIENT_MARGIN
    assert book.working_orders() == [] and book.statistics()["rejections"] == 1
    assert book.statistics()["rejections_by_reason"] == {"INSUFFICIENT_MARGIN": 1}


def test_an_error_without_request_type_on_a_sent_order_is_its_rejection():
    book, _ = make()
    book.on_sent(create())
    book.apply(err("RATE_LIMITED", cid="c-1"))
    assert book.order_by_client_id("c-1").status is OrderState.REJECTED


def test_a_rejected_client_order_id_may_be_used_again():
    book, _ = make()
    book.on_sent(create())
    book.apply(err("INVALID_ORDER", cid="c-1"))
    book.on_sent(create())
    fresh = book.order_by_client_id("c-1")
    assert fresh.status is OrderState.PENDING_NEW and len(book.all_orders()) == 2


def test_duplicate_client_order_id_on_a_resend_is_not_a_rejection():
    book, _ = make()
    book.on_sent(create())
    book.apply(err("DUPLICATE_CLIENT_ORDER_ID", cid="c-1"))
    assert book.order_by_client_id("c-1").status is OrderState.PENDING_NEW
    assert book.needs_reconcile and book.statistics()["rejections"] == 0


def test_an_illegal_move_raises_books_nothing_and_asks_for_reconciliation():
    book, _ = make()
    book.apply(ex("CANCELLED", reason=Reason.CLIENT))
    late_fill = ex("FILLED", filled=10_000, last=10_000, px=1.084, pid="p-1")
    with pytest.raises(IllegalTransition):
        book.apply(late_fill)
    assert book.net_quantity("EURUSD") == 0 and book.needs_reconcile
    with pytest.raises(IllegalTransition):  # not recorded as seen either
        book.apply(late_fill)


# --------------------------------------------------------- reconciliation

def snapshot(balance, *positions):
    return Portfolio(account_id="acc", currency="USD", balance=balance, positions=positions, ts=T0)


def pos(pid, qty, price, side=PositionSide.LONG, symbol="EURUSD", sl=None):
    return Position(position_id=pid, symbol=symbol, side=side, quantity=qty, open_price=price,
                    current_price=price, unrealized_pnl=0.0, stop_loss=sl, take_profit=None,
                    opened_at=T0)


def test_a_matching_snapshot_finds_nothing_but_adopts_stop_levels():
    book, _ = make()
    book.apply(ex("FILLED", filled=10_000, last=10_000, px=1.084, commission=0.2, pid="p-1"))
    assert book.reconcile_portfolio(snapshot(9999.8, pos("p-1", 10_000, 1.084, sl=1.08))) == []
    assert book.position("EURUSD").stop_loss == 1.08


def test_the_snapshot_replaces_balance_and_positions_and_says_what_differed():
    book, quotes = make()
    quote(quotes, 149.99, 150.01, symbol="USDJPY")
    book.apply(ex("FILLED", filled=10_000, last=10_000, px=1.084, pid="p-1"))
    book.apply(ex("FILLED", oid="o-2", cid="c-2", symbol="USDJPY", price=150.0, filled=10_000,
                  last=10_000, px=150.0, pid="p-2"))
    diffs = book.reconcile_portfolio(snapshot(
        10_050.0, pos("p-1", 20_000, 1.085),
        pos("p-3", 5000, 1.27, PositionSide.SHORT, symbol="GBPUSD")))
    assert len(diffs) == 4 and any("balance" in d for d in diffs)
    assert any(d.startswith("USDJPY") and "not on the server" in d for d in diffs)
    assert book.balance == 10_050
    assert book.net_quantity("EURUSD") == 20_000 and book.position("EURUSD").open_price == 1.085
    assert book.net_quantity("USDJPY") == 0 and book.net_quantity("GBPUSD") == -5000
    assert book.differences == diffs and book.statistics()["portfolio_differences"] == 4


def test_portfolio_of_another_account_is_ignored():
    book, _ = make()
    other = Portfolio(account_id="x", currency="USD", balance=1.0, positions=(), ts=T0)
    assert book.reconcile_portfolio(other) == [] and book.balance == 10_000


def history(*orders):
    return OrderHistory(account_id="acc", orders=orders)


def test_history_resolves_an_order_in_flight_and_books_its_missed_fills_once():
    book, _ = make()
    book.on_sent(create())
    part = ex("PARTIALLY_FILLED", filled=6000, last=2000, px=1.085, avg=1.084, commission=0.13, pid="p-1")
    diffs = book.reconcile_orders(history(part))
    order = book.order_by_client_id("c-1")
    assert book.order("o-1") is order and order.status is OrderState.PARTIALLY_FILLED
    assert any("PENDING_NEW -> PARTIALLY_FILLED" in d for d in diffs)
    assert book.net_quantity("EURUSD") == 6000 and book.position("EURUSD").open_price == 1.084
    assert book.ledger.balance == D("9999.87") and order.commission == D("0.13")
    # a live event of one of those fills, arriving late, is not booked again
    book.apply(ex("PARTIALLY_FILLED", filled=4000, last=4000, px=1.084, commission=0.09, pid="p-1"))
    assert book.net_quantity("EURUSD") == 6000 and book.ledger.balance == D("9999.87")
    assert order.commission == D("0.13") and book.statistics()["fills_clipped"] == 1
    # the next one is new
    book.apply(ex("FILLED", filled=10_000, last=4000, px=1.086, commission=0.09, pid="p-1"))
    assert book.net_quantity("EURUSD") == 10_000 and order.status is OrderState.FILLED


def test_history_books_only_what_was_missed_at_the_derived_price():
    book, _ = make()
    book.apply(ex("NEW"))
    book.apply(ex("PARTIALLY_FILLED", filled=4000, last=4000, px=1.084, commission=0.09, pid="p-1"))
    book.reconcile_orders(history(
        ex("FILLED", filled=10_000, last=6000, px=1.085, avg=1.0846, commission=0.22, pid="p-1")))
    assert book.net_quantity("EURUSD") == 10_000
    missed = book.ledger.deals[-1]
    assert (missed.quantity, missed.price, missed.commission) == (6000, D("1.085"), D("0.13"))
    assert book.order("o-1").commission == D("0.22")


def test_history_adopts_unknown_orders_without_booking_them():
    book, _ = make()
    diffs = book.reconcile_orders(history(
        ex("FILLED", oid="o-7", cid="other", filled=10_000, last=10_000, px=1.084, pid="p-1"),
        ex("NEW", oid="o-8", cid="other-2")))
    assert book.net_quantity("EURUSD") == 0  # those fills come with the portfolio snapshot
    assert book.order("o-7").status is OrderState.FILLED
    assert [o.order_id for o in book.working_orders()] == ["o-8"] and len(diffs) == 1


def test_history_takes_the_venues_word_over_an_impossible_local_state():
    book, _ = make()
    book.apply(ex("CANCELLED", reason=Reason.CLIENT))
    diffs = book.reconcile_orders(history(ex("FILLED", filled=10_000, last=10_000, px=1.084, pid="p-1")))
    assert book.order("o-1").status is OrderState.FILLED and "adopted the venue's" in diffs[0]
    assert book.net_quantity("EURUSD") == 10_000


@pytest.mark.parametrize("complete", [False, True])
def test_an_order_in_flight_missing_from_history(complete):
    book, _ = make()
    book.on_sent(create())
    book.needs_reconcile = True
    diffs = book.reconcile_orders(history(), complete=complete)
    status = book.order_by_client_id("c-1").status
    assert status is (OrderState.REJECTED if complete else OrderState.PENDING_NEW)
    assert len(diffs) == 1 and not book.needs_reconcile


# ------------------------------------------------------------------ reads

def test_the_view_reads_but_cannot_write():
    book, quotes = make()
    view = book.view()
    assert isinstance(view, BookView) and view is book.view()
    for name in ("instruments", "quote", "net_quantity", "working_orders", "position_of",
                 "position_ids", "rate", "equity", "order", "order_by_client_id", "position",
                 "balance", "realized_pnl", "unrealized", "margin", "statistics"):
        assert hasattr(view, name), name
    for name in ("apply", "on_sent", "reconcile_portfolio", "reconcile_orders", "ledger"):
        assert not hasattr(view, name), name
    with pytest.raises(AttributeError):
        view.extra = 1
    book.apply(ex("FILLED", filled=10_000, last=10_000, px=1.084, pid="p-1"))
    quote(quotes, 1.085, 1.0851)
    assert view.net_quantity("EURUSD") == 10_000 and view.quote("EURUSD").bid == 1.085
    assert view.equity() == pytest.approx(10_010.0)
    assert view.margin() == pytest.approx(10_000 * 1.085 / 30)


def test_rate_converts_through_the_linking_pair():
    book, quotes = make()
    quote(quotes, 149.9, 150.1, symbol="USDJPY")
    assert book.rate("EURUSD") == 1.0
    assert book.rate("USDJPY") == pytest.approx(1 / 150.0)
