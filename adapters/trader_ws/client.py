"""The live Trader WebSocket adapter: one logical connection, kept up.

The protocol decisions (what to subscribe, when the connection is dead,
whether to log in again or give up, how long to back off, when the book is
reconciled) are the sans-IO ``Session``'s. This module is the I/O around it,
on trio and trio-websocket: the login over HTTP, the handshake with the
token as a query parameter (never logged), one reader per connection that
decodes each message once into the runtime's ``Inbox`` (and the recorder)
and then runs the runtime's kernel step (``drive``), a watchdog that pings a
silent server, and the sends.

Each connection lives in its own nursery, so a drop, a dead connection or
trio-websocket's pong-while-closing error (python-trio/trio-websocket#184)
ends that connection only; the loop then asks the session what to do next.
"""

from __future__ import annotations

import logging
import random
import re
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, connect_websocket_url
from wsproto.utilities import LocalProtocolError

from adapters.trader_ws.login import client_ssl_context, endpoints, login, redact, ws_url_with_token
from adapters.trader_ws.session import Liveness, Reconnect, Send, Session, Stop
from engine.codec import decode_envelope, encode_intent
from engine.errors import VenueError, WireError
from engine.events import Depth, OrderHistory, Quote
from engine.intents import OrderHistoryQuery
from engine.runtime import Inbox, LinkDown, LinkFailed, LinkLive, LinkUp, OrderHistoryReply

log = logging.getLogger("triotrade.trader_ws")


class _RedactTokens(logging.Filter):
    """trio-websocket logs the handshake's URL at DEBUG, token included: never let it out."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg, record.args = _TOKEN.sub(r"\1***", message), ()
        return True


_TOKEN = re.compile(r"(token=)[^&\s'\"]+")
logging.getLogger("trio-websocket").addFilter(_RedactTokens())

CONNECT_TIMEOUT_S = 10.0
MESSAGE_QUEUE = 4096
"""Messages trio-websocket buffers before it stops reading the socket; our
reader takes them as fast as they come (it does no strategy work)."""
MAX_MESSAGE = 16 * 1024 * 1024
BEHIND_S = 0.001
"""A kernel step longer than this means quotes may be waiting in the socket."""
BURST_S = 50e-6
"""A ``get_message`` that returns faster than this found the message waiting."""
DRAIN_S = 0.005
"""In a backlog the reader takes what is queued for at most this long, then
runs the kernel once on the latest quotes."""
RECEIVE_BUFFER = 64 * 1024
"""Bytes per socket read: a busy feed's frames arrive many to a read."""


