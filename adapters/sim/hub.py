"""The paper-trading server's protocol core, sans-IO: frames in, frames out.

Like h11 it holds no socket, no event loop and no clock: the server hands it
each client text frame (``receive``), each market event (``on_market``) and
the passage of time (``tick``), always with the wall time ``now``, and gets
back a list of ``Send`` (bytes for one connection) and ``Close`` actions to
carry out in order. Everything PROTOCOL sections 3-6 says a server decides is
decided here:

* the check order of section 6: ``RATE_LIMITED`` (a token bucket per
  connection; the message is not processed), the envelope (``BAD_REQUEST``),
  ``UNKNOWN_TYPE``, the shape (``BAD_REQUEST``), ``FORBIDDEN`` (an
  ``accountId`` the token does not carry: one reply for a real account of
  someone else and a made-up id), then what the matching engine decides. A
  frame over ``max_frame`` closes with 1009, an expired token with 4401;
  an ``error`` never closes;
* subscriptions and their snapshots (quotes, depth, portfolio, metrics);
* the delivery rule of 5.1: a connection gets the events of the orders it
  sent (or closed a position with) and of the requests it made, and those of
  other orders of its accounts for the symbols it subscribed with
  ``executionEvent``; never one twice;
* the request ``id`` goes on the direct reply only (section 5.2): the first
  event the engine answers a request with.

Each message is encoded once and its bytes shared by every connection that
gets it: a quote fanned out to 100 connections costs one encode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import attrs
import msgspec

from adapters.sim.matching import MatchingEngine
from adapters.sim.market import synthesize_depth
from adapters.sim.rules import SyntheticDepth
from engine import events as ev
from engine import intents as it
from engine.codec import EVENT_TYPES, decode_request, encode_event, request_type
from engine.enums import ErrorCode, EventKind, OrderStatus
from engine.errors import UsageError, WireError
from risk.throttle import TokenBucket

__all__ = ["Close", "HubConfig", "Hub", "Output", "Send"]

log = logging.getLogger(__name__)

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_US = timedelta(microseconds=1)
_FAR = datetime.max.replace(tzinfo=_UTC)
_FINAL = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED}
)
_QUOTE, _EXECUTION, _PORTFOLIO = EventKind.QUOTE, EventKind.EXECUTION, EventKind.PORTFOLIO
_Execution, _Portfolio, _Error, _Quote = ev.Execution, ev.Portfolio, ev.Error, ev.Quote
_K_EXEC, _K_PORTFOLIO, _K_QUOTE, _K_DEPTH, _K_METRICS = (
    EVENT_TYPES[t] for t in (ev.Execution, ev.Portfolio, ev.Quote, ev.Depth, ev.Metrics)
)

CLOSE_TOO_BIG = 1009
CLOSE_AUTH = 4401


class Send(NamedTuple):
    """Send ``data`` (one text frame, UTF-8 JSON) to connection ``conn``.

    ``kind`` is the message's wire ``type`` (``quoteEvent``, ``executionEvent``,
    ...), so the server can treat kinds apart (conflate quotes for a slow
    reader, never executions; delay or repeat executions as a test fault)
    without reading ``data``. A NamedTuple, not an attrs class: a quote makes
    one per subscribed connection, and ``tuple.__new__`` is three times cheaper.
    """

    conn: int
    data: bytes
    kind: str


class Close(NamedTuple):
    """Close connection ``conn`` with WebSocket close ``code``. The hub has
    already forgotten it (``disconnect`` is not needed, but harmless)."""

    conn: int
    code: int
    reason: str


Output = Send | Close
_new = tuple.__new__  # _new(Send, (conn, data, kind)): no Python-level __new__


_gt, _ge = attrs.validators.gt, attrs.validators.ge


@attrs.frozen
class HubConfig:
    """Server settings of PROTOCOL sections 5-6 (defaults are the simulator's).

    Attributes:
        rate_per_s: messages a second per connection, on average.
        burst: messages a connection may send at once.
        max_frame: largest client frame in bytes; a larger one closes with 1009.
        metrics_interval_s: at most one metricsEvent per this, per connection
            and account (the one right after ``subscribed`` does not count).
        metrics_poll_s: how often price moves are looked for in metrics; a
            change from a fill is looked at at once.
        depth_size: units per level of depth synthesized from a quote (when
            the venue has no synthetic depth of its own configured).
        depth_spacing_ticks: ticks between synthesized levels (likewise).
    """

    rate_per_s: float = attrs.field(default=50, validator=_gt(0))
    burst: int = attrs.field(default=100, validator=_ge(1))
    max_frame: int = attrs.field(default=65536, validator=_ge(1))
    metrics_interval_s: float = attrs.field(default=1.0, validator=_ge(0))
    metrics_poll_s: float = attrs.field(default=0.1, validator=_gt(0))
    depth_size: float = attrs.field(default=1_000_000, validator=_gt(0))
    depth_spacing_ticks: int = attrs.field(default=1, validator=_ge(1))


@attrs.define(eq=False)
class _Conn:
    """One WebSocket session: what its token carries and what it subscribed."""

    id: int
    accounts: tuple[str, ...]  # the token's, in its order
    bucket: TokenBucket
    expires_at: datetime | None
    open: bool = True
    quotes: set[str] = attrs.Factory(set)
    executions: set[str] = attrs.Factory(set)
    portfolio: bool = False
    depth: dict[str, int] = attrs.Factory(dict)  # symbol -> levels
    metrics: dict[str, _MetricsSub] = attrs.Factory(dict)
    account_set: frozenset[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.account_set = frozenset(self.accounts)


@attrs.define(eq=False)
class _MetricsSub:
    """One connection's metrics subscription to one account."""

    conn: _Conn
    account_id: str
    last: tuple  # the fields last sent, without ts
    next_ok: datetime | None = None  # None: a change may go out at once


class _Origin:
    """The origin tag a request goes to the engine with: who asked, under
    which ``id``, and whether its direct reply has gone out yet."""

    __slots__ = ("conn", "id", "answered")

    def __init__(self, conn: _Conn, id: str | None) -> None:
        self.conn = conn
        self.id = id
        self.answered = False


class _PeekBody(msgspec.Struct, rename="camel"):
    client_order_id: Any = None
    order_id: Any = None


class _Peek(msgspec.Struct):
    type: Any = None
    id: Any = None
    payload: _PeekBody | None = None


class _Head(msgspec.Struct):
    type: Any = None
    id: Any = None


_peek_decoder = msgspec.json.Decoder(_Peek)
_head_decoder = msgspec.json.Decoder(_Head)


def _str64(x: Any) -> str | None:
    return x if type(x) is str and 0 < len(x) <= 64 else None


def _peek(data: bytes | str) -> tuple[str | None, str | None, str | None, str | None]:
    """(type, id, clientOrderId, orderId) of a message that failed its checks,
    as far as they can be read, for the ``error`` that answers it."""
    try:
        p = _peek_decoder.decode(data)
        body = p.payload or _PeekBody()
        return _str64(p.type), _str64(p.id), _str64(body.client_order_id), _str64(body.order_id)
    except (msgspec.DecodeError, UnicodeError):
        pass
    try:
        h = _head_decoder.decode(data)
        return _str64(h.type), _str64(h.id), None, None
    except (msgspec.DecodeError, UnicodeError):
        return None, None, None, None


def _us(t: datetime) -> int:
    return (t - _EPOCH) // _US


def _metric_fields(m: ev.Metrics) -> tuple:
    return msgspec.structs.astuple(m)[:-1]  # all but ts


class Hub:
    """The server's protocol state over one matching engine.

    Args:
        engine: the venue; the hub routes its replies (and turns its
            portfolio events on).
        config: server settings.
        venue_time: wall time -> venue time, the ``sent_at`` of requests
            (PROTOCOL 7: a request arrives at send time + latency); default:
            the venue clock, the time of the latest market event.
    """

    def __init__(
        self,
        engine: MatchingEngine,
        config: HubConfig = HubConfig(),
        venue_time: Callable[[datetime], datetime] | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        engine.portfolio_events = True
        self._venue_time = venue_time
        self._conns: dict[int, _Conn] = {}
        self._by_account: dict[str, dict[int, _Conn]] = {}
        self._quote_subs: dict[str, dict[int, _Conn]] = {}
        self._depth_subs: dict[str, dict[int, _Conn]] = {}
        self._portfolio_subs: dict[str, dict[int, _Conn]] = {}
        self._metrics_subs: dict[tuple[int, str], _MetricsSub] = {}
        self._metrics_due = _FAR
        self._metrics_kick = False
        self._interval = timedelta(seconds=config.metrics_interval_s)
        self._poll = timedelta(seconds=config.metrics_poll_s)
        self._next_expiry = _FAR
        self._owners: dict[str, _Conn] = {}  # working order id -> the connection that sent it
        self._synth: dict[int, SyntheticDepth] = {}
        self._handlers: dict[type, Callable] = {
            it.Subscribe: self._subscribe,
            it.Unsubscribe: self._unsubscribe,
            it.DepthSubscribe: self._depth_subscribe,
            it.DepthUnsubscribe: self._depth_unsubscribe,
            it.MetricsSubscribe: self._metrics_subscribe,
            it.CreateOrder: self._trade,
            it.CancelOrder: self._trade,
            it.AmendOrder: self._trade,
            it.ClosePosition: self._trade,
            it.AmendPosition: self._trade,
            it.OrderHistoryQuery: self._history,
            it.PositionHistoryQuery: self._history,
            it.DealHistoryQuery: self._history,
        }
        self._history_of = {
            it.OrderHistoryQuery: engine.order_history,
            it.PositionHistoryQuery: engine.position_history,
            it.DealHistoryQuery: engine.deal_history,
        }
        # statistics
        self._received = 0
        self._sent = 0
        self._encoded = 0
        self._errors: dict[str, int] = {}
        self._closes: dict[int, int] = {}

    # ------------------------------------------------------------ connections

    def connect(
        self, conn: int, accounts: Collection[str], now: datetime,
        expires_at: datetime | None = None,
    ) -> list[Output]:
        """A session opened with a valid token carrying ``accounts``, valid
        until ``expires_at``. Connection ids must not be reused."""
        if conn in self._conns:
            raise UsageError(f"connection {conn} is open already")
        c = _Conn(conn, tuple(dict.fromkeys(accounts)),
                  TokenBucket(self.config.rate_per_s, self.config.burst), expires_at)
        self._conns[conn] = c
        for a in c.accounts:
            self._by_account.setdefault(a, {})[conn] = c
        if expires_at is not None:
            if expires_at <= now:
                return self._close(c, CLOSE_AUTH, "token expired")
            self._next_expiry = min(self._next_expiry, expires_at)
        return []

    def disconnect(self, conn: int) -> None:
        """Forget a connection and its subscriptions (idempotent). Its orders
        stay; their events go to the connections subscribed to them."""
        c = self._conns.pop(conn, None)
        if c is None:
            return
        c.open = False
        for index, keys in (
            (self._by_account, c.accounts), (self._quote_subs, c.quotes),
            (self._depth_subs, c.depth), (self._portfolio_subs, c.accounts if c.portfolio else ()),
        ):
            for key in keys:
                subs = index.get(key)
                if subs is not None:
                    subs.pop(conn, None)
                    if not subs:
                        del index[key]
        for a in c.metrics:
            self._metrics_subs.pop((conn, a), None)

    def _close(self, c: _Conn, code: int, reason: str) -> list[Output]:
        self.disconnect(c.id)
        self._closes[code] = self._closes.get(code, 0) + 1
        return [Close(c.id, code, reason)]

    # ------------------------------------------------------------ client frames

    def receive(self, conn: int, data: bytes | str, now: datetime) -> list[Output]:
        """One client frame: ``str`` for a text frame, ``bytes`` for a binary
        one (refused with ``BAD_REQUEST``). Frames of an unknown (closed)
        connection are ignored."""
        c = self._conns.get(conn)
        if c is None:
            return []
        self._received += 1
        limit = self.config.max_frame
        n = len(data)
        if n > limit or (
            type(data) is str and n * 4 > limit
            and len(data.encode("utf-8", "surrogatepass")) > limit
        ):
            return self._close(c, CLOSE_TOO_BIG, f"message over {limit} bytes")
        if c.expires_at is not None and now >= c.expires_at:
            return self._close(c, CLOSE_AUTH, "token expired")
        out: list[Output] = []
        if not c.bucket.try_take(_us(now)):
            self._refuse(c, data, ErrorCode.RATE_LIMITED,
                         f"over {self.config.rate_per_s} messages a second; not processed", out)
            return out
        if type(data) is not str:
            self._refuse(c, data, ErrorCode.BAD_REQUEST, "binary frames are not accepted", out)
            return out
        try:
            intent, rid = decode_request(data)
        except WireError as exc:
            self._refuse(c, data, exc.code, str(exc), out)
            return out
        try:
            self._handlers[type(intent)](c, intent, rid, now, out)
        except Exception as exc:  # a bug of ours: answer, keep the connection and the server
            log.exception("request %s on connection %d failed", request_type(intent), conn)
            self._error(c, ErrorCode.INTERNAL, f"internal error ({type(exc).__name__})",
                        intent, rid, out)
        if self._metrics_kick or now >= self._metrics_due:
            self._eval_metrics(now, out)
        return out

    def _refuse(self, c: _Conn, data, code: ErrorCode, message: str, out) -> None:
        """An error for a message that was not decoded (rate, envelope, type, shape)."""
        rtype, rid, coid, oid = _peek(data)
        self._send_error(c, ev.Error(code, message, rtype, coid, oid), rid, out)

    def _error(self, c: _Conn, code: ErrorCode, message: str, intent, rid, out) -> None:
        err = ev.Error(
            code, message, request_type(intent), getattr(intent, "client_order_id", None),
            getattr(intent, "order_id", None),
        )
        self._send_error(c, err, rid, out)

    def _send_error(self, c: _Conn, err: ev.Error, rid: str | None, out) -> None:
        self._errors[err.code] = self._errors.get(err.code, 0) + 1
        self._reply(c, err, rid, out)

    def _encode(self, payload: ev.Event, rid: str | None = None) -> bytes:
        self._encoded += 1
        return encode_event(payload, rid)

    def _send(self, c: _Conn, data: bytes, kind: str, out) -> None:
        self._sent += 1
        out.append(_new(Send, (c.id, data, kind)))

    def _reply(self, c: _Conn, payload: ev.Event, rid: str | None, out) -> None:
        """Encode ``payload`` for ``c`` alone."""
        self._send(c, self._encode(payload, rid), EVENT_TYPES[type(payload)], out)

    def _unknown_symbols(self, c: _Conn, symbols, intent, rid, out) -> bool:
        unknown = [s for s in symbols if s not in self.engine.instruments]
        if unknown:
            self._error(c, ErrorCode.UNKNOWN_SYMBOL, f"unknown symbols {unknown}", intent, rid, out)
        return bool(unknown)

    def _forbidden(self, c: _Conn, intent, rid, out) -> bool:
        # the same words for a real account of someone else and a made-up id
        if intent.account_id in c.account_set:
            return False
        self._error(c, ErrorCode.FORBIDDEN, "accountId is not one of this session's accounts",
                    intent, rid, out)
        return True

    # ------------------------------------------------------------ subscriptions

    def _subscribe(self, c: _Conn, s: it.Subscribe, rid, now: datetime, out) -> None:
        if self._unknown_symbols(c, s.symbols, s, rid, out):
            return
        symbols = tuple(dict.fromkeys(s.symbols))
        kinds = set(s.events)
        new_quotes = []
        if _QUOTE in kinds:
            for sym in symbols:
                if sym not in c.quotes:
                    c.quotes.add(sym)
                    self._quote_subs.setdefault(sym, {})[c.id] = c
                    new_quotes.append(sym)
        if _EXECUTION in kinds:
            c.executions.update(symbols)
        new_portfolio = _PORTFOLIO in kinds and not c.portfolio
        if new_portfolio:
            c.portfolio = True
            for a in c.accounts:
                self._portfolio_subs.setdefault(a, {})[c.id] = c
        self._reply(c, ev.Subscribed(symbols=s.symbols, events=s.events), rid, out)
        quotes = self.engine.quotes
        for sym in new_quotes:
            q = quotes.get(sym)
            if q is not None:
                self._reply(c, q, None, out)
        if new_portfolio:
            for a in c.accounts:
                if a in self.engine.accounts:
                    self._reply(c, self.engine.portfolio(a), None, out)

    def _unsubscribe(self, c: _Conn, s: it.Unsubscribe, rid, now: datetime, out) -> None:
        if self._unknown_symbols(c, s.symbols, s, rid, out):
            return
        kinds = set(s.events)
        if _QUOTE in kinds:
            for sym in s.symbols:
                if sym in c.quotes:
                    c.quotes.discard(sym)
                    self._unindex(self._quote_subs, sym, c.id)
        if _EXECUTION in kinds:
            c.executions.difference_update(s.symbols)
        if _PORTFOLIO in kinds and c.portfolio:
            c.portfolio = False
            for a in c.accounts:
                self._unindex(self._portfolio_subs, a, c.id)
        self._reply(c, ev.Unsubscribed(symbols=s.symbols, events=s.events), rid, out)

    @staticmethod
    def _unindex(index: dict, key, conn: int) -> None:
        subs = index.get(key)
        if subs is not None:
            subs.pop(conn, None)
            if not subs:
                del index[key]

    def _depth_subscribe(self, c: _Conn, d: it.DepthSubscribe, rid, now: datetime, out) -> None:
        if self._unknown_symbols(c, (d.symbol,), d, rid, out):
            return
        old = c.depth.get(d.symbol)
        c.depth[d.symbol] = d.depth
        self._depth_subs.setdefault(d.symbol, {})[c.id] = c
        self._reply(c, ev.Subscribed(symbol=d.symbol, depth=d.depth), rid, out)
        if old != d.depth:  # new, or a new depth: a new snapshot
            snap = self._depth_snapshot(d.symbol, d.depth)
            if snap is not None:
                self._reply(c, snap, None, out)

    def _depth_unsubscribe(self, c: _Conn, d: it.DepthUnsubscribe, rid, now: datetime, out) -> None:
        if self._unknown_symbols(c, (d.symbol,), d, rid, out):
            return
        if c.depth.pop(d.symbol, None) is not None:
            self._unindex(self._depth_subs, d.symbol, c.id)
        self._reply(c, ev.Unsubscribed(symbol=d.symbol), rid, out)

    def _metrics_subscribe(self, c: _Conn, m: it.MetricsSubscribe, rid, now: datetime, out) -> None:
        if self._forbidden(c, m, rid, out):
            return
        a = m.account_id
        first = None if a in c.metrics else self.engine.metrics(a)
        self._reply(c, ev.Subscribed(account_id=a), rid, out)
        if first is not None:
            sub = _MetricsSub(c, a, _metric_fields(first))
            c.metrics[a] = self._metrics_subs[(c.id, a)] = sub
            self._metrics_due = min(self._metrics_due, now + self._poll)
            self._reply(c, first, None, out)  # does not count against the throttle

    # ------------------------------------------------------------ trading and history

    def _trade(self, c: _Conn, intent: it.TradingIntent, rid, now: datetime, out) -> None:
        if self._forbidden(c, intent, rid, out):
            return
        replies = self.engine.submit(intent, origin=_Origin(c, rid), sent_at=self.submit_time(now))
        if replies:
            self._route(replies, out)

    def _history(self, c: _Conn, q: it.HistoryQuery, rid, now: datetime, out) -> None:
        if self._forbidden(c, q, rid, out):
            return
        self._reply(c, self._history_of[type(q)](q), rid, out)

    def submit_time(self, now: datetime) -> datetime:
        """The venue time a request sent at wall time ``now`` is sent at."""
        return self.engine.clock.now if self._venue_time is None else self._venue_time(now)

    # ------------------------------------------------------------ routing engine replies

    def _route(self, replies, out) -> None:
        """Deliver the engine's replies under PROTOCOL 5.1 and 5.2."""
        for event, to in replies:
            direct = None
            if type(to) is _Origin:
                if not to.answered:
                    to.answered = True
                    direct = to
                origin = to.conn if to.conn.open else None
            else:
                origin = None
            kind = type(event)
            if kind is _Execution:
                self._route_execution(event, origin, direct, out)
            elif kind is _Portfolio:
                self._route_portfolio(event, origin, direct, out)
            elif kind is _Error:
                if origin is not None:
                    self._send_error(origin, event, direct.id if direct else None, out)
            else:  # a bug of the engine's: not worth a dead server
                log.error("the engine replied with a %s; dropped", kind.__name__)
        if self._metrics_subs:
            self._metrics_kick = True

    def _route_execution(self, e: ev.Execution, origin, direct, out) -> None:
        owners = self._owners
        oid = e.order_id
        if e.status is OrderStatus.NEW:
            if origin is not None:
                owners[oid] = origin
            owner = origin
        elif e.status in _FINAL:
            owner = owners.pop(oid, None)
        else:
            owner = owners.get(oid)
        if owner is not None and not owner.open:
            owner = None
        shared = None
        if origin is not None:
            if direct is not None and direct.id is not None:
                self._reply(origin, e, direct.id, out)
            else:
                shared = self._encode(e)
                self._send(origin, shared, _K_EXEC, out)
        if owner is not None and owner is not origin:
            if shared is None:
                shared = self._encode(e)
            self._send(owner, shared, _K_EXEC, out)
        conns = self._by_account.get(e.account_id)
        if conns:
            sym = e.symbol
            for c in conns.values():
                if sym in c.executions and c is not origin and c is not owner:
                    if shared is None:
                        shared = self._encode(e)
                    self._sent += 1
                    out.append(_new(Send, (c.id, shared, _K_EXEC)))

    def _route_portfolio(self, p: ev.Portfolio, origin, direct, out) -> None:
        skip = None
        if direct is not None and origin is not None:  # amendPosition's answer
            self._reply(origin, p, direct.id, out)
            skip = origin
        subs = self._portfolio_subs.get(p.account_id)
        if subs:
            data = None
            for c in subs.values():
                if c is not skip:
                    if data is None:
                        data = self._encode(p)
                    self._sent += 1
                    out.append(_new(Send, (c.id, data, _K_PORTFOLIO)))

    # ------------------------------------------------------------ market and time

    def on_market(self, event: ev.Quote | ev.Depth, now: datetime) -> list[Output]:
        """A market event: the venue takes it (fills, SL/TP, arrivals), then
        its subscribers see it (PROTOCOL 7: executions before the quote)."""
        engine = self.engine
        sym = event.symbol
        is_quote = type(event) is _Quote
        before = None if is_quote else engine.quotes.get(sym)
        replies = engine.on_market(event)
        out: list[Output] = []
        if replies:
            self._route(replies, out)
        subs = self._quote_subs.get(sym)
        if subs:
            q = event if is_quote else engine.quotes.get(sym)
            if q is not None and q is not before:
                data = self._encode(q)
                self._sent += len(subs)
                out += [_new(Send, (cid, data, _K_QUOTE)) for cid in subs]
        dsubs = self._depth_subs.get(sym)
        if dsubs and (is_quote is False or sym not in engine.depths):
            self._fan_depth(sym, dsubs, out)
        if self._metrics_kick or now >= self._metrics_due:
            self._eval_metrics(now, out)
        return out

    def tick(self, now: datetime) -> list[Output]:
        """Time passes: metrics that are due, sessions whose token expired (4401).
        Call it every ``metrics_poll_s`` or so."""
        out: list[Output] = []
        if now >= self._next_expiry:
            nxt = _FAR
            for c in list(self._conns.values()):
                if c.expires_at is not None:
                    if c.expires_at <= now:
                        out += self._close(c, CLOSE_AUTH, "token expired")
                    else:
                        nxt = min(nxt, c.expires_at)
            self._next_expiry = nxt
        if self._metrics_kick or now >= self._metrics_due:
            self._eval_metrics(now, out)
        return out

    def _fan_depth(self, sym: str, dsubs: dict[int, _Conn], out) -> None:
        encoded: dict[int, bytes | None] = {}
        for cid, c in dsubs.items():
            n = c.depth[sym]
            data = encoded.get(n, b"")
            if data == b"":
                snap = self._depth_snapshot(sym, n)
                data = encoded[n] = None if snap is None else self._encode(snap)
            if data is not None:
                self._sent += 1
                out.append(_new(Send, (cid, data, _K_DEPTH)))

    def _depth_snapshot(self, sym: str, n: int) -> ev.Depth | None:
        """The top ``n`` levels: recorded depth if the feed has it, else made
        from the latest quote as the venue's synthetic depth would be."""
        d = self.engine.depths.get(sym)
        if d is not None:
            if len(d.bids) <= n and len(d.asks) <= n:
                return d
            return ev.Depth(symbol=sym, bids=d.bids[:n], asks=d.asks[:n], ts=d.ts)
        q = self.engine.quotes.get(sym)
        if q is None:
            return None
        synth = self._synth.get(n)
        if synth is None:
            own = self.engine.config.synthetic_depth
            size = own.size if own is not None else self.config.depth_size
            ticks = own.spacing_ticks if own is not None else self.config.depth_spacing_ticks
            synth = self._synth[n] = SyntheticDepth(levels=n, size=size, spacing_ticks=ticks)
        return synthesize_depth(q, synth, self.engine.instruments[sym])

    def _eval_metrics(self, now: datetime, out) -> None:
        """Send each metrics subscription whose account changed and whose
        throttle allows; plan the next look."""
        self._metrics_kick = False
        due = _FAR
        poll = now + self._poll
        computed: dict[str, tuple[tuple, ev.Metrics, list]] = {}
        for sub in self._metrics_subs.values():
            if sub.next_ok is not None and sub.next_ok > now:
                if sub.next_ok < due:
                    due = sub.next_ok
                continue
            a = sub.account_id
            got = computed.get(a)
            if got is None:
                m = self.engine.metrics(a)
                got = computed[a] = (_metric_fields(m), m, [])
            fields, m, data = got
            if fields != sub.last:
                if not data:
                    data.append(self._encode(m))
                sub.last = fields
                sub.next_ok = nxt = now + self._interval
                self._sent += 1
                out.append(_new(Send, (sub.conn.id, data[0], _K_METRICS)))
                if nxt < due:
                    due = nxt
            elif poll < due:
                due = poll
        self._metrics_due = due

    # ------------------------------------------------------------ statistics

    def statistics(self) -> dict:
        """Counters for monitoring and tests (trio style ``statistics()``)."""
        return {
            "connections": len(self._conns),
            "received": self._received,
            "sent": self._sent,
            "encoded": self._encoded,
            "errors": dict(self._errors),
            "closes": dict(self._closes),
            "quote_subscriptions": sum(len(s) for s in self._quote_subs.values()),
            "depth_subscriptions": sum(len(s) for s in self._depth_subs.values()),
            "metrics_subscriptions": len(self._metrics_subs),
            "working_orders_tracked": len(self._owners),
        }
