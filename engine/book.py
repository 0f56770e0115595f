"""The client's local order/position book: what the account holds, as we know it.

The kernel feeds it what it sends (``on_sent``) and what the venue says
(``apply``); strategies and the risk gate read it through ``view()``.

* Orders move by ``engine.orders``' table; a sent createOrder is PENDING_NEW
  until the venue's first event for its clientOrderId, so orders in flight
  count. An ``error`` answering a createOrder and a REJECTED execution are
  one rejection; a cancel that loses to a fill leaves a harmless error.
* Money goes through ``engine.ledger.Ledger`` (PROTOCOL 5.3, the same class
  the venue books with): each fill is booked at its ``lastQuantity`` /
  ``lastPrice`` with the event's ``commission``, once per ``execId``, and
  never beyond the ``filledQuantity`` the venue reported for the order (so a
  fill the book already took from a reconciliation is not booked twice).
  Positions are marked lazily from the caller's quote mapping: nothing here
  runs per quote.
* The server is the truth: a ``portfolioEvent`` replaces balance and
  positions, an ``orderHistory`` resolves orders in flight and books the
  fills the book missed; both return the differences they found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from math import copysign

from engine import events, orders
from engine.enums import ErrorCode, PositionSide, Reason
from engine.errors import IllegalTransition
from engine.events import Error, Execution, OrderHistory, Portfolio, Quote
from engine.instruments import Instrument, dec
from engine.intents import AmendOrder, CancelOrder, CreateOrder
from engine.ledger import Ledger, OpenPosition
from engine.orders import Order, OrderState

ZERO = Decimal(0)
# Members as module constants: ``OrderState.REJECTED`` is a metaclass
# attribute lookup (~75 ns), too slow for the per-event path.
_REJECTED = OrderState.REJECTED
_LONG = PositionSide.LONG
_WORKING = orders.WORKING
_FINAL = orders.FINAL
_from_create = Order.from_create  # bound once, not per sent order

_CREATE_CODES = frozenset({
    ErrorCode.INVALID_ORDER, ErrorCode.INSUFFICIENT_MARGIN, ErrorCode.UNKNOWN_SYMBOL,
    ErrorCode.DUPLICATE_CLIENT_ORDER_ID,
})
"""Codes only a createOrder gets (PROTOCOL 5.2)."""
_CANCEL_AMEND_CODES = frozenset({ErrorCode.UNKNOWN_ORDER, ErrorCode.NOT_AMENDABLE})

_STAT_KEYS = (
    "executions", "duplicates", "foreign", "fills", "fills_clipped", "rejections",
    "errors", "cancel_rejects", "amend_rejects", "duplicate_client_order_ids", "resends",
    "untracked_sends", "illegal_transitions", "portfolio_differences", "order_differences",
)


class Book:
    """One account's orders, positions and money as the client knows them.

    Args:
        account_id: the account this book keeps; events of others are ignored.
        currency: the account currency.
        balance: the starting balance (a ``portfolioEvent`` replaces it).
        instruments: symbol -> Instrument.
        quotes: a live mapping symbol -> latest ``Quote``, kept by the caller
            (the kernel); read here only when a mark is asked for.
    """

    def __init__(
        self,
        account_id: str,
        currency: str,
        balance: Decimal | float | int | str,
        instruments: Mapping[str, Instrument],
        quotes: Mapping[str, Quote],
    ) -> None:
        self.account_id = account_id
        self.currency = currency
        self.instruments = instruments
        self._quotes = quotes
        self.ledger = Ledger(account_id, currency, dec(balance), instruments, quotes)
        self.needs_reconcile = False
        """True when the book saw something only the server can settle (an
        event its table forbids, a duplicate clientOrderId on a resend)."""
        self.differences: list[str] = []
        """What the latest reconciliation found."""
        self._by_id: dict[str, Order] = {}
        self._by_cid: dict[str, Order] = {}
        self._all: dict[Order, None] = {}
        self._working: dict[Order, None] = {}
        self._seen: set[str] = set()
        # What the book booked of each order: quantity, and value (sum of
        # quantity * price). Two dicts, not a dict of tuples: no object per fill.
        self._booked_qty: dict[Order, Decimal] = {}
        self._booked_value: dict[Order, Decimal] = {}
        # The fill being booked (the latest one), for the id callbacks the
        # ledger calls back (bound once here: a lambda per fill costs an
        # allocation, and allocations trigger the garbage collector).
        self._fill_ev: Execution | None = None
        self._deal_prefix = ""
        self._deal_count = 0
        self._position_id_cb = self._fill_position_id
        self._deal_id_cb = self._fill_deal_id
        self._local_ids = 0
        self._stats = dict.fromkeys(_STAT_KEYS, 0)
        self._rejections_by_reason: dict[str, int] = {}
        self._handlers: dict[type, Callable[[object], bool]] = {  # besides Execution
            Error: self._on_error,
            Portfolio: self._on_portfolio,
            OrderHistory: self._on_history,
        }
        self._view = BookView(self)

    # ------------------------------------------------------------- outbound

    def on_sent(self, intent, ts: datetime | None = None) -> None:
        """Record an intent the kernel sent: a CreateOrder becomes PENDING_NEW
        (by clientOrderId), a cancel or amend request marks its order."""
        if type(intent) is CreateOrder:  # the one per trade: no dispatch
            if intent.account_id == self.account_id:
                cid = intent.client_order_id
                if cid is not None and cid not in self._by_cid:  # a new one: as _on_create_sent
                    order = _from_create(intent, ts)
                    self._by_cid[cid] = order
                    self._all[order] = None
                    self._working[order] = None
                else:
                    self._on_create_sent(intent, ts)
            return
        if getattr(intent, "account_id", self.account_id) != self.account_id:
            return
        if isinstance(intent, CreateOrder):
            self._on_create_sent(intent, ts)
        elif isinstance(intent, CancelOrder):
            order = self._find(intent.order_id, intent.client_order_id)
            if order is not None and order.is_working:
                order.cancel_requested = True
        elif isinstance(intent, AmendOrder):
            order = self._by_id.get(intent.order_id)
            if order is not None and order.is_working:
                order.amend_requested = True

    def _on_create_sent(self, intent: CreateOrder, ts: datetime | None) -> None:
        cid = intent.client_order_id
        if cid is None:  # nothing to match the venue's answer by
            self._stats["untracked_sends"] += 1
            return
        known = self._by_cid.get(cid)
        if known is not None and not (known.status is _REJECTED and known.order_id is None):
            self._stats["resends"] += 1  # a resend after a reconnect: the same order
            return
        order = Order.from_create(intent, ts)
        self._by_cid[cid] = order
        self._all[order] = None
        self._working[order] = None

    # -------------------------------------------------------------- inbound

    def apply(self, event) -> bool:
        """Take one inbound event. Returns False if it changed nothing: a
        duplicate ``execId``, another account's event, a kind the book
        does not keep (quotes: the caller keeps those).

        Raises:
            IllegalTransition: an execution the lifecycle forbids (nothing is
                applied, and ``needs_reconcile`` is set).
            WireError: an execution that contradicts its order.
        """
        if type(event) is not Execution:
            handler = self._handlers.get(type(event))
            return handler(event) if handler is not None else False
        # An execution, the one per trade: handled here, one call less.
        ev: Execution = event
        stats = self._stats
        if ev.account_id != self.account_id:
            stats["foreign"] += 1
            return False
        exec_id = ev.exec_id
        if exec_id in self._seen:
            stats["duplicates"] += 1
            return False
        order = self._find(ev.order_id, ev.client_order_id)
        if order is None:
            order = Order.from_execution(ev)  # not ours, or a fill before the ack
        was = order.status
        try:
            new = orders.validate(order, ev)
        except IllegalTransition:
            stats["illegal_transitions"] += 1
            self.needs_reconcile = True
            raise
        commission = None
        last = ev.last_quantity
        if last and ev.last_price:
            filled, ev_filled = order.filled_quantity, ev.filled_quantity
            top = ev_filled if ev_filled > filled else filled  # max(filled, ev_filled)
            booked = self._booked_qty.get(order)
            if booked is None and type(last) is float and type(top) is float and 0.0 < last <= top:
                # Nothing booked yet and the fill fits: the capping below
                # would keep dec(last) itself (floats order as their decimals).
                qty = _dec(last)
            else:
                room = dec(top) - (ZERO if booked is None else booked)
                qty = min(dec(last), room)
            if qty > 0:
                commission = _dec(ev.commission)
                self._book_fill(order, ev, qty, _dec(ev.last_price), commission, exec_id)
            else:  # already booked (from a reconciliation): nothing to book
                commission = ZERO
                stats["fills_clipped"] += 1
        orders.apply_valid(order, ev, new, commission=commission)
        self._seen.add(exec_id)
        self._index(order)
        stats["executions"] += 1
        if new is _REJECTED and was is not _REJECTED:
            self._count_rejection(order)
        return True

    def _on_error(self, err: Error) -> bool:
        self._stats["errors"] += 1
        order = self._find(err.order_id, err.client_order_id)
        if order is None:
            return False
        kind = err.request_type
        code = err.code
        if kind is None:  # infer what it answered
            if code in _CREATE_CODES:
                kind = "createOrder"
            elif order.cancel_requested:
                kind = "cancelOrder"
            elif order.amend_requested:
                kind = "amendOrder"
            elif order.is_pending and code not in _CANCEL_AMEND_CODES:
                kind = "createOrder"
        if kind == "createOrder":
            if code is ErrorCode.DUPLICATE_CLIENT_ORDER_ID:
                # a resend of an order the venue already has: not a rejection
                self._stats["duplicate_client_order_ids"] += 1
                if order.is_pending:
                    self.needs_reconcile = True
                return False
            if not order.is_pending:
                return False  # already rejected (one rejection), or accepted
            orders.reject(order, Reason(code.value))
            self._index(order)
            self._count_rejection(order)
            return True
        if kind == "cancelOrder" and order.cancel_requested:
            order.cancel_requested = False  # e.g. a fill won the race: harmless
            self._stats["cancel_rejects"] += 1
            return True
        if kind == "amendOrder" and order.amend_requested:
            order.amend_requested = False
            self._stats["amend_rejects"] += 1
            return True
        return False

    def _on_portfolio(self, snapshot: Portfolio) -> bool:
        self.reconcile_portfolio(snapshot)
        return snapshot.account_id == self.account_id

    def _on_history(self, history: OrderHistory) -> bool:
        self.reconcile_orders(history)
        return history.account_id == self.account_id

    # -------------------------------------------------------------- booking

    def _book_fill(self, order: Order, ev: Execution, qty: Decimal, price: Decimal,
                   commission: Decimal, deal_prefix: str) -> None:
        self._fill_ev, self._deal_prefix, self._deal_count = ev, deal_prefix, 0
        self.ledger.fill(ev.order_id, ev.symbol, ev.side, qty, price, ev.ts,
                         self._position_id_cb, self._deal_id_cb, None, commission)
        booked_qty, booked_value = self._booked_qty, self._booked_value
        booked_qty[order] = booked_qty.get(order, ZERO) + qty
        booked_value[order] = booked_value.get(order, ZERO) + qty * price
        self._stats["fills"] += 1

    def _fill_position_id(self) -> str:
        """The id of a position the fill being booked opens: the venue's, else a local one."""
        return self._fill_ev.position_id or self._local_position_id()

    def _fill_deal_id(self) -> str:
        """Ids of the deals of the fill being booked: its prefix, then ``prefix/2``
        (a flip has two deals)."""
        self._deal_count = n = self._deal_count + 1
        return self._deal_prefix if n == 1 else f"{self._deal_prefix}/{n}"

    def _count_rejection(self, order: Order) -> None:
        self._stats["rejections"] += 1
        reason = str(order.reason) if order.reason is not None else "NONE"
        self._rejections_by_reason[reason] = self._rejections_by_reason.get(reason, 0) + 1

    def _local_position_id(self) -> str:
        self._local_ids += 1
        return f"local-{self._local_ids}"

    # ------------------------------------------------------------ reconcile

    def reconcile_portfolio(self, snapshot: Portfolio) -> list[str]:
        """Adopt the server's balance and open positions; return the differences.

        Stop-loss and take-profit levels are adopted silently: the book learns
        them only from snapshots.
        """
        if snapshot.account_id != self.account_id:
            return []
        led = self.ledger
        diffs: list[str] = []
        balance = dec(snapshot.balance)
        if balance != led.balance:
            diffs.append(f"balance: local {led.balance}, server {balance}")
            led.balance = balance
        server = {p.symbol: p for p in snapshot.positions}
        for symbol, local in list(led.positions.items()):
            if symbol not in server:
                diffs.append(f"{symbol}: local {_describe(local)} is not on the server")
                del led.positions[symbol]
        for symbol, sp in server.items():
            local = led.positions.get(symbol)
            if local is None:
                diffs.append(f"{symbol}: server {_describe_event(sp)} was missing locally")
                led.positions[symbol] = OpenPosition(
                    position_id=sp.position_id, symbol=symbol, side=sp.side,
                    quantity=dec(sp.quantity), open_price=dec(sp.open_price),
                    opened_at=sp.opened_at, stop_loss=sp.stop_loss, take_profit=sp.take_profit,
                )
                continue
            if (local.position_id, local.side, float(local.quantity), float(local.open_price)) != (
                    sp.position_id, sp.side, sp.quantity, sp.open_price):
                diffs.append(f"{symbol}: local {_describe(local)}, server {_describe_event(sp)}")
                local.position_id, local.side = sp.position_id, sp.side
                local.quantity, local.open_price = dec(sp.quantity), dec(sp.open_price)
                if local.quantity > local.max_quantity:
                    local.max_quantity = local.quantity
            local.stop_loss, local.take_profit = sp.stop_loss, sp.take_profit
        self._stats["portfolio_differences"] += len(diffs)
        self.differences = diffs
        return diffs

    def reconcile_orders(self, history: OrderHistory, *, complete: bool = False) -> list[str]:
        """Adopt the latest state of each order; return the differences.

        Orders in flight are resolved by clientOrderId. For an order the book
        knew, fills it missed are booked once, their quantity the difference
        in ``filledQuantity`` and their price derived from ``averagePrice``.
        An order the book never knew is adopted without booking (its fills
        are in the positions of a portfolio snapshot).

        Cancel and amend requests still unanswered are forgotten for the
        orders listed: they were lost with the connection (resend them).

        Args:
            history: an ``orderHistory`` reply.
            complete: the history covers every order since the ones in flight
                were sent; an in-flight order it lacks never reached the venue
                and ends REJECTED (reason None). Otherwise it is only reported.
        """
        if history.account_id != self.account_id:
            return []
        diffs: list[str] = []
        listed: set[Order] = set()
        for snap in history.orders:
            if snap.account_id != self.account_id:
                continue
            order = self._find(snap.order_id, snap.client_order_id)
            if order is None:
                order = Order.from_execution(snap)
                orders.apply(order, snap, snapshot=True)
                if order.status is OrderState.REJECTED:
                    self._count_rejection(order)
                if order.is_working:
                    diffs.append(f"order {order.key}: unknown locally, {order.status} at the venue")
            else:
                self._reconcile_one(order, snap, diffs)
            order.cancel_requested = order.amend_requested = False  # lost with the connection
            self._seen.add(snap.exec_id)
            self._index(order)
            listed.add(order)
        for order in list(self._working):
            if order.is_pending and order not in listed:
                if complete:
                    orders.reject(order, None)
                    self._index(order)
                    self._count_rejection(order)
                    diffs.append(f"order {order.key}: never reached the venue; ended REJECTED")
                else:
                    diffs.append(f"order {order.key}: still in flight, not in the history")
        self.needs_reconcile = False
        self._stats["order_differences"] += len(diffs)
        self.differences = diffs
        return diffs

    def _reconcile_one(self, order: Order, snap: Execution, diffs: list[str]) -> None:
        was = order.status
        booked_qty = self._booked_qty.get(order, ZERO)
        booked_value = self._booked_value.get(order, ZERO)
        missing_commission = dec(snap.commission) - order.commission
        try:
            orders.apply(order, snap, snapshot=True)
        except IllegalTransition:
            orders.force(order, snap)
            diffs.append(f"order {order.key}: local {was}, venue {snap.status}; adopted the venue's")
        else:
            if was is not order.status:
                diffs.append(f"order {order.key}: {was} -> {order.status}")
        if order.status is OrderState.REJECTED and was is not OrderState.REJECTED:
            self._count_rejection(order)
        missing = dec(snap.filled_quantity) - booked_qty
        if missing <= 0:
            return
        price = None
        if snap.average_price is not None:
            price = (dec(snap.average_price) * dec(snap.filled_quantity) - booked_value) / missing
        if price is None or price <= 0:
            price = dec(snap.last_price or snap.average_price or snap.price)
        commission = missing_commission if missing_commission > 0 else ZERO
        self._book_fill(order, snap, missing, price, commission, f"{snap.exec_id}/reconciled")
        diffs.append(f"order {order.key}: booked missed fills of {missing} {snap.symbol} at {price}")

    # ------------------------------------------------------------- indexing

    def _find(self, order_id: str | None, client_order_id: str | None) -> Order | None:
        if order_id is not None:
            order = self._by_id.get(order_id)
            if order is not None:
                return order
        if client_order_id is not None:
            order = self._by_cid.get(client_order_id)
            if order is not None and (order_id is None or order.order_id in (None, order_id)):
                return order
        return None

    def _index(self, order: Order) -> None:
        order_id = order.order_id
        if order_id is not None:
            self._by_id[order_id] = order
        cid = order.client_order_id
        if cid is not None:
            by_cid = self._by_cid
            known = by_cid.get(cid)
            if known is None or known is order or known.status in _FINAL:
                by_cid[cid] = order
        self._all[order] = None
        if order.status in _WORKING:
            self._working[order] = None
        else:
            self._working.pop(order, None)

    # ------------------------------------------------------------ the reads

    def order(self, order_id: str) -> Order | None:
        return self._by_id.get(order_id)

    def order_by_client_id(self, client_order_id: str) -> Order | None:
        return self._by_cid.get(client_order_id)

    def all_orders(self) -> list[Order]:
        """Every order the book knows, working and finished, oldest first."""
        return list(self._all)

    def working_orders(self, symbol: str | None = None) -> list[Order]:
        """PENDING_NEW, NEW, PARTIALLY_FILLED and AMENDED orders, oldest first."""
        if symbol is None:
            return list(self._working)
        return [o for o in self._working if o.symbol == symbol]

    def position(self, symbol: str) -> events.Position | None:
        """The open position on ``symbol``, valued now at the latest quote."""
        pos = self.ledger.positions.get(symbol)
        return self.ledger.position_event(pos) if pos is not None else None

    def positions(self) -> tuple[events.Position, ...]:
        return self.ledger.position_events()

    def net_quantity(self, symbol: str) -> float:
        """Signed units held on ``symbol``: + long, - short, 0 flat."""
        pos = self.ledger.positions.get(symbol)
        if pos is None:
            return 0.0
        # float(-x) == -float(x): Decimal -> float rounds correctly, so symmetrically
        return float(pos.quantity) if pos.side is _LONG else -float(pos.quantity)

    def position_of(self, position_id: str) -> tuple[str, float] | None:
        """(symbol, signed quantity) of the open position with that id."""
        pos = self.ledger.position_by_id(position_id)
        return (pos.symbol, float(pos.signed_quantity)) if pos is not None else None

    def position_ids(self) -> list[str]:
        """Ids of the open positions (the gate flattens them on a halt)."""
        return [p.position_id for p in self.ledger.positions.values()]

    def quote(self, symbol: str) -> Quote | None:
        return self._quotes.get(symbol)

    def rate(self, symbol: str) -> float:
        """Multiplier from ``symbol``'s quote currency to the account currency."""
        return float(self.ledger.rate(symbol))

    @property
    def balance(self) -> float:
        return float(self.ledger.balance)

    @property
    def realized_pnl(self) -> float:
        return float(self.ledger.realized_pnl)

    def unrealized(self, symbol: str | None = None) -> float:
        return float(self.ledger.unrealized(symbol))

    def equity(self) -> float:
        return float(self.ledger.equity())

    def margin(self) -> float:
        return float(self.ledger.margin())

    def free_margin(self) -> float:
        return float(self.ledger.free_margin())

    def margin_level(self) -> float | None:
        level = self.ledger.margin_level()
        return float(level) if level is not None else None

    def view(self) -> BookView:
        """The read-only face of this book for strategies and the risk gate."""
        return self._view

    def statistics(self) -> dict:
        """Counts for monitoring: events applied and ignored, rejections (also
        by reason code; ``NONE`` for an order that never reached the venue),
        and the state now."""
        return {
            **self._stats,
            "rejections_by_reason": dict(self._rejections_by_reason),
            "exec_ids_seen": len(self._seen),
            "orders": len(self._all),
            "working_orders": len(self._working),
            "positions": len(self.ledger.positions),
            "needs_reconcile": self.needs_reconcile,
        }


