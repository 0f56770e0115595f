"""The sans-IO heart that both drivers call: events in, approved intents out.

On a market event the kernel records the latest quote, calls the strategies
that subscribed to it, and passes what they emitted through the risk gate.
On an account event it updates the local book first (executions once, by
``execId``), then tells the strategy that owns the order. What comes out is
the list of intents to send; the backtest hands them to the matching
engine, the live runtime to the WebSocket. The kernel never does I/O and
reads time only from the clock it is given.

Per quote the work is a dict store and the subscribed strategies' hooks;
the book, the gate and the venue are touched only when an intent or an
execution exists.
"""

from __future__ import annotations

import heapq
import traceback
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from engine import events as ev
from engine import intents as it
from engine.enums import EventKind
from engine.errors import TriotradeError, UsageError
from risk import Approved, RiskGate, TradingState
from strategies.base import Strategy

_NONE: tuple = ()
_CreateOrder = it.CreateOrder
_NO_HOOK = Strategy.on_execution


@attrs.frozen
class VenueRejection:
    """A venue's refusal of a request, as a strategy's ``on_reject`` sees it."""

    reason: str
    message: str
    intent: Any | None
    client_order_id: str | None = None
    order_id: str | None = None
    source: str = "venue"


@attrs.frozen
class StrategyFailure:
    """A strategy that raised: it was stopped and its orders cancelled."""

    strategy: str
    hook: str
    error: str
    traceback: str


@attrs.define(eq=False)
class _Timer:
    due: datetime
    seq: int
    callback: Callable[[datetime], None]
    interval: timedelta | None
    cancelled: bool = False

    def __lt__(self, other: _Timer) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


class _Context:
    """A running strategy's link to the kernel (``Strategy.ctx``)."""

    def __init__(self, kernel: Kernel, strategy: Strategy) -> None:
        self.kernel = kernel
        self.strategy = strategy
        self.account_id = kernel.account_id
        self.clock = kernel.clock
        self.book = kernel.view
        self.owned: set[str] = set()
        self.timers: dict[str, _Timer] = {}
        self._seq = 0
        self._cid_prefix = f"{strategy.name}-{kernel.run_tag}-"

    def emit(self, strategy: Strategy, intent):
        self.kernel.submit(strategy, intent)
        return intent

    def next_client_order_id(self, strategy: Strategy) -> str:
        self._seq += 1
        return f"{self._cid_prefix}{self._seq:06d}"

    def subscribe(self, strategy, symbols, kinds, depth, metrics) -> None:
        self.kernel._subscribe(strategy, symbols, kinds, depth, metrics)

    def set_timer(self, strategy, name, interval, repeat) -> None:
        old = self.timers.pop(name, None)
        if old is not None:
            old.cancelled = True
        callback = lambda now: self.kernel._call(strategy, "on_timer", name, now)  # noqa: E731
        self.timers[name] = self.kernel.add_timer(interval, callback, repeat=repeat)

    def cancel_timer(self, strategy, name) -> None:
        timer = self.timers.pop(name, None)
        if timer is not None:
            timer.cancelled = True