class TraderClient:
    """A connection to a Trader server that logs in, subscribes, reconciles
    and reconnects by itself; the runtime's ``Link``.

    Args:
        url: the WebSocket URL (``wss://host/api/v1/ws``; ``ws://`` on loopback only).
        username / password: the login (the password is never logged or shown).
        account_id: the account traded.
        inbox: where decoded messages go (the runtime's ``Inbox``).
        recorder: if given, every message received is written to it first.
        reconcile: ask for the order history and the portfolio on every
            connection before going live (off for a recorder).
    """

    def __init__(
        self, url: str, username: str, password: str, account_id: str, inbox: Inbox, *,
        ping_after_s: float = 10.0, dead_after_s: float = 10.0, recorder=None,
        ssl_context: ssl.SSLContext | None = None, jitter: Callable[[], float] = random.random,
        backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0, stable_after_s: float = 30.0,
        reconcile: bool = True,
    ) -> None:
        self.endpoints = endpoints(url)
        self._username = username
        self._password = password
        self.inbox = inbox
        self.recorder = recorder
        self._ssl = ssl_context if ssl_context is not None else client_ssl_context(self.endpoints.ws_url)
        self.session = Session(
            account_id, ping_after_s=ping_after_s, dead_after_s=dead_after_s, jitter=jitter,
            backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
            stable_after_s=stable_after_s, reconcile=reconcile)
        self._history_limit = 1000
        self._ws = None
        self._token: str | None = None
        self._scope: trio.CancelScope | None = None
        self._conn_scope: trio.CancelScope | None = None
        self._closing = False
        self._close_done = trio.Event()
        self._finished = trio.Event()
        self.live = False
        self.failure: str | None = None
        self.connection = 0
        self.messages = 0
        self.bad_messages = 0
        self.sent = 0
        self.logins = 0
        self.last_close: str | None = None
        self.drive = None
        """Set by the runtime (``LiveRuntime.drive``): awaited by the reader to
        run the kernel inline when nothing more is buffered."""

    def __repr__(self) -> str:
        return f"TraderClient({self.endpoints.ws_url!r}, user={self._username!r}, phase={self.session.phase})"

    # -- the runtime's side ----------------------------------------------------
    async def want(self, requests: Sequence) -> None:
        """Subscriptions to hold across reconnects; what is new is sent now if
        a connection is open (else on the next one)."""
        ws = self._ws
        for send in self.session.want(requests):
            if ws is not None:
                try:
                    await self._send_raw(ws, send)
                except ConnectionClosed:
                    return  # the next connection subscribes to all of it

    async def send(self, intent) -> bool:
        """Send one trading request now; False if the connection is not up
        (the book's reconciliation settles what happened to it)."""
        ws = self._ws
        if ws is None:
            return False
        send = Send(self.session.next_request_id(), intent)
        data = encode_intent(intent, send.request_id).decode()
        self.session.sent(send, trio.current_time())
        try:
            await ws.send_message(data)
        except ConnectionClosed:
            return False
        self.sent += 1
        return True

    async def resync(self) -> None:
        """Ask for the order history again (the runtime applies the reply)."""
        await self.send(OrderHistoryQuery(self.session.account_id, limit=self._history_limit))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Stop: close the connection with ``code`` (the handshake completed) and end ``run``."""
        self._closing = True
        self.session.stop()
        ws = self._ws
        try:
            if ws is not None:
                with trio.move_on_after(2):
                    await ws.aclose(code, reason or None)
        except LocalProtocolError:
            pass
        finally:
            self._close_done.set()
        if self._scope is not None:
            if ws is not None:  # the loop ends by itself once the connection has
                with trio.move_on_after(2):
                    await self._finished.wait()
            self._scope.cancel()  # in a backoff or a login: no need to wait

    def status(self) -> dict:
        return {
            "connection": str(self.session.phase), "connections": self.connection,
            "messages": self.messages, "bad_messages": self.bad_messages, "sent": self.sent,
            "last_close": self.last_close,
        }

    # -- the connection loop --------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection up until ``close`` or a fatal refusal."""
        with trio.CancelScope() as self._scope:
            task_status.started()
            relogin = True
            while not self._closing:
                if relogin or self._token is None:
                    decision = await self._login()
                    if decision is not None:
                        if not await self._follow(decision):
                            break
                        continue
                decision = await self._connect_once()
                if not await self._follow(decision):
                    break
                relogin = decision.relogin
        self._ws = None
        self.live = False
        self._finished.set()

    async def _login(self) -> Reconnect | Stop | None:
        session = self.session
        session.logging_in(trio.current_time())
        try:
            result = await login(self.endpoints.login_url, self._username, self._password,
                                 verify=self._ssl if self._ssl is not None else True)
        except VenueError as exc:
            log.warning("login failed: %s", exc)
            return session.login_failed(trio.current_time(), status=exc.status, reason=str(exc))
        self.logins += 1
        self._token = result.token
        session.logged_in(trio.current_time())
        return None

    async def _follow(self, decision: Reconnect | Stop) -> bool:
        """Act on the session's decision; False when the loop must end."""
        if isinstance(decision, Stop):
            if decision.fatal:
                self.failure = decision.reason
                log.error("giving up: %s", decision.reason)
                self._tell(LinkFailed(decision.reason))
            return False
        log.info("reconnecting in %.2f s (%s)", decision.delay_s, decision.reason)
        await trio.sleep(decision.delay_s)
        return True

    async def _connect_once(self) -> Reconnect | Stop:
        session = self.session
        session.connecting(trio.current_time())
        url = ws_url_with_token(self.endpoints.ws_url, self._token)
        code: int | None = None
        reason = "network error"
        try:
            async with trio.open_nursery() as conn:
                ws = None
                try:
                    with trio.fail_after(CONNECT_TIMEOUT_S):
                        ws = await connect_websocket_url(
                            conn, url, ssl_context=self._ssl, message_queue_size=MESSAGE_QUEUE,
                            max_message_size=MAX_MESSAGE, receive_buffer_size=RECEIVE_BUFFER)
                except ConnectionRejected as exc:
                    log.warning("connection to %s refused: HTTP %s", redact(url), exc.status_code)
                    self.last_close = f"HTTP {exc.status_code}"
                    conn.cancel_scope.cancel()
                    return session.closed(trio.current_time(), http_status=exc.status_code)
                except (OSError, HandshakeError, trio.TooSlowError) as exc:
                    log.warning("cannot connect to %s: %s", redact(url), type(exc).__name__)
                    self.last_close = f"connect failed: {type(exc).__name__}"
                    conn.cancel_scope.cancel()
                    return session.closed(trio.current_time(), code=None)
                code, reason = await self._serve(ws, conn)
                if self._closing:  # let trio-websocket read the server's close reply
                    with trio.move_on_after(2):
                        await self._close_done.wait()
                conn.cancel_scope.cancel()
        except* (LocalProtocolError, trio.BrokenResourceError, OSError):
            code, reason = None, "connection broke while closing"  # trio-websocket#184 among others
        finally:
            self._ws = None
            self.live = False
        self.last_close = f"{code} {reason}" if code is not None else reason
        self._tell(LinkDown(self.last_close))
        return session.closed(trio.current_time(), code=code)

    async def _serve(self, ws, conn: trio.Nursery) -> tuple[int | None, str]:
        """One open connection: subscribe, read until it ends."""
        self._ws = ws
        self.connection += 1
        log.info("connected to %s (connection %d)", self.endpoints.ws_url, self.connection)
        self._tell(LinkUp(self.connection))
        with trio.CancelScope() as self._conn_scope:
            conn.start_soon(self._watchdog, ws, conn)
            try:
                for send in self.session.opened(trio.current_time()):
                    await self._send_raw(ws, send)
                return await self._reader(ws)
            except ConnectionClosed as exc:
                return _close_of(exc)
        return None, "no frame received: connection dead"

    async def _send_raw(self, ws, send: Send) -> None:
        self.session.sent(send, trio.current_time())
        await ws.send_message(encode_intent(send.intent, send.request_id).decode())

    async def _reader(self, ws) -> tuple[int | None, str]:
        """Take every message as it comes, and with it all trio-websocket has
        buffered (without yielding), each decoded once into the inbox: quotes
        conflate there to the latest per symbol, account events queue in order.
        Then run the kernel right here (``drive``: no task switch between a
        quote and the order it causes), or, before the book is reconciled,
        wake the pump. A strategy that falls behind so sees the latest price,
        never a backlog, and never misses an account event."""
        session, inbox, drive = self.session, self.inbox, self.drive
        get, take_now, wake = ws.get_message, _taker(ws), inbox.wake
        behind = False
        clock = trio.current_time
        while True:
            try:
                t = clock()
                data = await get()
                now = clock()
                sends = self._take(data, now)
                # a message that was already there (a burst), or a slow step: more
                # may be queued, and trio-websocket hands them over one per
                # scheduler round; take them all first, then run the kernel once
                backlog = behind or now - t < BURST_S
                idle_round = False
                while take_now is not None:
                    try:
                        more = self._take(take_now(), now)
                    except trio.WouldBlock:
                        if not backlog or idle_round or now > t + DRAIN_S:
                            break
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        now, idle_round = clock(), True
                        continue
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        break  # a close: the next get raises it
                    idle_round = False
                    if more:
                        sends = sends + more if sends else more
            except ConnectionClosed as exc:
                return _close_of(exc)
            if session.failure is not None:
                await self._give_up(ws, session.failure.reason)
                continue
            if sends:
                for send in sends:
                    await self._send_raw(ws, send)
            if not self.live and session.live:
                self.live = True
                session.forget_pending()
                log.info("live: subscribed and reconciled (connection %d)", self.connection)
                inbox.put(LinkLive(self.connection))
            if inbox.full:  # the pump is stuck far behind: back up the socket, drop nothing
                wake()
                await inbox.drained()
            if self.live and drive is not None:
                started = clock()
                await drive()
                behind = clock() - started > BEHIND_S
            else:
                wake()

    def _take(self, data, t: float) -> list | None:
        """One message, received at ``t``, into the inbox (and the recorder);
        returns the session's requests to send."""
        self.session.received(t)
        self.messages += 1
        if self.recorder is not None:
            self.recorder.write(data)
        try:
            env = decode_envelope(data)
        except WireError as exc:
            self.bad_messages += 1
            if self.bad_messages <= 10 or self.bad_messages % 1000 == 0:
                log.warning("bad message #%d from the server: %s", self.bad_messages, exc)
            return None
        event = env.payload
        kind = type(event)
        if kind is Quote:
            self.inbox.quote(event)
            return None
        if kind is Depth:
            self.inbox.depth(event)
            return None
        was_live = self.session.live
        sends = self.session.on_event(event, env.id, t)
        if kind is OrderHistory and not was_live:
            event = OrderHistoryReply(event, complete=len(event.orders) < self._history_limit)
        self.inbox.put(event)
        return sends or None

    async def _give_up(self, ws, reason: str) -> None:
        self.failure = reason
        log.error("giving up: %s", reason)
        self._tell(LinkFailed(reason))
        self._closing = True
        self.session.stop()
        await ws.aclose(1000, "client stopping")

    def _tell(self, item) -> None:
        self.inbox.put(item)
        self.inbox.wake()

    async def _watchdog(self, ws, conn: trio.Nursery) -> None:
        """PROTOCOL 2: ping after a silence; a connection silent after that is dead."""
        session = self.session
        while True:
            state = session.liveness(trio.current_time())
            if state is Liveness.PING:
                conn.start_soon(self._ping, ws)
            elif state is Liveness.DEAD:
                log.warning("no frame from the server: connection %d is dead", self.connection)
                self._conn_scope.cancel()
                return
            await trio.sleep_until(session.next_check(trio.current_time()))

    async def _ping(self, ws) -> None:
        try:
            await ws.ping()
        except (ConnectionClosed, LocalProtocolError, trio.BrokenResourceError):
            return
        self.session.received(trio.current_time())  # the pong


def _taker(ws) -> Callable[[], Any] | None:
    """``receive_nowait`` of trio-websocket's message channel: the messages it
    already holds, taken without a scheduler round each. The channel is
    private (trio-websocket < 0.13 has it); without it, one ``get_message``
    at a time."""
    return getattr(getattr(ws, "_recv_channel", None), "receive_nowait", None)


def _close_of(exc: ConnectionClosed) -> tuple[int | None, str]:
    r = exc.reason
    return (r.code, r.reason or r.name) if r is not None else (None, "dropped")
