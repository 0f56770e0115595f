"""The book under random order lives, delivered with the real-world races.

A tiny venue model in the test makes consistent events (acks, fills,
amendments, cancels, rejections by ``error`` and/or REJECTED execution) in
venue order, one queue per order. Delivery then takes them in order, or with
the races the book must survive: a fill overtaking the NEW ack or an
AMENDED, an ack that never arrives before a fill, a fill winning against a
cancel request, and any event delivered again. After every step the book's
invariants must hold.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.book import Book
from engine.enums import ErrorCode, OrderStatus, OrderType, Reason, Side
from engine.events import Error, Execution, Quote
from engine.instruments import Instrument, to_cents
from engine.intents import CancelOrder, CreateOrder
from engine.orders import OrderState

T0 = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
SYMBOLS = ("EURUSD", "GBPUSD")
INSTRUMENTS = {
    "EURUSD": Instrument("EURUSD", "USD", leverage=30, base_currency="EUR"),
    "GBPUSD": Instrument("GBPUSD", "USD", leverage=30, base_currency="GBP"),
}
PRICES = (1.0838, 1.0840, 1.0843, 1.0851)
START = D(10_000)
WORKING = ("NEW", "PARTIALLY_FILLED", "AMENDED")
MAX_ORDERS = 6


@dataclass
class VenueOrder:
    """The venue's side of one order (quantities in whole units)."""

    cid: str
    symbol: str
    side: Side
    qty: int
    price: float
    oid: str | None = None
    status: str = "UNACKED"
    filled: int = 0
    value: D = D(0)
    cancel_pending: bool = False
    queue: list = field(default_factory=list)  # events made, not yet delivered


class BookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.quotes: dict[str, Quote] = {}
        self.book = Book("acc", "USD", START, INSTRUMENTS, self.quotes)
        self.orders: list[VenueOrder] = []
        self.ids = itertools.count(1)
        self.now = T0
        self.venue_net = dict.fromkeys(SYMBOLS, 0)  # venue order, for positionIds
        self.venue_pid: dict[str, str | None] = dict.fromkeys(SYMBOLS)
        self.delivered: list = []  # every event the book took, for redelivery
        self.fill_net = dict.fromkeys(SYMBOLS, 0)  # signed fills delivered
        self.fill_commission = D(0)
        self.unique_executions = 0
        self.redeliveries = 0
        self.max_filled: dict[int, float] = {}

    # -------------------------------------------------------------- helpers

    def _tick(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def _exec(self, m: VenueOrder, status: str, *, last=None, px=None, commission=0.0,
              reason=None) -> Execution:
        return Execution(
            account_id="acc", order_id=m.oid, client_order_id=m.cid,
            exec_id=f"x-{next(self.ids)}", symbol=m.symbol, side=m.side, type=OrderType.LIMIT,
            status=OrderStatus(status), quantity=float(m.qty), filled_quantity=float(m.filled),
            remaining_quantity=float(m.qty - m.filled), price=m.price, stop_price=None,
            last_quantity=float(last) if last else None, last_price=px,
            average_price=float(m.value / m.filled) if m.filled else None,
            commission=commission, position_id=self.venue_pid[m.symbol] if m.filled else None,
            reason=reason, ts=self._tick(),
        )

    def _pick(self, i: int, ok) -> VenueOrder | None:
        eligible = [m for m in self.orders if ok(m)]
        return eligible[i % len(eligible)] if eligible else None

    def _deliver(self, e) -> None:
        applied = self.book.apply(e)
        self.delivered.append(e)
        if type(e) is Execution:
            assert applied, "a first delivery of an execution must apply"
            self.unique_executions += 1
            if e.last_quantity:
                self.fill_net[e.symbol] += e.side.sign * int(e.last_quantity)
                self.fill_commission += D(repr(e.commission))

    def _fingerprint(self):
        book = self.book
        stats = {k: v for k, v in book.statistics().items() if k not in ("duplicates", "errors")}
        return (
            [(o.order_id, o.client_order_id, o.status, o.quantity, o.filled_quantity,
              o.remaining_quantity, o.price, o.average_price, o.commission, o.cancel_requested,
              o.updated_at) for o in book.all_orders()],
            {s: (p.position_id, p.side, p.quantity, p.open_price)
             for s, p in book.ledger.positions.items()},
            book.ledger.balance, book.ledger.realized_pnl, len(book.ledger.deals), stats,
        )

    # ---------------------------------------------------------- the client

    @precondition(lambda self: len(self.orders) < MAX_ORDERS)
    @rule(symbol=st.sampled_from(SYMBOLS), side=st.sampled_from(Side), lots=st.integers(1, 5),
          price=st.sampled_from(PRICES))
    def send(self, symbol, side, lots, price):
        m = VenueOrder(cid=f"c-{next(self.ids)}", symbol=symbol, side=side, qty=lots * 1000,
                       price=price)
        self.orders.append(m)
        self.book.on_sent(CreateOrder(account_id="acc", symbol=symbol, side=side,
                                      quantity=float(m.qty), type=OrderType.LIMIT, price=price,
                                      client_order_id=m.cid))
        assert self.book.order_by_client_id(m.cid).status is OrderState.PENDING_NEW

    @rule(i=st.integers(0, 50), by_cid=st.booleans())
    def request_cancel(self, i, by_cid):
        m = self._pick(i, lambda m: not m.cancel_pending and m.status in ("UNACKED", *WORKING))
        if m is None:
            return
        known = self.book.order_by_client_id(m.cid)
        oid = None if by_cid or known.order_id is None else known.order_id
        self.book.on_sent(CancelOrder(account_id="acc", order_id=oid,
                                      client_order_id=m.cid if oid is None else None))
        m.cancel_pending = True

    @rule(symbol=st.sampled_from(SYMBOLS), bid=st.sampled_from(PRICES))
    def quote(self, symbol, bid):
        self.quotes[symbol] = Quote(symbol=symbol, bid=bid, ask=bid + 0.0002, ts=self.now)

    # ----------------------------------------------------------- the venue

    @rule(i=st.integers(0, 50))
    def venue_ack(self, i):
        m = self._pick(i, lambda m: m.status == "UNACKED")
        if m is None:
            return
        m.oid, m.status = f"o-{next(self.ids)}", "NEW"
        m.queue.append(self._exec(m, "NEW"))

    @rule(i=st.integers(0, 50), how=st.sampled_from(["error", "execution", "both", "both-reversed"]),
          code=st.sampled_from(["INVALID_ORDER", "INSUFFICIENT_MARGIN", "RATE_LIMITED"]),
          typed=st.booleans())
    def venue_reject(self, i, how, code, typed):
        m = self._pick(i, lambda m: m.status == "UNACKED")
        if m is None:
            return
        if not typed and code == "RATE_LIMITED":
            code = "INVALID_ORDER"  # untyped, only a createOrder code says what it answers
        m.oid, m.status = f"o-{next(self.ids)}", "REJECTED"
        events = []
        if how != "execution":
            events.append(Error(code=ErrorCode(code), message="no", client_order_id=m.cid,
                                request_type="createOrder" if typed else None))
        if how != "error":
            events.append(self._exec(m, "REJECTED", reason=Reason(code)))
        if how == "both-reversed":
            events.reverse()
        m.queue.extend(events)

    @rule(i=st.integers(0, 50), lots=st.integers(1, 5), whole=st.booleans(),
          px=st.sampled_from(PRICES))
    def venue_fill(self, i, lots, whole, px):
        m = self._pick(i, lambda m: m.status in WORKING)
        if m is None:
            return
        q = m.qty - m.filled if whole else min(lots * 1000, m.qty - m.filled)
        before = self.venue_net[m.symbol]
        after = before + m.side.sign * q
        if before == 0 or (before > 0) != (after > 0):
            self.venue_pid[m.symbol] = f"p-{next(self.ids)}" if after else self.venue_pid[m.symbol]
        self.venue_net[m.symbol] = after
        m.filled += q
        m.value += D(q) * D(repr(px))
        m.status = "FILLED" if m.filled == m.qty else "PARTIALLY_FILLED"
        commission = float(to_cents(D(q) * D(repr(px)) * 20 / 1_000_000))
        m.queue.append(self._exec(m, m.status, last=q, px=px, commission=commission))

    @rule(i=st.integers(0, 50), lots=st.integers(1, 6))
    def venue_amend(self, i, lots):
        m = self._pick(i, lambda m: m.status in WORKING and lots * 1000 > m.filled)
        if m is None:
            return
        m.qty, m.status = lots * 1000, "AMENDED"
        m.queue.append(self._exec(m, "AMENDED"))

    @rule(i=st.integers(0, 50), expire=st.booleans())
    def venue_end(self, i, expire):
        m = self._pick(i, lambda m: m.status in WORKING)
        if m is None:
            return
        m.status = "EXPIRED" if expire else "CANCELLED"
        m.queue.append(self._exec(m, m.status, reason=Reason.DAY if expire else Reason.IOC))

    @rule(i=st.integers(0, 50), typed=st.booleans())
    def venue_answer_cancel(self, i, typed):
        """The cancel request arrives: it cancels a working order, or finds
        none (a fill won the race, or the order is not there yet)."""
        m = self._pick(i, lambda m: m.cancel_pending)
        if m is None:
            return
        m.cancel_pending = False
        if m.status in WORKING:
            m.status = "CANCELLED"
            m.queue.append(self._exec(m, "CANCELLED", reason=Reason.CLIENT))
        else:
            if m.status == "FILLED":
                event("race: fill won against a cancel request")
            m.queue.append(Error(code=ErrorCode.UNKNOWN_ORDER, message="no such working order",
                                 request_type="cancelOrder" if typed else None,
                                 client_order_id=m.cid, order_id=m.oid))

    # ------------------------------------------------------------ delivery

    @rule(i=st.integers(0, 50))
    def deliver(self, i):
        m = self._pick(i, lambda m: m.queue)
        if m is not None:
            self._deliver(m.queue.pop(0))

    @rule(i=st.integers(0, 50))
    def deliver_fill_first(self, i):
        """A fill overtakes the ack or an AMENDED made before it."""
        def ok(m):
            return (len(m.queue) >= 2 and type(m.queue[0]) is Execution
                    and m.queue[0].status in (OrderStatus.NEW, OrderStatus.AMENDED)
                    and type(m.queue[1]) is Execution
                    and m.queue[1].status is OrderStatus.PARTIALLY_FILLED)
        m = self._pick(i, ok)
        if m is not None:
            event(f"race: fill before {m.queue[0].status}")
            self._deliver(m.queue.pop(1))

    @rule(i=st.integers(0, 50))
    def lose_ack(self, i):
        """The ack is never seen: the first event for the order is a fill."""
        def ok(m):
            return (len(m.queue) >= 2 and type(m.queue[0]) is Execution
                    and m.queue[0].status is OrderStatus.NEW and type(m.queue[1]) is Execution
                    and m.queue[1].last_quantity)
        m = self._pick(i, ok)
        if m is not None:
            event("race: ack lost, a fill comes first")
            m.queue.pop(0)

    @precondition(lambda self: self.delivered)
    @rule(i=st.integers(0, 500))
    def redeliver(self, i):
        again = self.delivered[i % len(self.delivered)]
        before = self._fingerprint()
        applied = self.book.apply(again)
        assert self._fingerprint() == before, "a redelivered event changed the book"
        if type(again) is Execution:
            assert not applied
            self.redeliveries += 1

    # ---------------------------------------------------------- invariants

    @invariant()
    def net_position_is_the_sum_of_signed_fills(self):
        for symbol in SYMBOLS:
            assert self.book.net_quantity(symbol) == self.fill_net[symbol]

    @invariant()
    def each_execution_applied_once_and_commission_booked_once(self):
        stats = self.book.statistics()
        assert stats["executions"] == self.unique_executions
        assert stats["duplicates"] == self.redeliveries
        led = self.book.ledger
        assert led.commission_paid == self.fill_commission
        assert led.balance == START + led.realized_pnl - led.commission_paid

    @invariant()
    def order_quantities_are_consistent_and_filled_never_decreases(self):
        for o in self.book.all_orders():
            assert 0 <= o.filled_quantity <= o.quantity
            assert o.remaining_quantity == o.quantity - o.filled_quantity
            assert o.filled_quantity >= self.max_filled.get(id(o), 0)
            self.max_filled[id(o)] = o.filled_quantity

    @invariant()
    def equity_is_balance_plus_unrealized(self):
        led = self.book.ledger
        assert led.equity() == led.balance + led.unrealized()
        assert abs(self.book.equity() - (self.book.balance + self.book.unrealized())) < 1e-6

    @invariant()
    def rejections_counted_once(self):
        rejected = sum(o.status is OrderState.REJECTED for o in self.book.all_orders())
        assert self.book.statistics()["rejections"] == rejected

    @invariant()
    def working_orders_are_the_unfinished_ones(self):
        working = self.book.working_orders()
        assert working == [o for o in self.book.all_orders() if not o.is_final]

    @invariant()
    def a_settled_order_agrees_with_the_venue(self):
        """Once all its events are delivered, the book says what the venue says."""
        for m in self.orders:
            if m.queue:
                continue
            o = self.book.order_by_client_id(m.cid)
            if m.status == "UNACKED":
                assert o.status is OrderState.PENDING_NEW
                continue
            assert o.order_id in (None, m.oid) if m.status == "REJECTED" else o.order_id == m.oid
            assert o.filled_quantity == m.filled
            if m.status in WORKING:
                assert o.is_working and o.quantity == m.qty
            else:
                assert o.status == m.status
            if not m.cancel_pending:
                assert not o.cancel_requested


BookMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
TestBookStateful = BookMachine.TestCase