class Kernel:
    """Book -> strategies -> risk gate, for one account.

    Args:
        account_id: the account every intent is for.
        book: the local order/position book (``engine.book.Book``).
        gate: the risk gate every intent passes.
        strategies: the strategies, already built with their parameters.
        clock: where "now" comes from (virtual in a backtest).
        quotes: the latest quote per symbol; the kernel writes it, the book
            and the gate read it.
        run_tag: makes ``clientOrderId``s unique across runs of the account.
        cancel_on_stop: cancel the strategies' working orders on stop.
    """

    def __init__(
        self, *, account_id: str, book, gate: RiskGate, strategies: Sequence[Strategy],
        clock, quotes: dict[str, ev.Quote], run_tag: str = "0", cancel_on_stop: bool = True,
    ) -> None:
        self.account_id = account_id
        self.book = book
        self.view = book.view()
        self.gate = gate
        self.strategies = list(strategies)
        self.clock = clock
        self.quotes = quotes
        self.run_tag = run_tag
        self.cancel_on_stop = cancel_on_stop
        self.failures: list[StrategyFailure] = []
        self.anomalies: list[str] = []
        self.reconciling = False
        self.subscriptions_changed = False
        """Set when a strategy subscribes; the live runtime clears it once it
        has asked the venue (a subscribe after ``on_start`` counts too)."""
        self._out: list = []
        self._quote_subs: dict[str, list[Strategy]] = {}
        self._quote_hooks: dict[str, list[tuple[Strategy, Callable]]] = {}  # bound, per quote
        self._depth_subs: dict[str, list[Strategy]] = {}
        self._exec_subs: dict[str, list[Strategy]] = {}
        self._portfolio_subs: list[Strategy] = []
        self._metrics_subs: list[Strategy] = []
        self._depth_wanted: dict[str, int] = {}
        self._top_of_depth: dict[str, ev.Quote] = {}
        self._owner: dict[str, Strategy] = {}
        self._stopped: set[int] = set()
        self._timers: list[_Timer] = []
        self._timer_seq = 0
        self.orders_sent = 0
        self.denials = 0
        self.rejections = 0
        self.fills = 0

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> list:
        """Bind and start every strategy; returns the intents they emitted."""
        for s in self.strategies:
            s._ctx = _Context(self, s)
        for s in self.strategies:
            self._call(s, "on_start")
        return self._take()

    def stop(self) -> list:
        """``on_stop`` for every running strategy, then cancel their working orders."""
        for s in self.strategies:
            if id(s) not in self._stopped:
                self._call(s, "on_stop")
        if self.cancel_on_stop:
            for s in self.strategies:
                self._cancel_working(s)
        return self._take()

    @property
    def wants_portfolio(self) -> bool:
        """True if a strategy listens to portfolio snapshots (or the book must
        reconcile with them)."""
        return bool(self._portfolio_subs) or self.reconciling

    def subscriptions(self) -> list:
        """The subscribe requests the strategies asked for (the live adapter sends them)."""
        out: list = []
        kinds: dict[str, set] = {}
        for kind, table in ((EventKind.QUOTE, self._quote_subs), (EventKind.EXECUTION, self._exec_subs)):
            for symbol in table:
                kinds.setdefault(symbol, set()).add(kind)
        if self._portfolio_subs and kinds:
            for symbol in kinds:
                kinds[symbol].add(EventKind.PORTFOLIO)
        groups: dict[tuple, list[str]] = {}
        for symbol, ks in sorted(kinds.items()):
            groups.setdefault(tuple(sorted(ks)), []).append(symbol)
        out += [it.Subscribe(tuple(symbols), ks) for ks, symbols in groups.items()]
        out += [it.DepthSubscribe(s, d) for s, d in sorted(self._depth_wanted.items())]
        if self._metrics_subs:
            out.append(it.MetricsSubscribe(self.account_id))
        return out

    # -- events in ---------------------------------------------------------
    def on_quote(self, quote: ev.Quote) -> Sequence:
        """A quote, after the venue matched on it: strategies react."""
        symbol = quote.symbol
        self.quotes[symbol] = quote
        hooks = self._quote_hooks.get(symbol)
        if hooks:
            for s, on_quote in hooks:
                try:
                    on_quote(quote)
                except Exception as exc:  # a strategy's bug stops that strategy only
                    self._fail(s, "on_quote", exc)
            if self._out:
                return self._take()
        return _NONE

    def on_depth(self, depth: ev.Depth) -> Sequence:
        """A depth snapshot. For a symbol that has no quote stream of its own,
        its top of book also stands in as the symbol's quote."""
        symbol = depth.symbol
        current = self.quotes.get(symbol)
        top = None
        if depth.bids and depth.asks and (current is None or current is self._top_of_depth.get(symbol)):
            (bid, bid_size), (ask, ask_size) = depth.bids[0], depth.asks[0]
            top = self._top_of_depth[symbol] = ev.Quote(symbol, bid, ask, depth.ts, bid_size, ask_size)
            self.quotes[symbol] = top
        for s in self._depth_subs.get(symbol, _NONE):
            self._call(s, "on_depth", depth)
        if top is not None:
            for s in self._quote_subs.get(symbol, _NONE):
                self._call(s, "on_quote", top)
        return self._take()

    def on_event(self, event) -> Sequence:
        """An account event from the venue: book first, then the strategy."""
        if type(event) is ev.Execution:
            try:
                if not self.book.apply(event):
                    return _NONE  # a duplicate: applied once already
            except TriotradeError as exc:
                return self._book_disagrees(event, exc)
            cid = event.client_order_id
            owner = self._owner.get(cid) if cid else None
            for s in (owner,) if owner is not None else self._exec_subs.get(event.symbol, _NONE):
                # the base class's hook does nothing: skip the call (two per order)
                if type(s).on_execution is not _NO_HOOK or "on_execution" in s.__dict__:
                    self._call(s, "on_execution", event)
            if event.last_quantity:
                self.fills += 1
                for intent in self.gate.update(self.clock.now):
                    self.submit(None, intent)
            return self._take()
        if type(event) is ev.Error:
            self.book.apply(event)
            self.rejections += 1
            owner = self._owner_of(event)
            if owner is not None:
                rejection = VenueRejection(
                    event.code.value, event.message, None, event.client_order_id, event.order_id)
                self._call(owner, "on_reject", rejection)
            return self._take()
        if type(event) is ev.Portfolio:
            # the server's word on balance and positions (and the only news of
            # SL/TP levels); outside a reconciliation it should agree with the book
            differences = self.book.reconcile_portfolio(event)
            if differences and not self.reconciling:
                self.anomalies.extend(differences)
            for s in self._portfolio_subs:
                self._call(s, "on_portfolio", event)
        elif type(event) is ev.Metrics:
            for s in self._metrics_subs:
                self._call(s, "on_metrics", event)
        elif type(event) is ev.OrderHistory:
            self.book.reconcile_orders(event)
        return self._take()

    def order_lost(self, client_order_id: str, message: str) -> Sequence:
        """An order a reconnect found never reached the venue (the book ended it
        REJECTED): its strategy hears of it in ``on_reject``, reason NOT_RECEIVED."""
        self.rejections += 1
        owner = self._owner.get(client_order_id)
        if owner is not None:
            self._call(owner, "on_reject", VenueRejection(
                "NOT_RECEIVED", message, None, client_order_id, source="link"))
        return self._take()

    # -- timers ------------------------------------------------------------
    def add_timer(self, interval: timedelta, callback: Callable[[datetime], None], *,
                  repeat: bool = True, start: datetime | None = None) -> _Timer:
        """Call ``callback(due)`` every ``interval`` of the clock (once if not ``repeat``)."""
        self._timer_seq += 1
        timer = _Timer((start or self.clock.now) + interval, self._timer_seq, callback,
                       interval if repeat else None)
        heapq.heappush(self._timers, timer)
        return timer

    @property
    def next_timer(self) -> datetime | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].due if self._timers else None

    def run_timers(self, until: datetime, advance: Callable[[datetime], Any] | None = None) -> list:
        """Fire every timer due at or before ``until``, in time order."""
        timers = self._timers
        while timers and timers[0].due <= until:
            timer = heapq.heappop(timers)
            if timer.cancelled:
                continue
            if advance is not None:
                advance(timer.due)
            if timer.interval is not None:
                timer.due += timer.interval
                if timer.due <= until and timer.due < self.clock.now:
                    # skip the missed beats of a long gap in the feed: fire once, then resync
                    timer.due = self.clock.now + timer.interval
                heapq.heappush(timers, timer)
            timer.callback(self.clock.now)
        return self._take()

    # -- internals ---------------------------------------------------------
    def _subscribe(self, s: Strategy, symbols: Iterable[str], kinds, depth, metrics) -> None:
        for symbol in symbols:
            if symbol not in self.view.instruments:
                raise UsageError(f"strategy {s.name!r} subscribed to unknown symbol {symbol!r}")
            for kind, table in ((EventKind.QUOTE, self._quote_subs), (EventKind.EXECUTION, self._exec_subs)):
                if kind in kinds and s not in table.setdefault(symbol, []):
                    table[symbol].append(s)
            if depth:
                if s not in self._depth_subs.setdefault(symbol, []):
                    self._depth_subs[symbol].append(s)
                self._depth_wanted[symbol] = max(depth, self._depth_wanted.get(symbol, 0))
        self._rebuild_hooks()
        if EventKind.PORTFOLIO in kinds and s not in self._portfolio_subs:
            self._portfolio_subs.append(s)
        if metrics and s not in self._metrics_subs:
            self._metrics_subs.append(s)
        self.subscriptions_changed = True

    def submit(self, s: Strategy | None, intent) -> bool:
        """Rule on one intent now: approved ones are queued to send and the book
        records them in flight; a denial goes to the strategy's ``on_reject``.
        ``s`` is None for the kernel's own intents (the gate's flatten)."""
        if s is not None and id(s) in self._stopped and type(intent) is not it.CancelOrder:
            return False
        now = self.clock.now  # one reading: the gate and the book agree on the time
        decision = self.gate.check(intent, now)
        if type(decision) is not Approved:
            self.denials += 1
            if s is not None:
                self._call(s, "on_reject", decision)
            return False
        if type(intent) is _CreateOrder:
            self.orders_sent += 1
            if s is not None:
                cid = intent.client_order_id
                self._owner[cid] = s
                s._ctx.owned.add(cid)
        self.book.on_sent(intent, now)
        self._out.append(intent)
        return True

    def _take(self) -> Sequence:
        """The approved intents gathered so far, in order (an empty tuple if none)."""
        out = self._out
        if not out:
            return _NONE
        self._out = []
        return out

    def _rebuild_hooks(self) -> None:
        """Bound ``on_quote`` methods per symbol: the per-quote loop skips a lookup.
        New lists each time, so a loop in progress keeps the one it started."""
        self._quote_hooks = {
            symbol: [(s, s.on_quote) for s in subs] for symbol, subs in self._quote_subs.items()
        }

    def _book_disagrees(self, event, exc: Exception) -> Sequence:
        """An event the book cannot apply (an illegal move, a contradiction):
        fail closed. The gate takes no new risk until a reconciliation."""
        self.anomalies.append(f"{type(exc).__name__}: {exc}")
        self.gate.set_state(TradingState.REDUCING, f"book disagrees with the venue: {exc}")
        return self._take()

    def _owner_of(self, error: ev.Error) -> Strategy | None:
        if error.client_order_id:
            return self._owner.get(error.client_order_id)
        if error.order_id:
            order = self.book.order(error.order_id)
            if order is not None and order.client_order_id:
                return self._owner.get(order.client_order_id)
        return None

    def _call(self, s: Strategy, hook: str, *args) -> None:
        if id(s) in self._stopped:
            return
        try:
            getattr(s, hook)(*args)
        except Exception as exc:
            self._fail(s, hook, exc)

    def _fail(self, s: Strategy, hook: str, exc: Exception) -> None:
        """Stop a strategy that raised; cancel its orders; the others go on."""
        self.failures.append(StrategyFailure(
            s.name, hook, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        self._stopped.add(id(s))
        # new lists, not in-place removal: a hook loop may be iterating the old ones
        for table in (self._quote_subs, self._depth_subs, self._exec_subs):
            for symbol, subs in table.items():
                table[symbol] = [x for x in subs if x is not s]
        self._rebuild_hooks()
        self._portfolio_subs = [x for x in self._portfolio_subs if x is not s]
        self._metrics_subs = [x for x in self._metrics_subs if x is not s]
        for timer in s._ctx.timers.values():
            timer.cancelled = True
        self._cancel_working(s)

    def _cancel_working(self, s: Strategy) -> None:
        for order in self.view.working_orders():
            if order.client_order_id in s._ctx.owned:
                if order.order_id:
                    intent = it.CancelOrder(self.account_id, order_id=order.order_id)
                else:
                    intent = it.CancelOrder(self.account_id, client_order_id=order.client_order_id)
                self.submit(s, intent)
