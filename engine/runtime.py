"""The live runtime: the one trio module of ``engine/``.

One nursery runs the venue link (``adapters.trader_ws.client.TraderClient``,
handed in by the composition root), the pump and the clock around the same
sans-IO ``Kernel`` the backtest drives, so a strategy cannot tell live from
backtest except by the clock.

No hop between the socket and the strategies when they keep up. The link's
reader takes each message, and everything trio-websocket already holds behind
it, decoding each once into the ``Inbox``: quotes and depth snapshots conflate
there to the latest per symbol (counted when they do); account events queue in
arrival order and are never dropped. Then the reader runs the kernel itself
(``drive``): account events first, so the book is current when a strategy
sees the price, then the latest quotes; what the risk gate approved is sent
before the next read. A strategy that falls behind so sees the latest price,
never a backlog. The pump task does the same work when the reader may not:
before the book is reconciled, or while a send is under way.

Fail closed: the gate is REDUCING from the start and after every drop until
the link reports the book reconciled with the server (``LinkLive``); a link
that gives up (authentication refused twice) HALTs trading and ends the run.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import attrs
import trio

from engine import events as ev
from engine.book import Book
from engine.clock import WallClock
from engine.config import RunConfig
from engine.kernel import Kernel
from engine.orders import OrderState
from engine.report import BacktestResult
from risk import RiskGate, TradingState
from strategies.base import Strategy

log = logging.getLogger("triotrade.runtime")

RESYNC_S = 5.0
"""At most one order-history resync per this many seconds."""
_DISAGREES = "book disagrees"  # how the kernel words the REDUCING it sets (kernel._book_disagrees)


# -- what the link tells the pump, in order with the account events ---------------------


@attrs.frozen
class LinkUp:
    """A connection is open; the book is about to be reconciled."""

    connection: int


@attrs.frozen
class LinkLive:
    """Subscriptions acknowledged, order history and portfolio applied: trade."""

    connection: int


@attrs.frozen
class LinkDown:
    """The connection ended; ``reason`` says how. The link reconnects by itself."""

    reason: str


@attrs.frozen
class LinkFailed:
    """The link gave up (e.g. authentication refused twice): the run ends."""

    reason: str


@attrs.frozen
class OrderHistoryReply:
    """An ``orderHistory`` reply the link asked for while reconciling.
    ``complete``: it lists every order of the account (fewer than the limit),
    so an order still in flight that it lacks never reached the venue."""

    history: ev.OrderHistory
    complete: bool


class Link(Protocol):
    """What the runtime needs of a venue link (``TraderClient``)."""

    inbox: Inbox
    live: bool
    drive: Callable[[], Awaitable[None]] | None
    """Set by the runtime: the reader awaits it to run the kernel inline."""

    async def want(self, requests: Sequence) -> None: ...
    async def send(self, intent) -> bool: ...
    async def resync(self) -> None: ...
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...
    def status(self) -> dict: ...


class Inbox:
    """Where the link's reader drops decoded messages and the pump takes them.

    ``quote``/``depth``/``put`` never block and never wait for the pump; the
    reader then either runs the kernel itself (``LiveRuntime.drive``) or
    ``wake``s the pump."""

    __slots__ = ("events", "quotes", "depths", "conflated", "received", "limit", "_lot")

    def __init__(self, limit: int = 10_000) -> None:
        self.events: deque = deque()
        self.limit = limit
        """Account events queued beyond this make the reader wait (``full``):
        the socket then backs up, and the server conflates quotes or drops the
        connection, which the reconciliation after the reconnect makes whole.
        Nothing is dropped here."""
        self.quotes: dict[str, ev.Quote] = {}
        self.depths: dict[str, ev.Depth] = {}
        self.conflated = 0
        """Quotes and depth snapshots replaced before the pump took them."""
        self.received = 0
        """Quotes and depth snapshots put in."""
        self._lot = trio.lowlevel.ParkingLot()

    def quote(self, q: ev.Quote) -> None:
        quotes = self.quotes
        self.received += 1
        if q.symbol in quotes:
            self.conflated += 1
        quotes[q.symbol] = q

    def depth(self, d: ev.Depth) -> None:
        depths = self.depths
        self.received += 1
        if d.symbol in depths:
            self.conflated += 1
        depths[d.symbol] = d

    def put(self, item: Any) -> None:
        self.events.append(item)

    def wake(self) -> None:
        """Let the pump take what was put in (the putter does not run it itself)."""
        if self._lot:
            self._lot.unpark()

    @property
    def full(self) -> bool:
        return len(self.events) >= self.limit

    async def drained(self) -> None:
        """Wait until the pump has taken the queue below its limit."""
        while len(self.events) >= self.limit:
            await trio.sleep(0.001)

    def __bool__(self) -> bool:
        return bool(self.events or self.quotes or self.depths)

    async def wait(self) -> None:
        """Return when something is there (at once if it already is)."""
        if not (self.events or self.quotes or self.depths):
            await self._lot.park()


class LiveRuntime:
    """The strategies of a config, trading live through ``link``.

    Args:
        config: the run's configuration.
        inbox: where the venue link drops what it receives (build the link
            with the same one, then ``await runtime.run(link)``).
        strategies: already-built strategies (default: built from the config).
        run_tag: makes this run's ``clientOrderId``s unique for the account.
        cancel_on_stop: cancel the strategies' working orders at shutdown.
        stop_deadline_s: how long shutdown waits for those cancels' answers.
        clock: "now" for the kernel (the wall clock).
    """

    def __init__(
        self, config: RunConfig, inbox: Inbox, *, strategies: Sequence[Strategy] | None = None,
        run_tag: str = "0", cancel_on_stop: bool = True, stop_deadline_s: float = 5.0,
        clock=None, name: str = "",
    ) -> None:
        from engine.backtest import build_strategies  # the same builder as a backtest

        self.config = config
        self.name = name
        self.inbox = inbox
        self.link: Link | None = None
        self.clock = clock or WallClock()
        self.instruments = config.instrument_map()
        self.strategies = list(strategies) if strategies is not None else build_strategies(config)
        self.quotes: dict[str, ev.Quote] = {}
        self.book = Book(config.account, config.currency, Decimal(repr(config.balance)),
                         self.instruments, self.quotes)
        self.gate = RiskGate(config.risk, self.book, config.account)
        self.gate.set_state(TradingState.REDUCING, "not connected yet")
        self.kernel = Kernel(
            account_id=config.account, book=self.book, gate=self.gate, strategies=self.strategies,
            clock=self.clock, quotes=self.quotes, run_tag=run_tag, cancel_on_stop=cancel_on_stop,
        )
        self.kernel.reconciling = True
        self.stop_deadline_s = stop_deadline_s
        self.outbox: list = []
        """Approved intents waiting for the link to be live (sent in order then)."""
        self.failure: str | None = None
        self.started_at: datetime | None = None
        self.equity: list[tuple[datetime, float]] = []
        self.connections = 0
        self.quotes_handled = 0
        self._exposed = 0
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._shutdown_scope: trio.CancelScope | None = None
        self._resync_at = float("-inf")
        self.resync_interval_s = RESYNC_S
        self._hold_portfolio = False
        """Between a connection's open and its order history: a portfolio
        snapshot waits (it already counts fills the history will book)."""
        self._held_portfolio: ev.Portfolio | None = None
        self._aborted = False
        self._send_lock = trio.Lock()

    # -- running -----------------------------------------------------------
    def request_stop(self) -> None:
        """Begin an orderly shutdown (Ctrl-C / SIGTERM)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        """Cut an orderly shutdown short (a second Ctrl-C)."""
        self._aborted = True
        if self._shutdown_scope is not None:
            self._shutdown_scope.cancel()

    async def run(self, link: Link, *, task_status=trio.TASK_STATUS_IGNORED) -> BacktestResult:
        """Trade until ``request_stop`` (or the link fails); returns the run's summary.

        ``task_status.started(self)`` once the link's connection loop and the
        pump are running (not necessarily connected yet)."""
        self.link = link
        link.drive = self.drive
        self.started_at = self.clock.now
        self.outbox.extend(self.kernel.start())
        await self._subscribe()
        self._sample()
        from engine.backtest import rare_gc

        with rare_gc():  # a young-generation pass every 700 allocations hit 1 quote in 100
            await self._run(link, task_status)
        self._stopped.set()
        return self.summary()

    async def _run(self, link: Link, task_status) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._pump)
            await nursery.start(self._ticker)
            await nursery.start(self._link_task, link)
            task_status.started(self)
            await self._stop.wait()
            await self._shutdown()
            nursery.cancel_scope.cancel()

    async def _link_task(self, link: Link, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await link.run(task_status=task_status)
        self._stop.set()  # the link ended: it failed, or it was closed

    async def _shutdown(self) -> None:
        """``on_stop``, cancel working orders, wait for their answers, close with 1000."""
        with trio.CancelScope(shield=True) as self._shutdown_scope:
            if self._aborted:
                return
            with trio.move_on_after(self.stop_deadline_s):
                await self._send_all(self.kernel.stop())
                while self.link.live and self.book.working_orders():
                    await trio.sleep(0.01)
            left = self.book.working_orders()
            if left:
                log.warning("stopping with %d working orders (no answer within %.1f s)",
                            len(left), self.stop_deadline_s)
            self._sample()
            with trio.move_on_after(2):
                await self.link.close(1000, "client stopping")

    # -- the pump ------------------------------------------------------------
    def step(self) -> list:
        """Take everything in the inbox through the kernel: account events in
        order, then the latest depth and quote of each symbol. Returns the
        intents to send."""
        inbox, kernel = self.inbox, self.kernel
        events = inbox.events
        out: list = []
        while events:
            item = events.popleft()
            if isinstance(item, ev.Event):
                if type(item) is ev.Portfolio and self._hold_portfolio:
                    self._held_portfolio = item  # applied after the order history
                    continue
                out += kernel.on_event(item)
                if type(item) is ev.OrderHistory:
                    self._resynced()
            else:
                out += self._on_link(item)
        if inbox.depths:
            depths, inbox.depths = inbox.depths, {}
            for d in depths.values():
                out += kernel.on_depth(d)
        if inbox.quotes:
            quotes, inbox.quotes = inbox.quotes, {}
            self.quotes_handled += len(quotes)
            on_quote = kernel.on_quote
            for q in quotes.values():
                intents = on_quote(q)
                if intents:
                    out += intents
        return out

    async def _pump(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Runs the kernel when the reader does not: before the book is
        reconciled, or while a send was under way."""
        inbox = self.inbox
        task_status.started()
        while True:
            await inbox.wait()
            out = self.step()
            if out:
                await self._send_all(out)

    async def drive(self) -> None:
        """Run the kernel now in the caller's task: the link's reader calls this
        once it has taken what was buffered, so a quote is answered without a
        task switch. While a send is under way the pump does it afterwards
        instead, so intents go out in the order they were approved."""
        if self._send_lock.locked():
            self.inbox.wake()
            return
        out = self.step()
        if out:
            await self._send_all(out)

    def _on_link(self, item) -> list:
        gate, kernel = self.gate, self.kernel
        if type(item) is OrderHistoryReply:
            # orders first (fills missed in an outage are booked once), then the
            # portfolio snapshot, which already counts them: the server's balance
            # and positions have the last word
            in_flight = [o for o in self.book.working_orders() if o.is_pending]
            differences = self.book.reconcile_orders(item.history, complete=item.complete)
            for d in differences:
                log.info("reconciled: %s", d)
            out = [intent for o in in_flight if o.status is OrderState.REJECTED
                   for intent in kernel.order_lost(
                       o.client_order_id, "sent as the connection dropped; the venue never had it")]
            self._hold_portfolio = False
            held, self._held_portfolio = self._held_portfolio, None
            return out + list(kernel.on_event(held)) if held is not None else out
        if type(item) is LinkUp:
            self.connections += 1
            kernel.reconciling = True
            self._hold_portfolio = True
            self._held_portfolio = None
            if gate.state is not TradingState.HALTED:
                gate.set_state(TradingState.REDUCING, "connected: reconciling with the server")
            return []
        if type(item) is LinkLive:
            kernel.reconciling = False
            if gate.state is TradingState.REDUCING:
                gate.set_state(TradingState.ACTIVE, "reconciled with the server")
            out, self.outbox = self.outbox, []
            return out
        if type(item) is LinkDown:
            kernel.reconciling = True
            if gate.state is not TradingState.HALTED:
                gate.set_state(TradingState.REDUCING, f"connection lost: {item.reason}")
            return []
        if type(item) is LinkFailed:
            self.failure = item.reason
            gate.set_state(TradingState.HALTED, item.reason)
            self._stop.set()
            return []
        return []

    def _resynced(self) -> None:
        """A resync's order history was applied: trade again if the book now agrees."""
        gate = self.gate
        if (gate.state is TradingState.REDUCING and self.link.live and not self.book.needs_reconcile
                and gate.state_reason.startswith(_DISAGREES)):
            gate.set_state(TradingState.ACTIVE, "book resynchronized with the server")

    async def _resync_if_needed(self) -> None:
        """The book saw what only the server can settle (the gate went REDUCING):
        ask for the order history again, at most every ``resync_interval_s``."""
        if self.book.needs_reconcile and self.link.live:
            t = trio.current_time()
            if t - self._resync_at >= self.resync_interval_s:
                self._resync_at = t
                await self.link.resync()

    async def _subscribe(self) -> None:
        """Give the link what the strategies subscribed to (at start, and when
        a strategy subscribes later)."""
        self.kernel.subscriptions_changed = False
        await self.link.want(self.kernel.subscriptions())

    async def _send_all(self, intents) -> None:
        """Send in approval order: the pump, the ticker and the reader take turns
        (trio's lock is fair), without a scheduler round when nobody holds it."""
        link, lock = self.link, self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            for intent in intents:
                if link.live and not self.outbox:
                    await link.send(intent)
                else:
                    self.outbox.append(intent)
        finally:
            lock.release()

    # -- wall-clock work -----------------------------------------------------
    async def _ticker(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Strategy timers on the wall clock; the gate's loss limits each second;
        subscriptions a strategy made after its start."""
        kernel, clock = self.kernel, self.clock
        next_update = trio.current_time() + 1.0
        task_status.started()
        while True:
            now = clock.now
            out = list(kernel.run_timers(now))
            if trio.current_time() >= next_update:
                next_update += 1.0
                self._sample()
                for intent in self.gate.update(now):
                    kernel.submit(None, intent)
                out += kernel._take()
            if out:
                await self._send_all(out)
            if kernel.subscriptions_changed:  # a strategy subscribed after its start
                await self._subscribe()
            await self._resync_if_needed()
            due = kernel.next_timer
            wait = 0.05 if due is None else (due - clock.now).total_seconds()
            await trio.sleep(min(max(wait, 0.0), next_update - trio.current_time(), 0.05))

    def _sample(self) -> None:
        self.equity.append((self.clock.now, self.book.equity()))
        self._exposed += bool(self.book.ledger.positions)

    # -- reporting -----------------------------------------------------------
    def status(self) -> dict:
        """Figures for the status line / structured log."""
        book = self.book
        link = self.link.status() if self.link is not None else {}
        return {
            **link,
            "risk": str(self.gate.state),
            "quotes": self.inbox.received,
            "conflated": self.inbox.conflated,
            "open_orders": len(book.working_orders()),
            "positions": {p.symbol: (p.quantity if p.side == "LONG" else -p.quantity)
                          for p in book.positions()},
            "balance": round(book.balance, 2),
            "equity": round(book.equity(), 2),
            "pnl": round(book.equity() - self.config.balance, 2),
            "orders": self.kernel.orders_sent,
            "fills": self.kernel.fills,
            "denials": self.kernel.denials,
            "rejections": self.kernel.rejections,
        }

    def summary(self) -> BacktestResult:
        """The run as a ``BacktestResult``: the same table and files as a backtest."""
        from engine.backtest import trade_rows

        book, kernel = self.book, self.kernel
        trades = tuple(trade_rows(book, kernel))
        equity = tuple(self.equity)
        exposure = self._exposed / len(equity) if equity else 0.0
        return BacktestResult(
            config_name=self.name, feed="live", strategies=tuple(s.name for s in self.strategies),
            currency=self.config.currency, start=self.started_at, end=self.clock.now,
            initial_balance=self.config.balance, final_balance=book.balance,
            final_equity=book.equity(), equity=equity, exposure=exposure, trades=trades,
            closed_positions_pnl=tuple(float(p) for p in book.ledger.closed_pnls()),
            fees=float(book.ledger.commission_paid), orders=kernel.orders_sent, fills=kernel.fills,
            denials=dict(sorted(self.gate.statistics().get("denials", {}).items())),
            rejections=dict(sorted(book.statistics().get("rejections_by_reason", {}).items())),
            feed_stats={"quotes": self.inbox.received, "conflated": self.inbox.conflated,
                        "connections": self.connections,
                        "link": self.link.status() if self.link is not None else {}},
            quotes=self.inbox.received,
        )
