"""The protocol state of one live Trader WebSocket run, with no I/O in it.

Why a sans-IO object: every decision of PROTOCOL sections 1, 2 and 5.2 (what
to subscribe again after a drop, when the book may trade, whether to log in
again or give up, when a silent socket is dead, how long to back off) is made
here on plain values, so it is tested without a socket or a clock, and the
trio code around it only does the I/O and asks what to do next. Time is a
monotonic ``now`` passed in, jitter a callable passed in.

::

    DISCONNECTED ─logging_in─▶ LOGGING_IN ─logged_in─▶ DISCONNECTED
         │                          └─login_failed─▶ DISCONNECTED (Reconnect) | FAILED
         └─connecting─▶ CONNECTING ─opened─▶ SUBSCRIBING ─every subscribed─▶ RECONCILING
                                                            (sends orderHistory)    │
                              LIVE ◀─orderHistory reply + portfolio snapshot────────┘
    CONNECTING/SUBSCRIBING/RECONCILING/LIVE ─closed─▶ DISCONNECTED (Reconnect) | FAILED (Stop)
    subscription refused, auth refused after a relogin, HTTP 4xx ─▶ FAILED (terminal)
    stop() ─▶ STOPPING ─closed─▶ STOPPED (terminal)

Trading requests are tracked until the venue answers them and are never
resent: after a drop the caller resolves them against the ``orderHistory``
reply (by ``clientOrderId``) and calls ``forget_pending``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from engine.codec import request_type
from engine.enums import EventKind, OrderStatus
from engine.errors import UsageError
from engine.events import Error, Execution, OrderHistory, Portfolio, Quote, Subscribed
from engine.intents import (
    KEEP,
    AmendOrder,
    AmendPosition,
    CancelOrder,
    ClosePosition,
    CreateOrder,
    DepthSubscribe,
    MetricsSubscribe,
    OrderHistoryQuery,
    Subscribe,
)


class Phase(enum.StrEnum):
    DISCONNECTED = "DISCONNECTED"
    LOGGING_IN = "LOGGING_IN"
    CONNECTING = "CONNECTING"
    SUBSCRIBING = "SUBSCRIBING"
    RECONCILING = "RECONCILING"
    LIVE = "LIVE"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


class Liveness(enum.Enum):
    OK = "OK"
    PING = "PING"  # send a ping now (returned once per silence)
    DEAD = "DEAD"  # close and reconnect


@attrs.frozen
class Send:
    """A request to put on the wire now, in an envelope with ``id=request_id``."""

    request_id: str
    intent: Any


@attrs.frozen
class Reconnect:
    """Wait ``delay_s``, then connect again (log in first when ``relogin``)."""

    delay_s: float
    relogin: bool
    reason: str


@attrs.frozen
class Stop:
    """The run ends; ``fatal``: an error (trading HALTED), ``reason`` says which."""

    reason: str
    fatal: bool


@attrs.frozen
class Pending:
    """A trading request on the wire with no answer yet."""

    request_id: str | None
    intent: Any
    sent_at: float


_NONE: Final[list] = []
"""The empty answer of ``on_event``, shared to keep quotes cheap: never mutate a result."""
_TRADING = (CreateOrder, CancelOrder, AmendOrder, ClosePosition, AmendPosition)
_SUBSCRIPTION_TYPES = frozenset({"subscribe", "depthSubscribe", "metricsSubscribe"})
_KIND_ORDER = {k: i for i, k in enumerate(EventKind)}
_OPEN = frozenset({Phase.SUBSCRIBING, Phase.RECONCILING, Phase.LIVE})
_TERMINAL = frozenset({Phase.STOPPED, Phase.FAILED})
_STOPPED = Stop("stopped", fatal=False)


def _transient(status: int) -> bool:
    """An HTTP status worth retrying: the server is down, busy or slow."""
    return status >= 500 or status in (408, 429)


def _describe(intent: Any) -> str:
    t = type(intent)
    if t is Subscribe:
        return f"subscribe {','.join(intent.symbols) or '(no symbol)'} to {','.join(intent.events)}"
    if t is DepthSubscribe:
        return f"depthSubscribe {intent.symbol} (depth {intent.depth})"
    if t is MetricsSubscribe:
        return f"metricsSubscribe {intent.account_id}"
    return request_type(intent)


def _echoes(intent: Any, s: Subscribed) -> bool:
    """Is ``s`` the ``subscribed`` reply to ``intent`` (PROTOCOL 5: it echoes the payload)?"""
    t = type(intent)
    if t is Subscribe:
        return (s.symbols is not None and s.events is not None
                and set(s.symbols) == set(intent.symbols) and set(s.events) == set(intent.events))
    if t is DepthSubscribe:
        return s.symbol == intent.symbol and s.depth in (None, intent.depth)
    return s.account_id == intent.account_id and s.symbols is None and s.symbol is None


def _answered_by(intent: Any, e: Execution) -> bool:
    """Does execution ``e`` settle the fate of trading request ``intent``?"""
    if intent.account_id != e.account_id:
        return False
    t = type(intent)
    if t is CreateOrder:
        return intent.client_order_id is not None and intent.client_order_id == e.client_order_id
    if t is CancelOrder:
        same = ((intent.order_id is not None and intent.order_id == e.order_id)
                or (intent.client_order_id is not None and intent.client_order_id == e.client_order_id))
        return same and e.status.is_final
    if t is AmendOrder:
        return intent.order_id == e.order_id and (e.status is OrderStatus.AMENDED or e.status.is_final)
    if t is ClosePosition:
        return intent.position_id == e.position_id and e.reason == "CLOSE_POSITION"
    return False


def _error_answers(intent: Any, err: Error) -> bool:
    """Is ``err`` the refusal of ``intent``? By clientOrderId / orderId, else by type alone
    for requests that carry neither (closePosition, amendPosition)."""
    if err.request_type is not None and err.request_type != request_type(intent):
        return False
    cid = getattr(intent, "client_order_id", None)
    oid = getattr(intent, "order_id", None)
    if err.client_order_id is not None or err.order_id is not None:
        return ((err.client_order_id is not None and err.client_order_id == cid)
                or (err.order_id is not None and err.order_id == oid))
    return err.request_type is not None and cid is None and oid is None


def _amended_in(intent: AmendPosition, p: Portfolio) -> bool:
    if p.account_id != intent.account_id:
        return False
    for pos in p.positions:
        if pos.position_id == intent.position_id:
            return ((intent.stop_loss is KEEP or pos.stop_loss == intent.stop_loss)
                    and (intent.take_profit is KEEP or pos.take_profit == intent.take_profit))
    return True  # the position is gone: nothing left to amend


class Session:
    """See the module docstring. One instance per run (it spans reconnects)."""

    def __init__(
        self, account_id: str, *, ping_after_s: float = 10.0, dead_after_s: float = 10.0,
        backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0, backoff_factor: float = 2.0,
        stable_after_s: float = 30.0, jitter: Callable[[], float] = lambda: 0.5,
        history_limit: int = 1000, reconcile: bool = True,
    ) -> None:
        if not (ping_after_s > 0 and dead_after_s > 0):
            raise UsageError("ping_after_s and dead_after_s must be > 0")
        if not (0 < backoff_initial_s <= backoff_max_s and backoff_factor >= 1):
            raise UsageError("backoff needs 0 < initial <= max and factor >= 1")
        if not 1 <= history_limit <= 1000:
            raise UsageError("history_limit must be in 1..1000 (PROTOCOL 4)")
        self.account_id = account_id
        self.ping_after_s = ping_after_s
        self.dead_after_s = dead_after_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.backoff_factor = backoff_factor
        self.stable_after_s = stable_after_s
        self.history_limit = history_limit
        self.reconcile = reconcile
        """False (a recorder): no portfolio or history; LIVE once subscribed."""
        self._jitter = jitter
        self.phase = Phase.DISCONNECTED
        self.failure: Stop | None = None
        self._ids = 0
        # wanted subscriptions (kept across reconnects), in the order first asked
        self._events: dict[str, dict[EventKind, None]] = {}
        self._depth: dict[str, int] = {}
        self._metrics: dict[str, None] = {}
        # this connection
        self._open = False
        self._opened_at: float | None = None
        self._last_rx = 0.0
        self._pinged_at = float("-inf")  # a ping is out while _pinged_at > _last_rx
        self._acks: dict[str, Any] = {}  # request id -> subscription awaiting `subscribed`
        self._history_id: str | None = None
        self._have_history = False
        self._have_portfolio = False
        # across connections
        self._attempt = 0
        self._relogin_spent = False
        self._pending: dict[int, Pending] = {}
        self._by_rid: dict[str, int] = {}
        self._by_cid: dict[str, list[int]] = {}  # CreateOrder clientOrderId -> keys
        self._unindexed = 0  # pending entries not in _by_cid (matched by a scan)
        self._serial = 0
        self._handlers: dict[type, Callable[[Any, str | None], Any]] = {
            Subscribed: self._on_subscribed, Error: self._on_error, Execution: self._on_execution,
            Portfolio: self._on_portfolio, OrderHistory: self._on_history,
        }

    # ------------------------------------------------------------------ views

    @property
    def live(self) -> bool:
        """Subscribed and reconciled on this connection: new risk may be taken."""
        return self.phase is Phase.LIVE

    @property
    def attempt(self) -> int:
        """Consecutive failed or short connections (the backoff exponent)."""
        return self._attempt

    @property
    def unacknowledged(self) -> list[Send]:
        """Subscriptions sent on this connection and not yet acknowledged."""
        return [Send(rid, intent) for rid, intent in self._acks.items()]

    def next_request_id(self) -> str:
        """A fresh envelope ``id`` (``r1``, ``r2``, ...), unique in this Session."""
        self._ids += 1
        return f"r{self._ids}"

    # ------------------------------------------------------------------ subscriptions

    def want(self, requests: Iterable) -> list[Send]:
        """Add subscriptions to the wanted set; Sends for the new part if a socket is open."""
        new: list[Any] = []
        fresh: dict[str, dict[EventKind, None]] = {}
        for r in requests:
            t = type(r)
            if t is Subscribe:
                for sym in r.symbols:
                    have = self._events.setdefault(sym, {})
                    for kind in r.events:
                        if kind not in have:
                            have[kind] = None
                            fresh.setdefault(sym, {})[kind] = None
            elif t is DepthSubscribe:
                if r.depth > self._depth.get(r.symbol, 0):
                    self._depth[r.symbol] = r.depth
                    new.append(DepthSubscribe(r.symbol, r.depth))
            elif t is MetricsSubscribe:
                if r.account_id not in self._metrics:
                    self._metrics[r.account_id] = None
                    new.append(r)
            else:
                raise UsageError(f"want() takes Subscribe, DepthSubscribe or MetricsSubscribe, not {t.__name__}")
        if self.phase not in _OPEN:
            return []
        return self._track(_group(fresh) + new)

    def _track(self, intents: list[Any]) -> list[Send]:
        sends = [Send(self.next_request_id(), i) for i in intents]
        for s in sends:
            self._acks[s.request_id] = s.intent
        return sends

    def _portfolio_symbols(self) -> tuple[str, ...]:
        symbols = tuple(s for s, kinds in self._events.items() if kinds)
        if symbols:
            return symbols
        known = list(self._events) + list(self._depth)
        return tuple(known[:1])

    # ------------------------------------------------------------------ connection lifecycle

    def logging_in(self, now: float) -> None:
        """``POST /login`` is on its way."""
        if self._settled_or_stopping():
            return
        self._require_closed("logging_in")
        self.phase = Phase.LOGGING_IN

    def logged_in(self, now: float) -> None:
        """The login gave a token: connect next."""
        if self.phase is Phase.LOGGING_IN:
            self.phase = Phase.DISCONNECTED

    def connecting(self, now: float) -> None:
        """The WebSocket handshake is on its way."""
        if self._settled_or_stopping():
            return
        self._require_closed("connecting")
        self.phase = Phase.CONNECTING
        self._opened_at = None

    def opened(self, now: float) -> list[Send]:
        """The socket is up: what to subscribe (never the pending trading requests)."""
        if self._settled_or_stopping():
            return []
        self._require_closed("opened")
        self.phase = Phase.SUBSCRIBING
        self._open = True
        self._opened_at = self._last_rx = now
        self._pinged_at = float("-inf")
        self._acks = {}
        self._history_id = None
        self._have_history = self._have_portfolio = False
        kinds = {s: {k: None for k in ks if k is not EventKind.PORTFOLIO} for s, ks in self._events.items()}
        intents = _group(kinds)
        intents += [DepthSubscribe(s, d) for s, d in self._depth.items()]
        intents += [MetricsSubscribe(a) for a in self._metrics]
        if self.reconcile:
            intents.append(Subscribe(self._portfolio_symbols(), (EventKind.PORTFOLIO,)))
        return self._track(intents)

    def closed(self, now: float, *, code: int | None = None, http_status: int | None = None) -> Reconnect | Stop:
        """The connection (or the attempt to open it) ended: reconnect, or stop."""
        opened_at, self._opened_at = self._opened_at, None
        self._open = False
        self._acks = {}
        if opened_at is not None and now - opened_at >= self.stable_after_s:
            self._attempt = 0
        if self.failure is not None:
            return self.failure
        if self.phase in (Phase.STOPPING, Phase.STOPPED):
            self.phase = Phase.STOPPED
            return _STOPPED
        if code == 4401 or http_status == 401:
            what = "close 4401" if code == 4401 else "HTTP 401"
            if self._relogin_spent:
                return self._fail(f"authentication refused ({what}) again after a new login")
            self._relogin_spent = True
            self.phase = Phase.DISCONNECTED
            return Reconnect(0.0, True, f"authentication refused ({what}): logging in again")
        if http_status is not None and not _transient(http_status):
            return self._fail(f"connection refused with HTTP {http_status}: check the venue URL and account")
        if http_status is not None:
            why = f"connection refused with HTTP {http_status}"
        else:
            why = "connection dropped" if code is None else f"connection closed with code {code}"
        return self._backoff(why, relogin=False)

    def login_failed(self, now: float, *, status: int | None, reason: str) -> Reconnect | Stop:
        """``POST /login`` failed: retry when the server is unreachable or busy, else stop."""
        if self.failure is not None:
            return self.failure
        if self.phase in (Phase.STOPPING, Phase.STOPPED):
            self.phase = Phase.STOPPED
            return _STOPPED
        if status == 401:
            return self._fail(f"login refused: {reason}")
        if status is not None and not _transient(status):
            return self._fail(f"login failed with HTTP {status}: {reason}")
        why = "login server unreachable" if status is None else f"login failed with HTTP {status}"
        return self._backoff(f"{why}: {reason}", relogin=True)

    def stop(self) -> None:
        """Stop on purpose: the next ``closed``/``login_failed`` says Stop(fatal=False)."""
        if self.phase not in _TERMINAL:
            self.phase = Phase.STOPPING

    def _backoff(self, why: str, *, relogin: bool) -> Reconnect:
        base = min(self.backoff_max_s, self.backoff_initial_s * self.backoff_factor ** self._attempt)
        self._attempt += 1
        self.phase = Phase.DISCONNECTED
        delay = base * (0.5 + self._jitter())
        return Reconnect(delay, relogin, f"{why}; retry {self._attempt} in {delay:.2f} s")

    def _fail(self, reason: str) -> Stop:
        self.failure = Stop(reason, fatal=True)
        self.phase = Phase.FAILED
        return self.failure

    def _settled_or_stopping(self) -> bool:
        return self.phase in _TERMINAL or self.phase is Phase.STOPPING

    def _require_closed(self, call: str) -> None:
        if self._open:
            raise UsageError(f"{call}() while a connection is open ({self.phase}): call closed() first")

    # ------------------------------------------------------------------ liveness (PROTOCOL 2)

    def received(self, now: float) -> None:
        """Any frame arrived (message, ping or pong)."""
        self._last_rx = now

    def liveness(self, now: float) -> Liveness:
        """PING once after ``ping_after_s`` of silence, DEAD ``dead_after_s`` after that ping."""
        if not self._open:
            return Liveness.OK
        last = self._last_rx
        if self._pinged_at > last:  # our ping is out, no frame since
            return Liveness.DEAD if now - self._pinged_at >= self.dead_after_s else Liveness.OK
        if now - last >= self.ping_after_s:
            self._pinged_at = now
            return Liveness.PING
        return Liveness.OK

    def next_check(self, now: float) -> float:
        """When ``liveness`` should next be asked (never before ``now``)."""
        if not self._open:
            return now + self.ping_after_s
        if self._pinged_at > self._last_rx:
            return max(now, self._pinged_at + self.dead_after_s)
        return max(now, self._last_rx + self.ping_after_s)

    # ------------------------------------------------------------------ server messages

    def on_event(self, event: Any, request_id: str | None, now: float) -> list[Send]:
        """Every decoded server message: returns what to send because of it (often nothing).

        Returns the Sends to put on the wire; the list may be shared: read it, never mutate it.
        """
        if type(event) is Quote:
            return _NONE
        handler = self._handlers.get(type(event))
        if handler is None:
            return _NONE
        return handler(event, request_id)

    def _on_subscribed(self, s: Subscribed, rid: str | None):
        acks = self._acks
        if rid is not None and rid in acks:
            del acks[rid]
        else:
            for key, intent in acks.items():
                if _echoes(intent, s):
                    del acks[key]
                    break
            else:
                return _NONE
        if acks or self.phase is not Phase.SUBSCRIBING:
            return _NONE
        if not self.reconcile:
            self.phase = Phase.LIVE
            return _NONE
        self.phase = Phase.RECONCILING
        send = Send(self.next_request_id(), OrderHistoryQuery(self.account_id, limit=self.history_limit))
        self._history_id = send.request_id
        return [send]

    def _on_error(self, err: Error, rid: str | None):
        if rid is not None and rid in self._acks:
            return self._refused(self._acks[rid], err)
        if rid is not None and rid == self._history_id and not self._have_history:
            return self._refused(None, err)
        if rid is None and err.client_order_id is None and err.order_id is None:
            if err.request_type in _SUBSCRIPTION_TYPES:
                for intent in self._acks.values():
                    if request_type(intent) == err.request_type:
                        return self._refused(intent, err)
            if err.request_type == "orderHistory" and self.phase is Phase.RECONCILING:
                return self._refused(None, err)
        if rid is not None and (key := self._by_rid.get(rid)) is not None:
            self._resolve(key)
            return _NONE
        for key, p in self._pending.items():
            if _error_answers(p.intent, err):
                self._resolve(key)
                break
        return _NONE

    def _refused(self, intent: Any, err: Error):
        what = _describe(intent) if intent is not None else f"orderHistory of {self.account_id}"
        if self.failure is None:
            self._fail(f"{what} refused: {err.code} ({err.message})")
        return _NONE

    def _on_execution(self, e: Execution, rid: str | None):
        if rid is not None and (key := self._by_rid.get(rid)) is not None:
            self._resolve(key)
        cid = e.client_order_id
        if cid is not None and (keys := self._by_cid.get(cid)) is not None:
            pending = self._pending
            for key in [k for k in keys if pending[k].intent.account_id == e.account_id]:
                self._resolve(key)
        if self._unindexed:
            for key in [k for k, p in self._pending.items() if _answered_by(p.intent, e)]:
                self._resolve(key)
        return _NONE

    def _on_portfolio(self, p: Portfolio, rid: str | None):
        if rid is not None and (key := self._by_rid.get(rid)) is not None:
            self._resolve(key)
        for key in [k for k, q in self._pending.items()
                    if type(q.intent) is AmendPosition and _amended_in(q.intent, p)]:
            self._resolve(key)
        if self._open and p.account_id == self.account_id:
            self._have_portfolio = True
            self._maybe_live()
        return _NONE

    def _on_history(self, h: OrderHistory, rid: str | None):
        if (self.phase is Phase.RECONCILING and h.account_id == self.account_id
                and (rid is None or rid == self._history_id)):
            self._have_history = True
            self._maybe_live()
        return _NONE

    def _maybe_live(self) -> None:
        if self.phase is Phase.RECONCILING and self._have_history and self._have_portfolio:
            self.phase = Phase.LIVE
            self._relogin_spent = False

    # ------------------------------------------------------------------ trading requests

    def sent(self, send_or_intent: Any, now: float) -> None:
        """A trading request went on the wire: pending until the venue answers it."""
        if type(send_or_intent) is Send:
            rid, intent = send_or_intent.request_id, send_or_intent.intent
        else:
            rid, intent = None, send_or_intent
        if not isinstance(intent, _TRADING):
            return
        self._serial += 1
        key = self._serial
        self._pending[key] = Pending(rid, intent, now)
        if rid is not None:
            self._by_rid[rid] = key
        if type(intent) is CreateOrder and intent.client_order_id is not None:
            self._by_cid.setdefault(intent.client_order_id, []).append(key)
        else:
            self._unindexed += 1

    def pending(self) -> list[Pending]:
        """Unanswered trading requests, oldest first."""
        return list(self._pending.values())

    def forget_pending(self) -> None:
        """The caller settled them (by the orderHistory reconciliation)."""
        self._pending.clear()
        self._by_rid.clear()
        self._by_cid.clear()
        self._unindexed = 0

    def _resolve(self, key: int) -> None:
        p = self._pending.pop(key, None)
        if p is None:
            return
        if p.request_id is not None:
            self._by_rid.pop(p.request_id, None)
        cid = getattr(p.intent, "client_order_id", None)
        if type(p.intent) is not CreateOrder or cid is None:
            self._unindexed -= 1
        elif (keys := self._by_cid.get(cid)) is not None:
            if key in keys:
                keys.remove(key)
            if not keys:
                del self._by_cid[cid]


def _group(kinds: dict[str, dict[EventKind, None]]) -> list[Subscribe]:
    """One Subscribe per distinct event set, symbols in the order first wanted."""
    groups: dict[tuple[EventKind, ...], list[str]] = {}
    for sym, ks in kinds.items():
        if ks:
            key = tuple(sorted(ks, key=_KIND_ORDER.__getitem__))
            groups.setdefault(key, []).append(sym)
    return [Subscribe(tuple(syms), events) for events, syms in groups.items()]
