"""The paper-trading server: the sans-IO ``Hub`` served over real HTTP and WebSocket.

    triotrade sim --config configs/sim.yaml [--memory]

This module is only wiring (the protocol decisions are ``adapters.sim.hub``'s,
the tokens ``adapters.sim.auth``'s, the market ``adapters.sim.market``'s):

* an ASGI app served by hypercorn's trio worker: ``POST /api/v1/login``
  (password hashing in a worker thread, the body capped), and
  ``GET /api/v1/ws?token=...``, refused with HTTP 401 before the upgrade
  when the token is missing, malformed, expired, badly signed or not HS256;
* per WebSocket one reader (frames -> ``hub.receive``) and one writer that
  drains a byte-counted queue. The hub's outputs are pushed onto the queues
  without awaiting (a quote fanned out to 200 connections never waits for
  one of them). Above a quarter of ``send_buffer_limit`` a connection's
  quotes conflate per symbol (the latest replaces the one still waiting;
  executions never do); a connection whose queue stays over
  ``send_buffer_limit`` for ``slow_reader_s`` is dropped (1008 when the
  close frame can still go out; a stuck socket is reset, which a client
  treats the same way);
* a market task publishing the schedule at its times, a tick task (token
  expiry, metrics), graceful shutdown (every WebSocket closed with 1001);
* a loopback-only fault control (``server.admin: true``):
  ``POST /admin/faults`` with ``{"action": "drop" | "expire", "conn"?: int}``,
  ``{"action": "delay_executions", "seconds": s}``,
  ``{"action": "duplicate_executions", "enabled": bool}``,
  ``{"action": "pings", "enabled": bool}``, ``{"action": "step", "events": n}``
  (a lock-step replay, ``market.replay.step: true``: publish the next n market
  events; in process, ``SimServer.step(n)``); ``GET /admin/connections``,
  ``GET /admin/statistics``.

Nothing logs a password or a token: hypercorn's access log (which would show
the WebSocket URL and its token) is off.

The REST equivalents of PROTOCOL 4 (``/api/v1/accounts/{accountId}/...``,
``Authorization: Bearer <token>``) answer with the direct reply's payload
(200) or the ``error`` payload under a 4xx status.

Durable state (``adapters.sim.store``): at start the engine is restored
from the store's SQLite file (``store:`` in the config, default
``sim-state.sqlite3`` next to it; ``--memory`` keeps nothing), and accounts of
the config it does not hold yet are opened; a restored account keeps its
stored balance. What changed is written every ``server.save_interval_s``
(0.5 s: only the rows that changed, in one transaction, in the trio thread,
typically well under a millisecond) and once more at shutdown, after the
WebSockets are closed. A crash (not a shutdown) may lose the last interval.
Requests in flight (venue latency) and latest quotes are not kept.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import signal
import socket as stdlib_socket
import sqlite3
import struct
from collections import deque
from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import attrs
import hypercorn.config
import hypercorn.trio
import msgspec
import trio

from adapters.sim.auth import AuthError, Authenticator, TokenIssuer, secret_from_env
from adapters.sim.hub import Close, Hub, Send
from adapters.sim.market import replay_schedule, synthetic_schedule
from adapters.sim.matching import MatchingEngine
from adapters.sim.simconfig import SimConfig, load_sim_config
from adapters.sim.store import MEMORY, Store
from engine.clock import WallClock
from engine.errors import ConfigError, TriotradeError, UsageError

__all__ = ["SimServer", "main", "serve_sim"]

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_AUTH = 4401
TICK_S = 0.1
MARKET_GRAIN_S = 0.001
"""Market events are published up to this late, due ones together."""
FAST_HIGH_WATER = 64 * 1024
"""As-fast-as-possible replay waits while a connection holds more unsent bytes."""
_EXEC = "executionEvent"
_QUOTE = "quoteEvent"
_QUOTE_PREFIX = b'{"type":"quoteEvent","payload":{"symbol":"'
_SYMBOL_AT = len(_QUOTE_PREFIX)
_LOOPBACK = ("127.", "::1", "localhost")
_json = msgspec.json.Encoder()
_ACCOUNTS = "/api/v1/accounts/"
REST_TIMEOUT_S = 5.0

_HTTP_STATUS = {
    "BAD_REQUEST": 400, "UNKNOWN_TYPE": 400, "FORBIDDEN": 403, "UNKNOWN_SYMBOL": 404,
    "UNKNOWN_ORDER": 404, "UNKNOWN_POSITION": 404, "INVALID_ORDER": 422, "NOT_AMENDABLE": 409,
    "INSUFFICIENT_MARGIN": 422, "DUPLICATE_CLIENT_ORDER_ID": 409, "RATE_LIMITED": 429, "INTERNAL": 500,
}
"""HTTP status of a REST request answered by an ``error`` of that code."""
_REST_ROUTES = {
    ("POST", "orders"): ("createOrder", None),
    ("DELETE", "orders", "*"): ("cancelOrder", "orderId"),
    ("PATCH", "orders", "*"): ("amendOrder", "orderId"),
    ("DELETE", "positions", "*"): ("closePosition", "positionId"),
    ("PATCH", "positions", "*"): ("amendPosition", "positionId"),
    ("GET", "orders", "history"): ("orderHistory", None),
    ("GET", "positions", "history"): ("positionHistory", None),
    ("GET", "deals", "history"): ("dealHistory", None),
}
"""(method, path after the account id) -> (message type, path id field)."""


_WALL = WallClock()


@attrs.define(eq=False)
class _Session:
    """One WebSocket: its outbound queue and how to end it."""

    conn: int
    username: str
    accounts: tuple[str, ...]
    limit: int
    queue: deque = attrs.Factory(deque)
    queued: int = 0  # bytes in ``queue``
    over_since: float | None = None  # trio time the queue went over ``limit``
    lot: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)
    closing: tuple[int, str] | None = None
    scope: trio.CancelScope | None = None
    socket: Any = None  # the trio socket under hypercorn's stream, when found
    gone: trio.Event = attrs.Factory(trio.Event)
    waiting_quotes: dict[bytes, list] = attrs.Factory(dict)  # symbol -> its queued cell
    dead: int = 0  # conflated cells still in ``queue``
    delayed: deque = attrs.Factory(deque)  # (trio time, frame): the delay fault
    conflated: int = 0
    soft: int = attrs.field(init=False)

    @soft.default
    def _soft(self) -> int:
        return self.limit // 4  # quotes conflate above this many unsent bytes

    def push(self, data: bytes) -> None:
        if self.closing is not None:
            return
        self.queue.append(data)
        self.queued += len(data)
        if self.queued > self.limit and self.over_since is None:
            self.over_since = trio.current_time()
        if self.lot:
            self.lot.unpark_all()

    def push_quote(self, data: bytes, sym: bytes | None) -> None:
        """A quote (of ``sym``, see ``_quote_symbol``) for a backlogged
        reader: it replaces the symbol's quote still waiting (STYLE 5: quotes
        conflate, executions never). The new one goes to the back, so it
        stays behind the executions it caused."""
        if sym is None or self.closing is not None:
            return self.push(data)
        old = self.waiting_quotes.get(sym)
        if old is not None:  # leave a dead cell; the writer skips it
            self.queued -= len(old[0])
            old[0] = None
            self.dead += 1
            self.conflated += 1
            if self.dead > 64 and self.dead * 2 > len(self.queue):
                self.queue = deque(x for x in self.queue if type(x) is not list or x[0] is not None)
                self.dead = 0
        cell = self.waiting_quotes[sym] = [data, sym]
        self.queue.append(cell)
        self.queued += len(data)
        if self.lot:
            self.lot.unpark_all()

    def pop(self) -> bytes | None:
        """The next frame to send (None: a conflated quote's dead cell)."""
        item = self.queue.popleft()
        if type(item) is list:
            data, sym = item
            if data is None:
                self.dead -= 1
                return None
            del self.waiting_quotes[sym]
        else:
            data = item
        self.queued -= len(data)
        if self.over_since is not None and self.queued <= self.limit:
            self.over_since = None
        return data

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
            self.lot.unpark_all()


def _quote_symbol(data: bytes) -> bytes | None:
    """The symbol of an encoded quoteEvent, read without decoding it."""
    if not data.startswith(_QUOTE_PREFIX):
        return None
    end = data.find(b'"', _SYMBOL_AT)
    return data[_SYMBOL_AT:end] if end > 0 else None


@attrs.define
class _Faults:
    exec_delay_s: float = 0.0
    duplicate_executions: bool = False


def _find_socket() -> Any:
    """The trio socket of the TCP connection the current ASGI task serves.

    ASGI gives no handle on the socket, yet a client that does not read
    leaves hypercorn's (shielded) ``send_all`` blocked for good, and the
    abrupt-drop fault needs to cut the connection. The app task runs in a
    nursery of the task trio's ``serve_listeners`` started for the
    connection, whose frames hold the stream. None if trio or hypercorn
    change shape (then drop and 1008 only stop our side; the socket goes
    when the peer does)."""
    try:
        parent = trio.lowlevel.current_task().parent_nursery.parent_task
        for frame, _ in parent.iter_await_frames():
            stream = frame.f_locals.get("stream")
            if isinstance(stream, trio.SocketStream):
                return stream.socket
    except Exception:  # noqa: BLE001 - best effort by design
        pass
    return None


def _reset(sock: Any) -> None:
    """Close a socket with a TCP reset (no close frame, no FIN)."""
    if sock is None:
        return
    try:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class SimServer:
    """The server's state and its ASGI app (``__call__``).

    Args:
        config: the sim configuration.
        env: where the token secret and ``password_env`` passwords are read.
    """

    def __init__(self, config: SimConfig, env: Mapping[str, str] = os.environ) -> None:
        self.config = config
        self.engine = MatchingEngine(config.instrument_map(), config.venue.to_venue())
        self.store, self._marks = self._open_store(config.store or MEMORY)
        for a in config.accounts:
            if a.id not in self.engine.accounts:
                self.engine.open_account(a.id, a.currency, a.balance)
        self.save()
        self.hub = Hub(self.engine, config.hub)
        users = {u.username: u.to_user(env) for u in config.users}
        self.issuer = TokenIssuer(secret_from_env(config.auth.secret_env, env), config.auth.lifetime)
        self.auth = Authenticator(users, self.issuer)
        self.sessions: dict[int, _Session] = {}
        self.faults = _Faults()
        self.port: int | None = None
        self.market_events = 0
        self._steps = 0  # lock-step replay: events released and not yet published
        self._step_lot = trio.lowlevel.ParkingLot()
        self._ids = itertools.count(1)
        self._stop = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._hconfig: hypercorn.config.Config | None = None

    # ------------------------------------------------------------ state

    def _open_store(self, path: str) -> tuple[Store, dict | None]:
        """Open the store and restore the engine from it (ConfigError ``store`` if it cannot)."""
        try:
            store = Store(path)
            snap = store.load()
            if snap is None:
                return store, None
            self.engine.restore(snap)
        except (OSError, sqlite3.Error, ValueError, KeyError, UsageError) as exc:
            raise ConfigError("store", f"cannot restore the state in {path}: {exc}") from None
        log.info("state restored from %s: %d accounts, %d orders", path, len(snap["accounts"]),
                 sum(len(a["orders"]) for a in snap["accounts"].values()))
        return store, self.engine.snapshot()["marks"]

    def save(self) -> int:
        """Write what changed since the last save; returns the rows written."""
        snap = self.engine.snapshot(since=self._marks)
        rows = self.store.save(snap)
        self._marks = snap["marks"]
        return rows

    async def _saver(self) -> None:
        interval = self.config.server.save_interval_s
        while True:
            await trio.sleep(interval)
            try:
                self.save()
            except sqlite3.Error:
                log.exception("saving the state failed (tried again in %s s)", interval)

    # ------------------------------------------------------------ running

    async def serve(self, host: str = "127.0.0.1", port: int = 0,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(port)`` once listening."""
        hc = hypercorn.config.Config()
        hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        hc.accesslog = None  # it would log the WebSocket URL, token included
        hc.errorlog = logging.getLogger("hypercorn.error")  # through logging, configured by the caller
        hc.websocket_ping_interval = self.config.server.ping_interval_s
        hc.websocket_max_message_size = self.config.hub.max_frame  # 1009 above it
        hc.graceful_timeout = 1.0
        self._hconfig = hc
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                binds = await nursery.start(self._run_http, hc)
                self.port = int(binds[0].rsplit(":", 1)[1])
                nursery.start_soon(self._market)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._saver)
                task_status.started(self.port)
                try:
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True) as cs:
                        cs.deadline = trio.current_time() + self.config.server.shutdown_grace_s
                        await self.close_all(CLOSE_GOING_AWAY, "server shutting down")
                    self._stop.set()
                    nursery.cancel_scope.cancel()
        finally:
            self.close_store()

    def close_store(self) -> None:
        """Flush the state (shutdown: nothing can change it any more) and close the store."""
        try:
            self.save()
        except sqlite3.Error:
            log.exception("saving the state at shutdown failed")
        self.store.close()

    async def _run_http(self, hc, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # Shielded: a cancelled serve() must still close its WebSockets with
        # 1001 through hypercorn before hypercorn stops (on ``_stop``).
        with trio.CancelScope(shield=True):
            await hypercorn.trio.serve(self, hc, shutdown_trigger=self._stop.wait,
                                       task_status=task_status)

    async def close_all(self, code: int, reason: str) -> None:
        """Close every WebSocket with ``code`` and wait (within the caller's
        deadline) until they are gone; the stuck ones are reset."""
        sessions = list(self.sessions.values())
        for s in sessions:
            self.hub.disconnect(s.conn)
            s.close(code, reason)
        try:
            for s in sessions:
                await s.gone.wait()
        finally:
            for s in sessions:
                if not s.gone.is_set():
                    _reset(s.socket)

    def _schedule(self):
        m = self.config.market
        if m.synthetic is not None:
            s = m.synthetic
            return synthetic_schedule(s.symbols, seed=s.seed, rate_per_s=s.rate_per_s,
                                      start=_WALL.now, depth=s.depth)
        r = m.replay
        return replay_schedule(r.feed, speed=r.speed, loop=r.loop)

    @property
    def stepping(self) -> bool:
        """A lock-step replay (``market.replay.step``): events go out only when released."""
        replay = self.config.market.replay
        return replay is not None and replay.step

    def step(self, n: int = 1) -> None:
        """Release the next ``n`` market events of a lock-step replay. They are
        published by the market task at its next turn, in order, as at any
        other time (the venue takes each first); events past the end of a
        feed that does not loop are never published.

        Raises:
            UsageError: the market is not a lock-step replay, or ``n`` < 1.
        """
        if not self.stepping:
            raise UsageError("step: the market is not a lock-step replay (market.replay.step)")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"step: events must be a whole number >= 1, got {n!r}")
        self._steps += n
        self._step_lot.unpark_all()

    async def _market(self) -> None:
        """Publish each market event at its time (PROTOCOL 7: the venue takes it first);
        in a lock-step replay, when ``step`` released it."""
        fast = self.config.market.replay is not None and self.config.market.replay.speed is None
        stepping = self.stepping
        start = trio.current_time()
        hub, dispatch = self.hub, self._dispatch
        behind = 0
        for at, event in self._schedule():
            due = start + at
            if stepping:  # released: due now (several released go out as a catching-up batch)
                while not self._steps:
                    await self._step_lot.park()
                self._steps -= 1
                due = start
            if due > trio.current_time():
                # a grain late, so that a busy feed goes out in batches rather
                # than one scheduler round (and one epoll) per quote
                await trio.sleep_until(due + MARKET_GRAIN_S)
                behind = 0
            else:
                behind += 1
                if behind >= 64:  # catching up: let the connections run
                    behind = 0
                    await trio.sleep(0)
                    while fast and any(s.queued > FAST_HIGH_WATER for s in self.sessions.values()):
                        await trio.sleep(0.005)
            self.market_events += 1
            out = hub.on_market(event, _WALL.now)
            if out:
                dispatch(out)

    async def _ticker(self) -> None:
        """Token expiry and metrics (``hub.tick``); slow readers."""
        slow_after = self.config.server.slow_reader_s
        while True:
            await trio.sleep(TICK_S)
            out = self.hub.tick(_WALL.now)
            if out:
                self._dispatch(out)
            t = trio.current_time()
            for s in list(self.sessions.values()):
                if s.over_since is not None and t - s.over_since >= slow_after:
                    log.info("connection %d does not read (%d bytes unsent): closed", s.conn, s.queued)
                    self._drop(s, CLOSE_POLICY, "not reading")

    def _drop(self, s: _Session, code: int | None, reason: str = "") -> None:
        """End a session. With a ``code`` (a reader that does not read): what
        is unsent is discarded and the close frame goes next, and if the
        socket is stuck it is reset a second later. ``code`` None (the
        abrupt-drop fault): reset at once, no close frame."""
        self.hub.disconnect(s.conn)
        if code is not None:
            s.queue.clear()
            s.queued, s.dead, s.over_since = 0, 0, None
            s.waiting_quotes.clear()
            s.close(code, reason)
            if self._nursery is not None:
                self._nursery.start_soon(self._reset_later, s, 1.0)
            return
        s.closing = s.closing or (1006, reason)
        self._reset_now(s)

    @staticmethod
    def _reset_now(s: _Session) -> None:
        _reset(s.socket)
        if s.scope is not None:
            s.scope.cancel()

    async def _reset_later(self, s: _Session, delay: float) -> None:
        with trio.move_on_after(delay):
            await s.gone.wait()
        if not s.gone.is_set():
            self._reset_now(s)

    # ------------------------------------------------------------ fan-out

    def _dispatch(self, out: list) -> None:
        """Carry out the hub's outputs, in order, without awaiting."""
        sessions = self.sessions
        faults = self.faults
        last = sym = None  # one quote's bytes are shared by all its Sends
        for o in out:
            if type(o) is Send:
                s = sessions.get(o.conn)
                if s is None:
                    continue
                if s.queued > s.soft and o.kind == _QUOTE:
                    data = o.data
                    if data is not last:
                        last, sym = data, _quote_symbol(data)
                    s.push_quote(data, sym)
                elif o.kind == _EXEC and (faults.exec_delay_s or faults.duplicate_executions):
                    self._faulty_execution(s, o.data)
                else:
                    s.push(o.data)
            elif type(o) is Close:
                s = sessions.get(o.conn)
                if s is not None:
                    s.close(o.code, o.reason)

    def _faulty_execution(self, s: _Session, data: bytes) -> None:
        copies = 2 if self.faults.duplicate_executions else 1
        delay = self.faults.exec_delay_s
        for _ in range(copies):
            if delay and self._nursery is not None:
                s.delayed.append((trio.current_time() + delay, data))
                self._nursery.start_soon(self._release, s, trio.current_time() + delay)
            else:
                s.push(data)

    @staticmethod
    async def _release(s: _Session, at: float) -> None:
        """Push the delayed executions due by ``at``, in the order they came
        (trio wakes sleepers in no set order)."""
        await trio.sleep_until(at)
        while s.delayed and s.delayed[0][0] <= trio.current_time():
            s.push(s.delayed.popleft()[1])

    # ------------------------------------------------------------ ASGI

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # -- HTTP

    async def _http(self, scope, receive, send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/api/v1/login":
            if method != "POST":
                return await _respond(send, 405, {"code": "METHOD_NOT_ALLOWED", "message": "use POST"})
            body = await _read_body(receive, self.config.server.max_login_body)
            if body is None:
                return await _respond(send, 413, {"code": "BAD_REQUEST", "message": "body too large"})
            status, payload = await trio.to_thread.run_sync(self.auth.login, body, _WALL.now)
            return await _respond(send, status, payload)
        if path.startswith(_ACCOUNTS):
            return await self._rest(scope, receive, send)
        if path.startswith("/admin/") and self.config.server.admin:
            client = scope.get("client") or ("",)
            if not str(client[0]).startswith(_LOOPBACK):
                return await _respond(send, 403, {"code": "FORBIDDEN", "message": "loopback only"})
            return await self._admin(path, method, receive, send)
        await _respond(send, 404, {"code": "NOT_FOUND", "message": "no such endpoint"})

    async def _admin(self, path: str, method: str, receive, send) -> None:
        if path == "/admin/connections" and method == "GET":
            return await _respond(send, 200, [
                {"id": s.conn, "username": s.username, "accounts": list(s.accounts), "queued": s.queued}
                for s in self.sessions.values()
            ])
        if path == "/admin/statistics" and method == "GET":
            return await _respond(send, 200, self.statistics())
        if path != "/admin/faults" or method != "POST":
            return await _respond(send, 404, {"code": "NOT_FOUND", "message": "no such endpoint"})
        try:
            req = msgspec.json.decode(await _read_body(receive, 4096) or b"")
            action = req["action"]
            targets = ([self.sessions[req["conn"]]] if req.get("conn") is not None
                       else list(self.sessions.values()))
            if action == "drop":
                for s in targets:
                    self._drop(s, None)
            elif action == "expire":
                for s in targets:
                    self.hub.disconnect(s.conn)
                    s.close(CLOSE_AUTH, "token expired")
            elif action == "delay_executions":
                self.faults.exec_delay_s = float(req["seconds"])
            elif action == "duplicate_executions":
                self.faults.duplicate_executions = bool(req["enabled"])
            elif action == "pings":
                # hypercorn reads the interval before each sleep: existing
                # connections send one more ping at most; new ones follow at once
                on = bool(req["enabled"])
                self._hconfig.websocket_ping_interval = self.config.server.ping_interval_s if on else 1e9
            elif action == "step":
                events = req.get("events", 1)
                try:
                    self.step(events)
                except UsageError as exc:
                    raise ValueError(str(exc)) from None
                return await _respond(send, 200, {"ok": True, "released": events,
                                                  "published": self.market_events})
            else:
                raise KeyError(action)
        except (msgspec.DecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            return await _respond(send, 400, {"code": "BAD_REQUEST", "message": f"bad fault: {exc!r}"})
        await _respond(send, 200, {"ok": True, "applied": len(targets)})

    async def _rest(self, scope, receive, send) -> None:
        """``/api/v1/accounts/{accountId}/...`` (PROTOCOL 4): the same message
        the WebSocket takes, through a pseudo-connection on the hub that
        lives for this request; the direct reply is the response body."""
        method = scope["method"]
        parts = scope["path"][len(_ACCOUNTS):].split("/")
        account, rest = parts[0], parts[1:]
        key = (method, *rest)
        route = _REST_ROUTES.get(key) or (
            _REST_ROUTES.get((method, rest[0], "*")) if len(rest) == 2 and rest[1] != "history" else None)
        if not account or route is None:
            return await _respond(send, 404, {"code": "NOT_FOUND", "message": "no such endpoint"})
        auth = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
        token = auth[7:] if auth[:7].lower() == "bearer " else None
        now = _WALL.now
        try:
            claims = self.issuer.verify(token, now)
        except AuthError as exc:
            return await _respond(send, 401, {"code": "UNAUTHORIZED", "message": f"token refused: {exc.reason}"})
        type_, id_field = route
        if method == "GET":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            payload: dict = {k: v[-1] for k, v in query.items() if k in ("symbol", "from", "to", "limit")}
            if "limit" in payload:
                try:
                    payload["limit"] = int(payload["limit"])
                except ValueError:
                    pass  # the hub answers BAD_REQUEST for a string
        else:
            body = await _read_body(receive, self.config.hub.max_frame)
            try:
                payload = msgspec.json.decode(body) if body else {}
            except (msgspec.DecodeError, TypeError):
                payload = None
            if not isinstance(payload, dict):
                return await _respond(send, 400, {"code": "BAD_REQUEST", "message": "the body must be a JSON object"})
        payload["accountId"] = account
        if id_field is not None:
            payload[id_field] = rest[1]
        frame = _json.encode({"type": type_, "payload": payload}).decode()
        conn = next(self._ids)
        s = _Session(conn, claims.username, claims.accounts, self.config.server.send_buffer_limit)
        self.sessions[conn] = s
        try:
            self._dispatch(self.hub.connect(conn, claims.accounts, now, expires_at=claims.expires_at))
            self._dispatch(self.hub.receive(conn, frame, now))
            with trio.move_on_after(REST_TIMEOUT_S):
                while not s.queue:  # a request with latency is answered on a later market event
                    await s.lot.park()
        finally:
            self.hub.disconnect(conn)
            self.sessions.pop(conn, None)
            s.gone.set()
        first = s.pop() if s.queue else None
        if first is None:
            return await _respond(send, 504, {"code": "INTERNAL", "message": "no reply in time"})
        reply = msgspec.json.decode(first)
        payload = reply["payload"]
        if reply["type"] == "error":
            return await _respond(send, _HTTP_STATUS.get(payload["code"], 400), payload)
        await _respond(send, 200, payload)

    # -- WebSocket

    async def _websocket(self, scope, receive, send) -> None:
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        if scope["path"] != "/api/v1/ws":
            return await _refuse(scope, send, 404, "NOT_FOUND", "no such endpoint")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = (query.get("token") or [None])[0]
        now = _WALL.now
        try:
            claims = self.issuer.verify(token, now)
        except AuthError as exc:
            return await _refuse(scope, send, 401, "UNAUTHORIZED", f"token refused: {exc.reason}")
        conn = next(self._ids)
        s = _Session(conn, claims.username, claims.accounts, self.config.server.send_buffer_limit)
        await send({"type": "websocket.accept"})
        s.socket = _find_socket()
        self.sessions[conn] = s
        try:
            with trio.CancelScope() as cs:
                s.scope = cs
                out = self.hub.connect(conn, claims.accounts, _WALL.now, expires_at=claims.expires_at)
                self._dispatch(out)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, s, send)
                    await self._reader(s, receive)
                    nursery.cancel_scope.cancel()
        finally:
            self.hub.disconnect(conn)
            self.sessions.pop(conn, None)
            s.gone.set()

    async def _reader(self, s: _Session, receive) -> None:
        hub, dispatch, conn = self.hub, self._dispatch, s.conn
        while True:
            msg = await receive()
            if msg["type"] != "websocket.receive":
                return  # websocket.disconnect
            text = msg.get("text")
            out = hub.receive(conn, text if text is not None else (msg.get("bytes") or b""), _WALL.now)
            if out:
                dispatch(out)

    async def _writer(self, s: _Session, send) -> None:
        while True:
            if s.queue:
                data = s.pop()
                if data is not None:
                    await send({"type": "websocket.send", "text": data.decode()})
            elif s.closing is not None:
                break
            else:
                await s.lot.park()
        code, reason = s.closing
        await send({"type": "websocket.close", "code": code, "reason": reason})
        await trio.sleep(self.config.server.shutdown_grace_s)  # for the client's close reply
        if s.scope is not None:
            s.scope.cancel()

    def statistics(self) -> dict:
        """Hub counters plus the transport's (trio style)."""
        sessions = self.sessions.values()
        return {**self.hub.statistics(), "market_events": self.market_events,
                "queued_bytes": sum(s.queued for s in sessions),
                "conflated_quotes": sum(s.conflated for s in sessions)}


async def _read_body(receive, cap: int) -> bytes | None:
    """The request body, or None if it is over ``cap`` bytes."""
    parts, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return b"".join(parts)
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > cap:
            return None
        parts.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(parts)


async def _respond(send, status: int, body: Any) -> None:
    data = body if isinstance(body, bytes) else _json.encode(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _refuse(scope, send, status: int, code: str, message: str) -> None:
    """Refuse a WebSocket handshake with an HTTP status (or, without the
    ASGI extension, accept and close 4401)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        data = _json.encode({"code": code, "message": message})
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "websocket.http.response.body", "body": data})
    else:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": CLOSE_AUTH if status == 401 else 1008,
                    "reason": message})


async def serve_sim(
    config: SimConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    env: Mapping[str, str] = os.environ,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the simulator until cancelled: ``port = await nursery.start(serve_sim, config)``.

    Args:
        port: 0 picks a free one; the bound port is what ``start`` returns.
        env: where the token secret (``auth.secret_env``) and passwords given
            by ``password_env`` are read.
    """
    await SimServer(config, env).serve(host, port, task_status=task_status)


def main(argv: list[str]) -> int:
    """``triotrade sim``: serve until SIGINT/SIGTERM; 2 on a config error."""
    parser = argparse.ArgumentParser(prog="triotrade sim", description="the paper-trading server")
    parser.add_argument("--config", required=True, help="the sim YAML file (configs/sim.yaml)")
    parser.add_argument("--memory", action="store_true",
                        help="keep state in memory: no store file is read or written")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_sim_config(args.config)
        if args.memory:
            config = attrs.evolve(config, store=MEMORY)
        server = SimServer(config)  # here, so a bad secret or password variable says so plainly
    except TriotradeError as exc:
        print(f"error: {type(exc).__name__}: {exc}")
        return 2

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(partial(server.serve, args.host, args.port))
                print(f"triotrade sim: http://{args.host}:{port}/api/v1/login, "
                      f"ws://{args.host}:{port}/api/v1/ws  (Ctrl-C stops)", flush=True)
                async for signum in signals:
                    print(f"triotrade sim: {signal.Signals(signum).name}, closing", flush=True)
                    break
                nursery.cancel_scope.cancel()

    trio.run(run)
    return 0
