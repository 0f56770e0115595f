"""The book under random order lives, delivered with the real-world races.

A tiny venue model in the test makes consistent events (acks, fills,
amendments, cancels, rejections by ``error`` and/or REJECTED execution) in
venue order, one queue per order, and books its fills in its own ``Ledger``
(as the simulator does). Delivery then takes them in order, or with the
races the book must survive: a fill overtaking the NEW ack or an AMENDED, an
ack never seen before a fill, a fill winning against a cancel request, any
execution delivered again, and a reconnect that loses whatever was in
flight and reconciles from the venue's order history and portfolio. After
every step the book's invariants must hold.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from engine.book import Book
from engine.enums import ErrorCode, OrderStatus, OrderType, Reason, Side
from engine.events import Error, Execution, OrderHistory, Quote
from engine.instruments import Instrument, to_cents
from engine.intents import CancelOrder, CreateOrder
from engine.ledger import Ledger
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


@dataclass
class VenueOrder:
    """The venue's side of one order (quantities in whole units)."""

    cid: str
    symbol: str
    side: Side
    qty: int
    price: float
    oid: str | None = None
    status: str = "UNACKED"  # or a wire status, or LOST (never reached the venue)
    filled: int = 0
    value: D = D(0)
    commission: D = D(0)
    position_id: str | None = None
    last: Execution | None = None  # the latest event made
    cancel_pending: bool = False
    queue: list = field(default_factory=list)  # events made, not yet delivered


# What a rule may act on (its precondition and its pick).
def _unacked(m): return m.status == "UNACKED"
def _working(m): return m.status in WORKING
def _open(m): return m.status == "UNACKED" or m.status in WORKING
def _cancellable(m): return _open(m) and not m.cancel_pending
def _cancel_pending(m): return m.cancel_pending
def _queued(m): return bool(m.queue)


def _fill_may_overtake(m: VenueOrder) -> bool:
    q = m.queue
    return (len(q) >= 2 and type(q[0]) is Execution and type(q[1]) is Execution
            and q[0].status in (OrderStatus.NEW, OrderStatus.AMENDED)
            and q[1].status is OrderStatus.PARTIALLY_FILLED)


def _ack_may_be_lost(m: VenueOrder) -> bool:
    q = m.queue
    return (len(q) >= 2 and type(q[0]) is Execution and type(q[1]) is Execution
            and q[0].status is OrderStatus.NEW and bool(q[1].last_quantity))


_RACES = {"in order": _queued, "fill first": _fill_may_overtake, "lose ack": _ack_may_be_lost}


def some(pred):
    return precondition(lambda self: any(pred(m) for m in self.orders))


I = st.integers(0, 50)
"""Which of the eligible orders a rule acts on (modulo their number)."""


class BookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.quotes: dict[str, Quote] = {}
        self.book = Book("acc", "USD", START, INSTRUMENTS, self.quotes)
        self.venue = Ledger("acc", "USD", START, INSTRUMENTS, self.quotes)
        self.orders: list[VenueOrder] = []
        self.ids = itertools.count(1)
        self.now = T0
        self.delivered: list[Execution] = []  # for redelivery
        self.fill_net = dict.fromkeys(SYMBOLS, 0)  # signed fills the book has been told of
        self.fill_commission = D(0)
        self.balance_offset = D(0)  # what adopting the venue's balance moved it by
        self.unique_executions = 0
        self.redeliveries = 0
        self.max_filled: dict[int, float] = {}

    # -------------------------------------------------------------- helpers

    def _tick(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def _exec(self, m: VenueOrder, status: str, *, last=None, px=None, commission=D(0),
              reason=None) -> Execution:
        m.last = Execution(
            account_id="acc", order_id=m.oid, client_order_id=m.cid,
            exec_id=f"x-{next(self.ids)}", symbol=m.symbol, side=m.side, type=OrderType.LIMIT,
            status=OrderStatus(status), quantity=float(m.qty), filled_quantity=float(m.filled),
            remaining_quantity=float(m.qty - m.filled), price=m.price, stop_price=None,
            last_quantity=float(last) if last else None, last_price=px,
            average_price=float(m.value / m.filled) if m.filled else None,
            commission=float(commission), position_id=m.position_id, reason=reason,
            ts=self._tick(),
        )
        return m.last

    def _pick(self, i: int, ok) -> VenueOrder:
        eligible = [m for m in self.orders if ok(m)]
        return eligible[i % len(eligible)]

    def _deliver(self, e) -> None:
        applied = self.book.apply(e)
        if type(e) is Execution:  # errors carry no id: never redelivered (PROTOCOL 5.1)
            self.delivered.append(e)
            assert applied, "a first delivery of an execution must apply"
            self.unique_executions += 1
            if e.last_quantity:
                self.fill_net[e.symbol] += e.side.sign * int(e.last_quantity)
                self.fill_commission += D(repr(e.commission))

    def _fingerprint(self):
        book = self.book
        stats = {k: v for k, v in book.statistics().items() if k != "duplicates"}
        return (
            [(o.order_id, o.client_order_id, o.status, o.quantity, o.filled_quantity,
              o.remaining_quantity, o.price, o.average_price, o.commission, o.cancel_requested,
              o.updated_at) for o in book.all_orders()],
            _positions(book.ledger), book.ledger.balance, book.ledger.realized_pnl,
            len(book.ledger.deals), stats,
        )

    # ---------------------------------------------------------- the client

    _SEND = dict(symbol=st.sampled_from(SYMBOLS), side=st.sampled_from(Side),
                 lots=st.integers(1, 5), price=st.sampled_from(PRICES),
                 venue=st.sampled_from(["ack+fill", "ack", "later"]))
    # Choices list the race first: hypothesis favours early elements, and a
    # race that does not fit falls back to the plain path.

    @initialize(**_SEND)
    def first_order(self, **kw):
        self.send(**kw)

    @rule(**_SEND)
    def send(self, symbol, side, lots, price, venue):
        """Send a createOrder; the venue may take it at once (a marketable
        order is acked and part filled together)."""
        m = VenueOrder(cid=f"c-{next(self.ids)}", symbol=symbol, side=side, qty=lots * 1000,
                       price=price)
        self.orders.append(m)
        self.book.on_sent(CreateOrder(account_id="acc", symbol=symbol, side=side,
                                      quantity=float(m.qty), type=OrderType.LIMIT, price=price,
                                      client_order_id=m.cid))
        assert self.book.order_by_client_id(m.cid).status is OrderState.PENDING_NEW
        if venue != "later":
            self._ack(m)
        if venue == "ack+fill":
            self._fill(m, 1000, price)

    @some(_cancellable)
    @rule(i=I, by_cid=st.booleans(), venue=st.sampled_from(["fill wins", "answers", "later"]),
          typed=st.booleans())
    def request_cancel(self, i, by_cid, venue, typed):
        """Send a cancelOrder; the venue may fill the order before it arrives."""
        m = self._pick(i, _cancellable)
        known = self.book.order_by_client_id(m.cid)
        oid = None if by_cid or known.order_id is None else known.order_id
        self.book.on_sent(CancelOrder(account_id="acc", order_id=oid,
                                      client_order_id=m.cid if oid is None else None))
        m.cancel_pending = True
        if venue == "fill wins":
            if m.status == "UNACKED":
                self._ack(m)
            self._fill(m, m.qty - m.filled, m.price)
        if venue != "later":
            self._answer_cancel(m, typed)

    @rule(symbol=st.sampled_from(SYMBOLS), bid=st.sampled_from(PRICES))
    def quote(self, symbol, bid):
        self.quotes[symbol] = Quote(symbol=symbol, bid=bid, ask=bid + 0.0002, ts=self.now)

    # ----------------------------------------------------------- the venue

    @some(_unacked)
    @rule(i=I)
    def venue_ack(self, i):
        self._ack(self._pick(i, _unacked))

    def _ack(self, m: VenueOrder) -> None:
        m.oid, m.status = f"o-{next(self.ids)}", "NEW"
        m.queue.append(self._exec(m, "NEW"))

    @some(_unacked)
    @rule(i=I, how=st.sampled_from(["both", "both-reversed", "error", "execution"]),
          code=st.sampled_from(["INVALID_ORDER", "INSUFFICIENT_MARGIN", "RATE_LIMITED"]),
          typed=st.booleans())
    def venue_reject(self, i, how, code, typed):
        m = self._pick(i, _unacked)
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

    @some(_open)
    @rule(i=I, lots=st.integers(1, 5), whole=st.sampled_from([False, True, False]),
          px=st.sampled_from(PRICES))
    def venue_fill(self, i, lots, whole, px):
        """A fill; an order not yet acked is acked first (NEW comes before fills)."""
        m = self._pick(i, _open)
        if m.status == "UNACKED":
            self._ack(m)
        self._fill(m, m.qty - m.filled if whole else min(lots * 1000, m.qty - m.filled), px)

    def _fill(self, m: VenueOrder, q: int, px: float) -> None:
        price = D(repr(px))
        commission = to_cents(q * price * 20 / 1_000_000)
        deals = self.venue.apply_fill(
            order_id=m.oid, symbol=m.symbol, side=m.side, quantity=D(q), price=price,
            ts=self.now, new_position_id=lambda: f"p-{next(self.ids)}",
            new_deal_id=lambda: f"d-{next(self.ids)}", commission=commission,
        )
        m.position_id = deals[-1].position_id
        m.filled += q
        m.value += q * price
        m.commission += commission
        m.status = "FILLED" if m.filled == m.qty else "PARTIALLY_FILLED"
        m.queue.append(self._exec(m, m.status, last=q, px=px, commission=commission))

    @some(_working)
    @rule(i=I, lots=st.integers(1, 6), then_fill=st.sampled_from([True, False]))
    def venue_amend(self, i, lots, then_fill):
        """An amendment, maybe followed at once by a fill (it became marketable)."""
        m = self._pick(i, _working)
        if lots * 1000 <= m.filled:
            return  # NOT_AMENDABLE: nothing happens at the venue
        m.qty, m.status = lots * 1000, "AMENDED"
        m.queue.append(self._exec(m, "AMENDED"))
        if then_fill and m.qty - m.filled > 1000:
            self._fill(m, 1000, m.price)

    @some(_working)
    @rule(i=I, expire=st.booleans())
    def venue_end(self, i, expire):
        m = self._pick(i, _working)
        m.status = "EXPIRED" if expire else "CANCELLED"
        m.queue.append(self._exec(m, m.status, reason=Reason.DAY if expire else Reason.IOC))

    @some(_cancel_pending)
    @rule(i=I, typed=st.booleans())
    def venue_answer_cancel(self, i, typed):
        self._answer_cancel(self._pick(i, _cancel_pending), typed)

    def _answer_cancel(self, m: VenueOrder, typed: bool) -> None:
        """The cancel request arrives: it cancels a working order, or finds
        none (a fill won the race, or the order was rejected). The venue took
        the createOrder first: it was sent first."""
        m.cancel_pending = False
        if m.status == "UNACKED":
            self._ack(m)
        if m.status in WORKING:
            m.status = "CANCELLED"
            m.queue.append(self._exec(m, "CANCELLED", reason=Reason.CLIENT))
            return
        if m.status == "FILLED":
            event("race: fill won against a cancel request")
        m.queue.append(Error(code=ErrorCode.UNKNOWN_ORDER, message="no such working order",
                             request_type="cancelOrder" if typed else None,
                             client_order_id=m.cid, order_id=m.oid))

    # ------------------------------------------------------------ delivery

    @some(_queued)
    @rule(i=I, how=st.sampled_from(["fill first", "lose ack", "in order"]))
    def deliver(self, i, how):
        """Deliver an order's next event, or race: a fill overtakes the ack or
        an AMENDED made before it, or the ack is never seen before a fill.
        When no queue fits the race asked for, an in-order delivery."""
        race = _RACES[how]
        m = self._pick(i, race if any(race(m) for m in self.orders) else _queued)
        q = m.queue
        if how == "fill first" and race(m):
            event(f"race: fill before {q[0].status}")
            self._deliver(q.pop(1))
        elif how == "lose ack" and race(m):
            event("race: ack lost, a fill comes first")
            q.pop(0)
            self._deliver(q.pop(0))
        else:
            self._deliver(q.pop(0))

    @precondition(lambda self: self.delivered)
    @rule(i=st.integers(0, 500))
    def redeliver(self, i):
        before = self._fingerprint()
        assert not self.book.apply(self.delivered[i % len(self.delivered)])
        assert self._fingerprint() == before, "a redelivered execution changed the book"
        self.redeliveries += 1

    @precondition(lambda self: any(m.queue or m.cancel_pending or m.status == "UNACKED"
                                   for m in self.orders))
    @rule()
    def reconnect(self):
        """The connection drops: undelivered events, the cancels and the
        creates in flight are lost. The book reconciles from the venue's
        order history (which lists no rejected createOrder) and portfolio."""
        event("reconnect")
        for m in self.orders:
            m.queue.clear()
            m.cancel_pending = False
            if m.status == "UNACKED":
                m.status = "LOST"
        history = OrderHistory(account_id="acc", orders=tuple(
            self._history_entry(m) for m in self.orders if m.status not in ("LOST", "REJECTED")))
        book = self.book
        book.reconcile_orders(history, complete=True)
        book.reconcile_portfolio(self.venue.portfolio(self.now))
        assert _positions(book.ledger) == _positions(self.venue)
        assert book.ledger.balance == self.venue.balance
        assert book.ledger.commission_paid == self.venue.commission_paid
        self.fill_net = {s: int(book.net_quantity(s)) for s in SYMBOLS}
        self.fill_commission = self.venue.commission_paid
        led = book.ledger
        self.balance_offset = led.balance - (START + led.realized_pnl - led.commission_paid)

    def _history_entry(self, m: VenueOrder) -> Execution:
        """The order in its latest state, as ``orderHistory`` lists it."""
        e = m.last
        last_fill = next((x for x in reversed(self._made(m)) if x.last_quantity), None)
        return Execution(
            account_id="acc", order_id=m.oid, client_order_id=m.cid, exec_id=e.exec_id,
            symbol=m.symbol, side=m.side, type=OrderType.LIMIT, status=e.status,
            quantity=float(m.qty), filled_quantity=float(m.filled),
            remaining_quantity=float(m.qty - m.filled), price=m.price, stop_price=None,
            last_quantity=last_fill.last_quantity if last_fill else None,
            last_price=last_fill.last_price if last_fill else None,
            average_price=e.average_price, commission=float(m.commission),
            position_id=m.position_id, reason=e.reason, ts=e.ts,
        )

    def _made(self, m: VenueOrder) -> list[Execution]:
        return [e for e in self.delivered if e.client_order_id == m.cid] + [
            e for e in m.queue if type(e) is Execution]

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
        assert led.balance == START + led.realized_pnl - led.commission_paid + self.balance_offset

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
        assert self.book.working_orders() == [o for o in self.book.all_orders() if not o.is_final]

    @invariant()
    def a_settled_order_agrees_with_the_venue(self):
        """Once all its events are in, the book says what the venue says."""
        for m in self.orders:
            if m.queue:
                continue
            o = self.book.order_by_client_id(m.cid)
            if m.status == "UNACKED":
                assert o.status is OrderState.PENDING_NEW
                continue
            if m.status in ("LOST", "REJECTED"):
                assert o.status is OrderState.REJECTED and o.filled_quantity == 0
                continue
            assert o.order_id == m.oid and o.filled_quantity == m.filled
            if m.status == "PARTIALLY_FILLED":  # or AMENDED, if that came after the fill
                assert o.status in (OrderState.PARTIALLY_FILLED, OrderState.AMENDED)
            else:
                assert o.status == m.status
            if m.status in WORKING:
                assert o.quantity == m.qty
            if not m.cancel_pending:
                assert not o.cancel_requested


def _positions(ledger: Ledger) -> dict:
    """Open positions as a ``portfolioEvent`` can tell them (floats)."""
    return {s: (p.position_id, p.side, float(p.quantity), float(p.open_price))
            for s, p in ledger.positions.items()}


BookMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestBookStateful = BookMachine.TestCase