class BookView:
    """Read-only facade of a ``Book``: the reads, none of ``apply``/``on_sent``.

    Satisfies ``risk.gate.RiskView``. The orders it returns are the book's
    live objects: read them, never change them.
    """

    # The reads strategies and the gate make per order are the book's own
    # bound methods (and its instruments mapping), held in slots: a call
    # through a forwarding method would cost a second Python call each time.
    __slots__ = ("_book", "instruments", "quote", "net_quantity", "working_orders", "order",
                 "order_by_client_id", "position_of", "position_ids")

    def __init__(self, book: Book) -> None:
        self._book = book
        self.instruments: Mapping[str, Instrument] = book.instruments
        self.quote = book.quote
        self.net_quantity = book.net_quantity
        self.working_orders = book.working_orders
        self.order = book.order
        self.order_by_client_id = book.order_by_client_id
        self.position_of = book.position_of
        self.position_ids = book.position_ids

    @property
    def account_id(self) -> str:
        return self._book.account_id

    @property
    def currency(self) -> str:
        return self._book.currency

    @property
    def balance(self) -> float:
        return self._book.balance

    @property
    def realized_pnl(self) -> float:
        return self._book.realized_pnl

    @property
    def needs_reconcile(self) -> bool:
        return self._book.needs_reconcile

    def all_orders(self) -> list[Order]:
        return self._book.all_orders()

    def position(self, symbol: str) -> events.Position | None:
        return self._book.position(symbol)

    def positions(self) -> tuple[events.Position, ...]:
        return self._book.positions()

    def rate(self, symbol: str) -> float:
        return self._book.rate(symbol)

    def unrealized(self, symbol: str | None = None) -> float:
        return self._book.unrealized(symbol)

    def equity(self) -> float:
        return self._book.equity()

    def margin(self) -> float:
        return self._book.margin()

    def free_margin(self) -> float:
        return self._book.free_margin()

    def margin_level(self) -> float | None:
        return self._book.margin_level()

    def statistics(self) -> dict:
        return self._book.statistics()


_DECS: dict[float, Decimal] = {}
"""Memo of ``dec`` for wire floats: ``Decimal(repr(x))`` costs ~0.35 us and
fills repeat their prices and commissions (ticks are on a grid)."""
_DECS_MAX = 1 << 14


_ZEROS = (Decimal("0.0"), Decimal("-0.0"))  # dec(0.0), dec(-0.0)


def _dec(x: float) -> Decimal:
    """``dec(x)``, memoised for floats (Decimals are immutable: sharing is safe)."""
    if type(x) is not float:
        return dec(x)
    if not x:  # 0.0 == -0.0, not as Decimals: the zero of x's sign (a fill's usual commission)
        return _ZEROS[copysign(1.0, x) < 0.0]
    d = _DECS.get(x)
    if d is None:
        if len(_DECS) >= _DECS_MAX:
            _DECS.clear()
        d = _DECS[x] = Decimal(repr(x))
    return d


def _describe(pos: OpenPosition) -> str:
    return f"{pos.side} {pos.quantity} @ {pos.open_price} ({pos.position_id})"


def _describe_event(pos: events.Position) -> str:
    return f"{pos.side} {dec(pos.quantity)} @ {dec(pos.open_price)} ({pos.position_id})"

