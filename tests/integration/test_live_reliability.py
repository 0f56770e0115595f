"""Reliability of the live path against the real paper-trading server (issue 7, item 8).

Each test runs ``LiveRuntime`` + ``TraderClient`` against ``SimServer`` on
loopback and breaks the connection the way networks and servers do: the
server's faults (a drop the moment an order arrives, token expiry,
duplicated executions), refused credentials, a restart on the same store
and port, and, for what a server cannot do to itself, a small TCP relay in
this module that can go silent or cut its connections. After each fault the
test checks what a user would notice: the book equals the server's state,
no order went out twice, no fill was booked twice, the risk gate held back
new risk until the book was reconciled, and the run stops cleanly with no
connection left on the server.

Liveness and backoff are short (pings after 0.3 s of silence, dead 0.3 s
later, backoff 0.05-0.2 s), so every test takes a few seconds at most.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from contextlib import asynccontextmanager
from decimal import Decimal

import attrs
import httpx
import trio

from adapters.sim.auth import hash_password
from adapters.sim.server import SimServer
from adapters.sim.simconfig import sim_config_from_dict
from adapters.trader_ws.client import TraderClient
from engine.config import config_from_dict
from engine.enums import OrderStatus
from engine.events import Quote
from engine.instruments import to_cents
from engine.orders import OrderState
from engine.runtime import Inbox, LiveRuntime
from risk import TradingState
from strategies.base import Strategy

ACCOUNT = "A1"
PASSWORD = "Corr3ct-Horse-pw"
ENV = {"RELIABILITY_SECRET": "r" * 40}
ACTIVE, REDUCING, HALTED = TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED
FAST = {"ping_after_s": 0.3, "dead_after_s": 0.3, "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2, "jitter": lambda: 0.5}


def sim_config(**over):
    data = {
        "users": [{"username": "alice", "password_hash": hash_password(PASSWORD, iterations=1000),
                   "accounts": [ACCOUNT]}],
        "accounts": [{"id": ACCOUNT, "balance": 100_000}],
        "market": {"synthetic": {"symbols": ["EURUSD", "GBPUSD"], "seed": 11, "rate_per_s": 200}},
        "venue": {"commission_per_million": 20},  # fills move the balance: cents matter
        "auth": {"secret_env": "RELIABILITY_SECRET"},
        "hub": {"rate_per_s": 1000, "burst": 1000},
        "server": {"admin": True, "shutdown_grace_s": 0.2, "save_interval_s": 0.1},
        "store": ":memory:",
        **over,
    }
    return sim_config_from_dict(data)


RUN_CONFIG = config_from_dict({
    "account": ACCOUNT, "balance": 100_000,
    "strategies": [{"class": "strategies.sma_cross:SmaCross", "symbols": ["EURUSD"]}],
    "risk": {"max_order_qty": 100_000},
})


class Buyer(Strategy):
    """Buys on the first EURUSD quote after each ``go()``: at market, or a
    LIMIT 2 % under the bid that rests. Remembers what it sent."""

    quantity: float = 1000

    def on_start(self) -> None:
        self.subscribe(self.symbols)
        self.todo: list[str] = []
        self.sent: list[str] = []
        self.rejects: list = []

    def go(self, kind: str = "market") -> None:
        self.todo.append(kind)

    def on_quote(self, q: Quote) -> None:
        while self.todo:
            price = round(q.bid * 0.98, 5) if self.todo.pop(0) == "limit" else None
            self.sent.append(self.buy(q.symbol, self.quantity, price=price).client_order_id)

    def on_reject(self, rejection) -> None:
        self.rejects.append(rejection)


class Proxy:
    """A TCP relay to the server for the faults a server cannot make itself:
    ``silence()`` freezes the connections open now (nothing passes either
    way, the sockets stay open; new connections pass), ``resume()`` thaws
    them, ``cut()`` closes every connection without a WebSocket close."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self._conns: dict[trio.CancelScope, list[trio.Event]] = {}

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._relay, listeners)

    def silence(self) -> None:
        for gate in self._conns.values():
            gate[0] = trio.Event()

    def resume(self) -> None:
        for gate in self._conns.values():
            gate[0].set()

    def cut(self) -> None:
        for scope in self._conns:
            scope.cancel()

    @property
    def open(self) -> int:
        """Connections relayed now."""
        return len(self._conns)

    async def _relay(self, downstream: trio.SocketStream) -> None:
        self.accepted += 1
        gate = [trio.Event()]
        gate[0].set()
        with trio.CancelScope() as scope:
            self._conns[scope] = gate
            try:
                async with downstream:
                    up = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                    async with up, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pipe, downstream, up, gate, nursery.cancel_scope)
                        nursery.start_soon(self._pipe, up, downstream, gate, nursery.cancel_scope)
            except OSError:
                pass
            finally:
                del self._conns[scope]

    @staticmethod
    async def _pipe(src, dst, gate: list[trio.Event], done: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await gate[0].wait()  # silent: hold what came, read no more
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()


# -- harness -------------------------------------------------------------------------


async def until(cond, what: str, timeout: float = 5.0) -> None:
    """Poll ``cond`` every 10 ms until it holds; fail naming ``what``."""
    deadline = trio.current_time() + timeout
    while not cond():
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await trio.sleep(0.01)


@asynccontextmanager
async def sim_server(config=None, port: int = 0):
    """A running ``SimServer``. ``server.scope.cancel()`` stops it alone (not
    the body of the ``async with``); ``server.stopped`` is set once it has."""
    server = SimServer(config or sim_config(), ENV)
    server.scope, server.stopped = trio.CancelScope(), trio.Event()

    async def serve(task_status=trio.TASK_STATUS_IGNORED):
        with server.scope:
            try:
                await server.serve("127.0.0.1", port, task_status=task_status)
            finally:
                server.stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        yield server
        server.scope.cancel()


class Spy:
    """What the server received: createOrders by clientOrderId, login attempts.
    ``drop_at_next_create``: cut that connection (no close frame) right after
    the server took the next createOrder, before its answer goes out."""

    def __init__(self, server: SimServer) -> None:
        self.creates: Counter = Counter()
        self.logins = 0
        self.drop_at_next_create = False
        receive, login = server.hub.receive, server.auth.login

        def counting_receive(conn, data, now):
            msg = json.loads(data)
            out = receive(conn, data, now)
            if msg.get("type") == "createOrder":
                self.creates[msg["payload"].get("clientOrderId")] += 1
                if self.drop_at_next_create:
                    self.drop_at_next_create = False
                    server._drop(server.sessions[conn], None)  # the admin "drop", in step
            return out

        def counting_login(body, now):
            self.logins += 1
            return login(body, now)

        server.hub.receive, server.auth.login = counting_receive, counting_login


@attrs.define
class Live:
    runtime: LiveRuntime
    client: TraderClient
    strategy: Buyer
    gate_states: list
    summary: object = None
    stop_took: float | None = None  # request_stop() -> runtime.run returned


@asynccontextmanager
async def live(port: int, *, password: str = PASSWORD, wait_active: bool = True):
    """A ``LiveRuntime`` trading a ``Buyer`` through a ``TraderClient`` to ``port``.
    On exit: ``request_stop()``, and ``runtime.run`` must return (``.summary``)."""
    inbox = Inbox()
    strategy = Buyer(name="buyer", symbols=["EURUSD"])
    runtime = LiveRuntime(RUN_CONFIG, inbox, strategies=[strategy], run_tag="rel", stop_deadline_s=2)
    client = TraderClient(f"ws://127.0.0.1:{port}/api/v1/ws", "alice", password, ACCOUNT, inbox, **FAST)
    h = Live(runtime, client, strategy, [])
    set_state = runtime.gate.set_state

    def recording(state, reason):
        h.gate_states.append((TradingState(state), reason))
        set_state(state, reason)

    runtime.gate.set_state = recording

    async def run():
        h.summary = await runtime.run(client)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        if wait_active:
            await until(lambda: client.live and runtime.gate.state is ACTIVE, "the runtime to trade")
        yield h
        runtime.request_stop()
        asked = trio.current_time()
    h.stop_took = trio.current_time() - asked
    assert h.summary is not None, "runtime.run did not return its summary"


async def admin(port: int, **fault) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        r = await http.post(f"http://127.0.0.1:{port}/admin/faults", json=fault)
    assert r.status_code == 200, r.text


async def assert_no_connections(server: SimServer) -> None:
    await until(lambda: not server.sessions, "the server to hold no connection", timeout=3)
    async with httpx.AsyncClient(trust_env=False) as http:
        r = await http.get(f"http://127.0.0.1:{server.port}/admin/connections")
    assert r.json() == []


async def order(h: Live, kind: str = "market", status=OrderState.FILLED) -> str:
    """Have the strategy send one order; its clientOrderId once the book has it in ``status``."""
    n = len(h.strategy.sent)
    h.strategy.go(kind)
    await until(lambda: len(h.strategy.sent) > n, "the strategy to send")
    cid = h.strategy.sent[n]
    if status is not None:
        await until(lambda: (o := h.runtime.book.order_by_client_id(cid)) and o.status is status,
                    f"order {cid} {status} in the book")
    return cid


def venue_state(server: SimServer) -> dict:
    account = server.engine.accounts[ACCOUNT]
    return {
        "positions": {s: (str(p.side), p.quantity) for s, p in account.ledger.positions.items()},
        "balance": to_cents(account.ledger.balance),
        "orders": {o.client_order_id: (str(o.status), float(o.filled))
                   for o in account.orders.values()},
        "working": sorted(o.client_order_id for o in account.orders.values() if o.working),
    }


def book_state(h: Live) -> dict:
    book = h.runtime.book
    return {
        "positions": {s: (str(p.side), p.quantity) for s, p in book.ledger.positions.items()},
        "balance": to_cents(book.ledger.balance),
        "orders": {o.client_order_id: (str(o.status), o.filled_quantity) for o in book.all_orders()},
        "working": sorted(o.client_order_id for o in book.working_orders()),
    }


async def assert_book_matches(h: Live, server: SimServer) -> None:
    """The book equals the server (allowing the last portfolio event to arrive)."""
    try:
        await until(lambda: book_state(h) == venue_state(server), "the book to match", timeout=2)
    except AssertionError:
        assert book_state(h) == venue_state(server)


# -- the scenarios -------------------------------------------------------------------


async def drop_mid_order(h: Live, server: SimServer, spy: Spy) -> tuple[str, str, int]:
    """One order settled; then the connection is cut the moment the server
    takes the next one, so its NEW never goes out and it fills during the
    outage. Returns both clientOrderIds and the gate states seen before the cut."""
    first = await order(h)
    seen = len(h.gate_states)
    spy.drop_at_next_create = True
    cid = await order(h, status=None)
    await until(lambda: h.client.connection == 2 and h.client.live
                and h.runtime.gate.state is ACTIVE, "the reconnect")
    assert server.engine.accounts[ACCOUNT].by_client_id[cid].status is OrderStatus.FILLED
    assert h.client.last_close.startswith("1006")  # a drop, not a close
    return first, cid, seen


async def test_an_order_in_flight_at_a_drop_is_settled_by_its_client_order_id_and_never_resent():
    with trio.fail_after(20):
        async with sim_server() as server:
            spy = Spy(server)
            async with live(server.port) as h:
                first, cid, seen = await drop_mid_order(h, server, spy)
                # settled from the order history, by clientOrderId: every order's status and fill
                book, venue = book_state(h), venue_state(server)
                assert book["orders"] == venue["orders"] and book["working"] == venue["working"] == []
                assert book["orders"][cid] == ("FILLED", 1000)
                # held back during the outage, trading again once reconciled
                states = [s for s, _ in h.gate_states[seen:]]
                assert states[0] is REDUCING and "connection lost" in h.gate_states[seen][1]
                assert states[-1] is ACTIVE and ACTIVE not in states[:-1]
                third = await order(h)
                await assert_book_matches(h, server)
                # each createOrder reached the server once; no clientOrderId twice at the venue
                assert spy.creates == {first: 1, cid: 1, third: 1}
                orders = server.engine.accounts[ACCOUNT].orders.values()
                assert Counter(o.client_order_id for o in orders) == spy.creates
                assert h.runtime.book.statistics()["resends"] == 0
            assert len(h.summary.trades) == 3  # the fill missed in the outage, once
            await assert_no_connections(server)


async def test_after_a_drop_mid_order_the_book_equals_the_server():
    with trio.fail_after(20):
        async with sim_server() as server:
            async with live(server.port) as h:
                await drop_mid_order(h, server, Spy(server))
                assert h.runtime.book.net_quantity("EURUSD") == 2000
                assert book_state(h) == venue_state(server)  # no trade since: nothing corrects it
            await assert_no_connections(server)


async def test_duplicated_execution_events_are_applied_once():
    with trio.fail_after(20):
        async with sim_server() as server:
            await admin(server.port, action="duplicate_executions", enabled=True)
            async with live(server.port) as h:
                for _ in range(3):
                    await order(h)
                stats = h.runtime.book.statistics
                await until(lambda: stats()["duplicates"] == stats()["executions"] == 6,
                            "every execution and its copy")
                await assert_book_matches(h, server)
                venue = server.engine.accounts[ACCOUNT]
                fills = sum(o.filled for o in venue.orders.values())
                assert fills == venue.ledger.positions["EURUSD"].quantity == Decimal(3000)
                assert h.runtime.book.net_quantity("EURUSD") == 3000
                assert h.runtime.kernel.fills == 3
                assert stats()["fills"] == 3
            assert len(h.summary.trades) == 3
            await assert_no_connections(server)


async def test_a_silent_connection_is_pinged_declared_dead_and_replaced():
    with trio.fail_after(20):
        async with sim_server() as server, trio.open_nursery() as nursery:
            proxy = Proxy(server.port)
            port = await nursery.start(proxy.serve)
            async with live(port) as h:
                pings = []
                ping = h.client._ping
                h.client._ping = lambda ws: (pings.append(trio.current_time()), ping(ws))[1]
                await order(h)
                silent_at = trio.current_time()
                proxy.silence()
                await until(lambda: not h.client.live, "the connection declared dead")
                took = trio.current_time() - silent_at
                assert 0.5 <= took < 1.5, f"declared dead after {took:.2f} s (ping 0.3 + dead 0.3)"
                assert h.client.last_close == "no frame received: connection dead"
                assert len(pings) == 1 and pings[0] > silent_at  # one ping, unanswered
                assert h.runtime.gate.state is REDUCING
                await until(lambda: h.client.live and h.runtime.gate.state is ACTIVE, "the reconnect")
                assert h.client.connection == h.runtime.connections == 2
                assert proxy.accepted >= 3  # login, the frozen socket, the new one
                proxy.resume()  # the frozen pair drains into the closed client socket and ends
                await until(lambda: len(server.sessions) == 1, "the dead connection to go")
                await order(h)
                await assert_book_matches(h, server)
            await assert_no_connections(server)
            await until(lambda: proxy.open == 0, "the relay to hold no connection")
            nursery.cancel_scope.cancel()


async def test_an_expired_token_costs_one_new_login_and_trading_resumes():
    with trio.fail_after(20):
        async with sim_server() as server:
            spy = Spy(server)
            async with live(server.port) as h:
                await order(h)
                await admin(server.port, action="expire")
                await until(lambda: h.client.connection == 2 and h.client.live
                            and h.runtime.gate.state is ACTIVE, "the reconnect")
                assert h.client.last_close.startswith("4401")
                assert h.client.logins == spy.logins == 2
                await order(h)
                await assert_book_matches(h, server)
                assert h.runtime.failure is None
            await assert_no_connections(server)


async def test_refused_credentials_stop_the_run_halted_without_a_retry_or_a_leaked_password(caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-Secret-pw"
    with trio.fail_after(20):
        async with sim_server() as server:
            spy = Spy(server)
            started = trio.current_time()
            async with live(server.port, password=wrong, wait_active=False) as h:
                await until(lambda: h.runtime.stopped, "the run to end by itself", timeout=2)
            assert trio.current_time() - started < 2
            assert "login refused" in h.runtime.failure
            assert h.runtime.failure == h.client.failure
            assert h.runtime.gate.state is HALTED
            assert spy.logins == 1 and h.client.logins == 0 and h.client.connection == 0
            assert h.summary.orders == 0
            await trio.sleep(0.3)
            assert spy.logins == 1  # no loop behind the ended run
            await assert_no_connections(server)
    assert any("login refused" in r.getMessage() for r in caplog.records)
    for r in caplog.records:
        text = f"{r.getMessage()} {r.args!r} {r.exc_text or ''}"
        assert wrong not in text and PASSWORD not in text


async def test_the_client_reconnects_to_a_restarted_server_and_adopts_its_restored_state(tmp_path):
    config = sim_config(store=str(tmp_path / "sim.sqlite3"))
    with trio.fail_after(20):
        async with sim_server(config) as first:
            port = first.port
            async with live(port) as h:
                await order(h)
                resting = await order(h, "limit", status=OrderState.NEW)
                await assert_book_matches(h, first)
                before = venue_state(first)
                first.scope.cancel()
                await first.stopped.wait()
                await until(lambda: not h.client.live, "the client to see the shutdown")
                assert h.runtime.gate.state is REDUCING
                async with sim_server(config, port) as second:
                    assert venue_state(second) == before  # the store kept it all
                    await until(lambda: h.client.live and h.runtime.gate.state is ACTIVE,
                                "the reconnect to the new server")
                    assert h.client.connection == h.runtime.connections == 2
                    await assert_book_matches(h, second)
                    assert [o.client_order_id for o in h.runtime.book.working_orders()] == [resting]
                    assert h.runtime.book.net_quantity("EURUSD") == 1000
                    await order(h)
                    await assert_book_matches(h, second)
                    h.runtime.request_stop()  # cancels the resting order, closes with 1000
                    await until(lambda: h.runtime.stopped, "the run to stop")
                    cancelled = second.engine.accounts[ACCOUNT].by_client_id[resting].status
                    assert cancelled is OrderStatus.CANCELLED
                    await assert_no_connections(second)


async def test_a_connection_cut_without_a_close_frame_is_reconnected():
    with trio.fail_after(20):
        async with sim_server() as server, trio.open_nursery() as nursery:
            proxy = Proxy(server.port)
            port = await nursery.start(proxy.serve)
            spy = Spy(server)
            async with live(port) as h:
                await order(h)
                proxy.cut()
                await until(lambda: h.client.connection == 2 and h.client.live
                            and h.runtime.gate.state is ACTIVE, "the reconnect")
                assert h.client.last_close.startswith("1006")  # no close frame
                await order(h)
                await assert_book_matches(h, server)
                assert set(spy.creates.values()) == {1}
            await assert_no_connections(server)
            await until(lambda: proxy.open == 0, "the relay to hold no connection")
            nursery.cancel_scope.cancel()


async def test_an_orderly_stop_closes_at_once():
    with trio.fail_after(10):
        async with sim_server() as server:
            async with live(server.port) as h:
                await order(h)
            assert h.stop_took < 0.5, f"the stop took {h.stop_took:.2f} s with nothing working"
            await assert_no_connections(server)
