"""The paper-trading server over real sockets on loopback.

Each test starts ``serve_sim`` on a free port in its own nursery, logs in
with a plain HTTP/1.1 POST and talks to the WebSocket with trio-websocket,
as a client program would. The market is synthetic and fast (hundreds of
quotes a second), so nothing waits long; every test has a ``fail_after``.
"""

from __future__ import annotations

import base64
import json
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from adapters.sim.auth import TokenIssuer, User, hash_password
from adapters.sim.server import SimServer
from adapters.sim.simconfig import load_sim_config, sim_config_from_dict
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

SECRET = "s" * 40
ENV = {"SIM_TEST_SECRET": SECRET}
PW_HASH = hash_password("pw", iterations=1000)


def config_dict(**over) -> dict:
    base = {
        "users": [
            {"username": "alice", "password_hash": PW_HASH, "accounts": ["A1"]},
            {"username": "bob", "password_hash": PW_HASH, "accounts": ["B1"]},
        ],
        "accounts": [{"id": "A1"}, {"id": "B1"}],
        "market": {"synthetic": {"symbols": ["EURUSD", "GBPUSD", "USDJPY"], "seed": 3,
                                 "rate_per_s": 300}},
        "auth": {"secret_env": "SIM_TEST_SECRET"},
        "server": {"admin": True, "shutdown_grace_s": 0.5},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


@asynccontextmanager
async def sim(**over):
    """A running server; yields it (``.port``), stops it on exit."""
    server = SimServer(sim_config_from_dict(config_dict(**over)), ENV)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


async def http(port: int, method: str, path: str, body: bytes = b"",
               token: str | None = None) -> tuple[int, dict]:
    """A minimal HTTP/1.1 request (no client library is a dependency)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"{auth}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        await stream.send_all(head.encode() + body)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(rest) if rest else {}


async def login(port: int, user: str = "alice", pw: str = "pw") -> str:
    status, body = await http(port, "POST", "/api/v1/login",
                              json.dumps({"username": user, "password": pw}).encode())
    assert status == 200, body
    return body["token"]


def url(port: int, token: str | None) -> str:
    return f"ws://127.0.0.1:{port}/api/v1/ws" + (f"?token={token}" if token is not None else "")


async def send(ws, type_: str, payload: dict, id_: str | None = None) -> None:
    msg = {"type": type_, "payload": payload}
    if id_ is not None:
        msg["id"] = id_
    await ws.send_message(json.dumps(msg))


async def next_of(ws, *types: str) -> dict:
    """The next message of one of ``types`` (quotes and the like skipped)."""
    while True:
        msg = json.loads(await ws.get_message())
        if msg["type"] in types:
            return msg


async def close_code(ws) -> int:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await ws.get_message()
    return info.value.reason.code


ORDER = {"accountId": "A1", "symbol": "EURUSD", "side": "BUY", "quantity": 1000, "type": "MARKET"}


# ----------------------------------------------------------------- config


def test_shipped_config_loads_and_lists_the_demo_market():
    config = load_sim_config(ROOT / "configs/sim.yaml", env={})
    assert config.market.synthetic.symbols == ("EURUSD", "GBPUSD", "USDJPY")
    assert [u.username for u in config.users] == ["demo"]


@pytest.mark.parametrize(("over", "key"), [
    ({"hub": {"rate_per_s": "fast"}}, "hub.rate_per_s"),
    ({"server": {"pings": 3}}, "server.pings"),
    ({"accounts": [{"id": "A1", "balance": -1}]}, "accounts[0].balance"),
    ({"users": [{"username": "x", "password_hash": PW_HASH, "accounts": ["nope"]}]},
     "users[0].accounts[0]"),
])
def test_a_bad_config_names_its_key(over, key):
    with pytest.raises(ConfigError) as info:
        sim_config_from_dict(config_dict(**over))
    assert info.value.key == key


def test_a_password_may_come_from_the_environment_and_is_hashed_at_start():
    users = [{"username": "carol", "password_env": "CAROL_PW", "accounts": ["A1"]}]
    server = SimServer(sim_config_from_dict(config_dict(users=users)), {**ENV, "CAROL_PW": "s3cret"})
    now = datetime.now(timezone.utc)
    assert "s3cret" not in repr(server.auth.users)
    assert server.auth.login(b'{"username":"carol","password":"s3cret"}', now)[0] == 200
    assert server.auth.login(b'{"username":"carol","password":"nope"}', now)[0] == 401
    with pytest.raises(ConfigError, match="CAROL_PW is not set"):
        SimServer(sim_config_from_dict(config_dict(users=users)), ENV)


# ----------------------------------------------------------------- login and auth


async def test_login_answers_200_400_401_and_413():
    with trio.fail_after(10):
        async with sim(server={"max_login_body": 1000}) as s:
            status, body = await http(s.port, "POST", "/api/v1/login", b'{"username":"alice","password":"pw"}')
            assert status == 200 and body["accounts"] == ["A1"] and body["expiresAt"].endswith("Z")
            assert (await http(s.port, "POST", "/api/v1/login", b"not json"))[0] == 400
            assert (await http(s.port, "POST", "/api/v1/login", b'{"username":"alice"}'))[0] == 400
            wrong = await http(s.port, "POST", "/api/v1/login", b'{"username":"alice","password":"x"}')
            nobody = await http(s.port, "POST", "/api/v1/login", b'{"username":"zed","password":"pw"}')
            assert wrong == nobody == (401, {"code": "UNAUTHORIZED", "message": "bad credentials"})
            assert (await http(s.port, "POST", "/api/v1/login", b"x" * 2000))[0] == 413
            assert (await http(s.port, "GET", "/api/v1/login"))[0] == 405
            assert (await http(s.port, "GET", "/nowhere"))[0] == 404


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def bad_tokens() -> dict[str, str | None]:
    now = datetime.now(timezone.utc)
    alice = User("alice", PW_HASH, ("A1",))
    expired, _ = TokenIssuer(SECRET.encode(), timedelta(seconds=60)).issue(alice, now - timedelta(hours=1))
    forged, _ = TokenIssuer(b"f" * 40, timedelta(seconds=60)).issue(alice, now)
    claims = {"sub": "alice", "accounts": ["A1"], "iat": int(now.timestamp()),
              "exp": int(now.timestamp()) + 600}
    none = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    return {"missing": None, "empty": "", "garbage": "abc.def", "expired": expired,
            "forged": forged, "alg-none": none}


@pytest.mark.parametrize("case", list(bad_tokens()))
async def test_a_bad_token_is_refused_with_401(case):
    token = bad_tokens()[case]
    with trio.fail_after(10):
        async with sim() as s:
            with pytest.raises(ConnectionRejected) as info:
                async with open_websocket_url(url(s.port, token)):
                    pass
            assert info.value.status_code == 401


async def test_a_session_is_closed_4401_when_its_token_expires():
    with trio.fail_after(10):
        async with sim(auth={"token_lifetime_s": 1}) as s:
            token = await login(s.port)
            async with open_websocket_url(url(s.port, token)) as ws:
                assert await close_code(ws) == 4401


# ----------------------------------------------------------------- trading


async def test_subscribe_acks_with_id_then_quotes_arrive():
    with trio.fail_after(10):
        async with sim() as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                await send(ws, "subscribe", {"symbols": ["EURUSD", "USDJPY"], "events": ["quoteEvent"]}, "r1")
                ack = await next_of(ws, "subscribed")
                assert ack == {"type": "subscribed", "id": "r1",
                               "payload": {"symbols": ["EURUSD", "USDJPY"], "events": ["quoteEvent"]}}
                seen = set()
                while seen != {"EURUSD", "USDJPY"}:
                    q = await next_of(ws, "quoteEvent", "error")
                    assert q["type"] == "quoteEvent" and q["payload"]["bid"] < q["payload"]["ask"]
                    seen.add(q["payload"]["symbol"])


async def test_a_market_order_is_new_then_filled_and_shows_in_the_portfolio():
    with trio.fail_after(10):
        async with sim() as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                await send(ws, "subscribe", {"symbols": ["EURUSD"],
                                             "events": ["quoteEvent", "portfolioEvent"]})
                await next_of(ws, "quoteEvent")
                await send(ws, "createOrder", {**ORDER, "clientOrderId": "c-1"}, "r2")
                new = await next_of(ws, "executionEvent", "error")
                assert new["id"] == "r2" and new["payload"]["status"] == "NEW"
                filled = (await next_of(ws, "executionEvent"))["payload"]
                assert filled["status"] == "FILLED" and filled["filledQuantity"] == 1000
                assert filled["clientOrderId"] == "c-1" and filled["positionId"]
                portfolio = (await next_of(ws, "portfolioEvent"))["payload"]
                while not portfolio["positions"]:
                    portfolio = (await next_of(ws, "portfolioEvent"))["payload"]
                assert portfolio["positions"][0]["side"] == "LONG"
                await send(ws, "createOrder", {**ORDER, "clientOrderId": "c-1"})
                dup = await next_of(ws, "error")
                assert dup["payload"]["code"] == "DUPLICATE_CLIENT_ORDER_ID"
                await send(ws, "orderHistory", {"accountId": "A1"})
                history = await next_of(ws, "orderHistory")
                assert [o["status"] for o in history["payload"]["orders"]] == ["FILLED"]


async def test_every_message_type_over_the_wire():
    with trio.fail_after(15):
        async with sim() as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                await send(ws, "subscribe", {"symbols": ["EURUSD"], "events": ["quoteEvent"]})
                await next_of(ws, "quoteEvent")
                await send(ws, "depthSubscribe", {"symbol": "EURUSD", "depth": 3})
                assert (await next_of(ws, "subscribed"))["payload"] == {"symbol": "EURUSD", "depth": 3}
                depth = (await next_of(ws, "depthEvent"))["payload"]
                assert len(depth["bids"]) == len(depth["asks"]) == 3
                await send(ws, "depthUnsubscribe", {"symbol": "EURUSD"})
                assert (await next_of(ws, "unsubscribed"))["payload"]["symbol"] == "EURUSD"
                await send(ws, "metricsSubscribe", {"accountId": "A1"})
                assert (await next_of(ws, "subscribed"))["payload"] == {"accountId": "A1"}
                assert (await next_of(ws, "metricsEvent"))["payload"]["balance"] == 100_000

                limit = {**ORDER, "type": "LIMIT", "price": 0.5, "clientOrderId": "lim"}
                await send(ws, "createOrder", limit)
                oid = (await next_of(ws, "executionEvent"))["payload"]["orderId"]
                await send(ws, "amendOrder", {"accountId": "A1", "orderId": oid, "price": 0.6})
                amended = (await next_of(ws, "executionEvent"))["payload"]
                assert (amended["status"], amended["price"]) == ("AMENDED", 0.6)
                await send(ws, "cancelOrder", {"accountId": "A1", "clientOrderId": "lim"})
                cancelled = (await next_of(ws, "executionEvent"))["payload"]
                assert (cancelled["status"], cancelled["reason"]) == ("CANCELLED", "CLIENT")

                await send(ws, "createOrder", {**ORDER, "quantity": 2000})
                await next_of(ws, "executionEvent")
                pid = (await next_of(ws, "executionEvent"))["payload"]["positionId"]
                await send(ws, "amendPosition", {"accountId": "A1", "positionId": pid, "stopLoss": 0.5})
                position = (await next_of(ws, "portfolioEvent"))["payload"]["positions"][0]
                assert position["stopLoss"] == 0.5
                await send(ws, "closePosition", {"accountId": "A1", "positionId": pid, "quantity": 1000})
                closing = [(await next_of(ws, "executionEvent"))["payload"] for _ in range(2)]
                assert [(e["status"], e["reason"]) for e in closing] == [
                    ("NEW", "CLOSE_POSITION"), ("FILLED", "CLOSE_POSITION")]
                await send(ws, "closePosition", {"accountId": "A1", "positionId": pid})
                await next_of(ws, "executionEvent")
                await next_of(ws, "executionEvent")
                await send(ws, "positionHistory", {"accountId": "A1"})
                closed = (await next_of(ws, "positionHistory"))["payload"]["positions"]
                assert [(p["positionId"], p["quantity"]) for p in closed] == [(pid, 2000)]
                await send(ws, "unsubscribe", {"symbols": ["EURUSD"], "events": ["quoteEvent"]})
                assert (await next_of(ws, "unsubscribed"))["payload"]["symbols"] == ["EURUSD"]


async def test_a_connection_over_its_message_rate_is_rate_limited():
    with trio.fail_after(10):
        async with sim(hub={"rate_per_s": 1, "burst": 3}) as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                for i in range(5):
                    await send(ws, "orderHistory", {"accountId": "A1"}, f"q{i}")
                replies = [json.loads(await ws.get_message()) for _ in range(5)]
                assert [r["type"] for r in replies] == ["orderHistory"] * 3 + ["error"] * 2
                assert {r["payload"]["code"] for r in replies[3:]} == {"RATE_LIMITED"}
                assert [r["id"] for r in replies] == [f"q{i}" for i in range(5)]


async def test_a_recorded_feed_replays_as_fast_as_clients_read_with_its_depth():
    feed = str(ROOT / "tests/data/btcusdt_binance_depth10_300.jsonl.gz")
    with trio.fail_after(10):
        async with sim(market={"synthetic": None,
                               "replay": {"feed": [feed], "speed": None, "loop": True}}) as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                await send(ws, "subscribe", {"symbols": ["BTCUSDT"], "events": ["quoteEvent"]})
                await send(ws, "depthSubscribe", {"symbol": "BTCUSDT", "depth": 5})
                depth = (await next_of(ws, "depthEvent"))["payload"]
                assert len(depth["bids"]) == 5 and depth["ts"].startswith("2024-08-")
                stamps = [(await next_of(ws, "quoteEvent"))["payload"]["ts"] for _ in range(400)]
                assert stamps == sorted(stamps)  # looping moves time forward, never back
                assert s.market_events > 300  # past the end of the file: it looped


async def test_bad_messages_get_errors_and_the_connection_stays_open():
    with trio.fail_after(10):
        async with sim() as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                cases = [
                    ("not json", "BAD_REQUEST"),
                    (b"\x00binary", "BAD_REQUEST"),
                    ('{"payload": {}}', "BAD_REQUEST"),
                    ('{"type": "fly", "payload": {}}', "UNKNOWN_TYPE"),
                    ('{"type": "subscribe", "payload": {"symbols": "EURUSD"}}', "BAD_REQUEST"),
                    ('{"type": "subscribe", "payload": {"symbols": ["XXXYYY"], "events": ["quoteEvent"]}}',
                     "UNKNOWN_SYMBOL"),
                    (json.dumps({"type": "createOrder", "payload": {**ORDER, "quantity": 1234}}),
                     "INVALID_ORDER"),
                    ('{"type": "createOrder", "payload": {"accountId": "A1", "symbol": "EURUSD", '
                     '"side": "BUY", "quantity": NaN, "type": "MARKET"}}', "BAD_REQUEST"),
                ]
                for frame, code in cases:
                    await ws.send_message(frame)
                    assert (await next_of(ws, "error"))["payload"]["code"] == code, frame
                await send(ws, "subscribe", {"symbols": ["GBPUSD"], "events": ["quoteEvent"]})
                assert (await next_of(ws, "subscribed", "error"))["type"] == "subscribed"


async def test_the_venues_own_refusals_arrive_over_the_wire():
    with trio.fail_after(10):
        async with sim() as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                await send(ws, "subscribe", {"symbols": ["EURUSD"], "events": ["quoteEvent"]})
                await next_of(ws, "quoteEvent")  # the venue has a price
                await send(ws, "createOrder", {**ORDER, "type": "LIMIT", "price": 0.5,
                                               "clientOrderId": "rest-1"})
                order = (await next_of(ws, "executionEvent"))["payload"]
                await send(ws, "cancelOrder", {"accountId": "A1", "orderId": order["orderId"]})
                assert (await next_of(ws, "executionEvent"))["payload"]["status"] == "CANCELLED"
                cases = [
                    ("cancelOrder", {"accountId": "A1", "orderId": order["orderId"]}, "UNKNOWN_ORDER"),
                    ("amendOrder", {"accountId": "A1", "orderId": "o-nope", "price": 1.0}, "UNKNOWN_ORDER"),
                    ("amendOrder", {"accountId": "A1", "orderId": order["orderId"], "price": 0.6},
                     "NOT_AMENDABLE"),
                    ("closePosition", {"accountId": "A1", "positionId": "p-nope"}, "UNKNOWN_POSITION"),
                    ("amendPosition", {"accountId": "A1", "positionId": "p-nope", "stopLoss": 1.0},
                     "UNKNOWN_POSITION"),
                    ("createOrder", {**ORDER, "quantity": 1_000_000_000}, "INSUFFICIENT_MARGIN"),
                ]
                for type_, payload, code in cases:
                    await send(ws, type_, payload, id_=f"r-{type_}")
                    err = await next_of(ws, "error")
                    assert (err["payload"]["code"], err["payload"]["requestType"], err.get("id")) == (
                        code, type_, f"r-{type_}")


async def test_another_accounts_id_is_forbidden_and_changes_nothing():
    with trio.fail_after(10):
        async with sim() as s:
            alice = open_websocket_url(url(s.port, await login(s.port, "alice")))
            bob = open_websocket_url(url(s.port, await login(s.port, "bob")))
            async with alice as a, bob as b:
                await send(b, "subscribe", {"symbols": ["EURUSD"], "events": ["executionEvent"]})
                await next_of(b, "subscribed")
                for type_, payload in [
                    ("createOrder", {**ORDER, "accountId": "B1"}),
                    ("createOrder", {**ORDER, "accountId": "made-up"}),
                    ("dealHistory", {"accountId": "B1"}),
                    ("metricsSubscribe", {"accountId": "B1"}),
                ]:
                    await send(a, type_, payload)
                    err = (await next_of(a, "error"))["payload"]
                    assert err["code"] == "FORBIDDEN"
                    assert err["message"] == "accountId is not one of this session's accounts"
                await send(b, "orderHistory", {"accountId": "B1"})
                assert (await next_of(b, "orderHistory", "executionEvent"))["payload"]["orders"] == []


async def test_a_frame_over_64_kib_closes_with_1009():
    with trio.fail_after(10):
        async with sim() as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                await ws.send_message("x" * (65536 + 1))
                assert await close_code(ws) == 1009


async def test_200_connections_each_receive_quotes():
    n = 200
    with trio.fail_after(20):
        async with sim(market={"synthetic": {"symbols": ["EURUSD"], "seed": 1, "rate_per_s": 200}}) as s:
            token = await login(s.port)
            got = []

            async def client() -> None:
                async with open_websocket_url(url(s.port, token)) as ws:
                    await send(ws, "subscribe", {"symbols": ["EURUSD"], "events": ["quoteEvent"]})
                    await next_of(ws, "subscribed")
                    stamps = {(await next_of(ws, "quoteEvent"))["payload"]["ts"] for _ in range(3)}
                    got.append(len(stamps))

            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(client)
            assert len(got) == n and min(got) >= 2  # a snapshot may repeat, then live quotes


async def test_rest_equivalents_trade_and_query_with_a_bearer_token():
    with trio.fail_after(10):
        async with sim() as s:
            token = await login(s.port)
            base = "/api/v1/accounts/A1"
            order = json.dumps({k: v for k, v in ORDER.items() if k != "accountId"}).encode()
            while not s.engine.quotes.get("EURUSD"):
                await trio.sleep(0.01)
            status, new = await http(s.port, "POST", f"{base}/orders", order, token)
            assert status == 200 and new["status"] == "NEW" and new["accountId"] == "A1"
            status, hist = await http(s.port, "GET", f"{base}/orders/history?limit=10", token=token)
            assert status == 200 and [o["status"] for o in hist["orders"]] == ["FILLED"]
            pid = hist["orders"][0]["positionId"]
            status, close = await http(s.port, "DELETE", f"{base}/positions/{pid}", b"", token)
            assert status == 200 and close["reason"] == "CLOSE_POSITION"
            status, deals = await http(s.port, "GET", f"{base}/deals/history", token=token)
            assert status == 200 and len(deals["deals"]) == 2
            assert (await http(s.port, "DELETE", f"{base}/orders/o-999", b"", token))[0] == 404
            assert (await http(s.port, "POST", "/api/v1/accounts/B1/orders", order, token)) == (
                403, {"code": "FORBIDDEN", "message": "accountId is not one of this session's accounts",
                      "requestType": "createOrder", "clientOrderId": None, "orderId": None})
            assert (await http(s.port, "POST", f"{base}/orders", order))[0] == 401
            assert (await http(s.port, "POST", f"{base}/orders", b"[1]", token))[0] == 400


# ----------------------------------------------------------------- shutdown and faults


async def test_shutdown_closes_websockets_with_1001():
    with trio.fail_after(10):
        server = SimServer(sim_config_from_dict(config_dict()), ENV)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            async with open_websocket_url(url(port, await login(port))) as ws:
                nursery.cancel_scope.cancel()
                assert await close_code(ws) == 1001


async def test_the_cli_serves_the_shipped_config_until_sigterm():
    import signal
    import subprocess
    import sys

    code = ("import sys; from adapters.sim.server import main; "
            f"sys.exit(main(['--config', {str(ROOT / 'configs/sim.yaml')!r}, '--port', '0', '--memory']))")
    with trio.fail_after(15):
        proc = await trio.lowlevel.open_process([sys.executable, "-c", code],
                                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            line = b""
            while b"/api/v1/ws" not in line:
                line += await proc.stdout.receive_some(4096)
            port = int(line.split(b"ws://127.0.0.1:")[1].split(b"/")[0])
            token = await login(port, "demo", "demo")
            async with open_websocket_url(url(port, token)) as ws:
                await send(ws, "subscribe", {"symbols": ["USDJPY"], "events": ["quoteEvent"]})
                assert (await next_of(ws, "quoteEvent"))["payload"]["symbol"] == "USDJPY"
                proc.send_signal(signal.SIGTERM)
                assert await close_code(ws) == 1001
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()


async def test_fault_expire_closes_4401_and_drop_cuts_the_connection():
    with trio.fail_after(10):
        async with sim() as s:
            token = await login(s.port)
            async with open_websocket_url(url(s.port, token)) as ws1, \
                    open_websocket_url(url(s.port, token)) as ws2:
                status, conns = await http(s.port, "GET", "/admin/connections")
                first, second = sorted(c["id"] for c in conns)
                await http(s.port, "POST", "/admin/faults",
                           json.dumps({"action": "expire", "conn": first}).encode())
                assert await close_code(ws1) == 4401
                await http(s.port, "POST", "/admin/faults",
                           json.dumps({"action": "drop", "conn": second}).encode())
                assert await close_code(ws2) == 1006  # no close frame: an abrupt drop
            assert (await http(s.port, "GET", "/admin/connections"))[1] == []


async def test_fault_duplicates_execution_events():
    with trio.fail_after(10):
        async with sim() as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                await http(s.port, "POST", "/admin/faults",
                           b'{"action": "duplicate_executions", "enabled": true}')
                await send(ws, "createOrder", ORDER)
                events = [(await next_of(ws, "executionEvent"))["payload"] for _ in range(4)]
                assert [e["status"] for e in events] == ["NEW", "NEW", "FILLED", "FILLED"]
                assert events[0]["execId"] == events[1]["execId"] != events[2]["execId"]


async def test_fault_delays_execution_events_behind_quotes():
    with trio.fail_after(10):
        async with sim() as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                await http(s.port, "POST", "/admin/faults", b'{"action": "delay_executions", "seconds": 0.5}')
                await send(ws, "subscribe", {"symbols": ["EURUSD", "GBPUSD"], "events": ["quoteEvent"]})
                await next_of(ws, "quoteEvent")
                sent = trio.current_time()
                await send(ws, "createOrder", ORDER)
                quotes = 0
                while (msg := json.loads(await ws.get_message()))["type"] != "executionEvent":
                    quotes += msg["type"] == "quoteEvent"
                assert msg["payload"]["status"] == "NEW"
                assert trio.current_time() - sent >= 0.5 and quotes > 0


async def test_server_pings_and_the_fault_stops_them_for_new_connections(monkeypatch):
    from trio_websocket import WebSocketConnection

    pings = []
    answer = WebSocketConnection._handle_ping_event

    async def counting(self, event):
        pings.append(self)
        await answer(self, event)

    monkeypatch.setattr(WebSocketConnection, "_handle_ping_event", counting)
    with trio.fail_after(10):
        async with sim(server={"ping_interval_s": 0.05}) as s:
            token = await login(s.port)
            async with open_websocket_url(url(s.port, token)) as ws:
                await trio.sleep(0.3)
                assert pings.count(ws) >= 3
            await http(s.port, "POST", "/admin/faults", b'{"action": "pings", "enabled": false}')
            async with open_websocket_url(url(s.port, token)) as ws:
                await trio.sleep(0.3)
                assert pings.count(ws) <= 1  # the one sent on accept, at most


async def test_admin_is_off_unless_configured():
    with trio.fail_after(10):
        async with sim(server={"admin": False}) as s:
            assert (await http(s.port, "GET", "/admin/connections"))[0] == 404


async def test_quotes_conflate_for_a_slow_reader_and_stay_in_order():
    with trio.fail_after(15):
        async with sim(market={"synthetic": {"symbols": ["EURUSD", "GBPUSD"], "seed": 1,
                                             "rate_per_s": 20000}}) as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                await send(ws, "subscribe", {"symbols": ["EURUSD", "GBPUSD"], "events": ["quoteEvent"]})
                while s.statistics()["conflated_quotes"] < 1000:  # not reading, for now
                    await trio.sleep(0.05)
                assert s.statistics()["queued_bytes"] < 2 * 64 * 1024  # bounded, not growing
                last = {}
                for _ in range(2000):
                    q = (await next_of(ws, "quoteEvent"))["payload"]
                    assert q["ts"] >= last.get(q["symbol"], "")
                    last[q["symbol"]] = q["ts"]


async def test_a_client_that_does_not_read_is_disconnected():
    with trio.fail_after(15):
        async with sim(server={"send_buffer_limit": 16384, "slow_reader_s": 0.3},
                       market={"synthetic": {"symbols": ["EURUSD"], "seed": 1, "rate_per_s": 2000}}) as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                await send(ws, "subscribe", {"symbols": ["EURUSD"], "events": ["quoteEvent"]})
                await send(ws, "depthSubscribe", {"symbol": "EURUSD", "depth": 50})
                while s.sessions:  # the client reads nothing: the server gives up on it
                    await trio.sleep(0.1)
                assert s.hub.statistics()["connections"] == 0
                # what was on its way is lost: the client sees a drop (or 1008)
                assert await close_code(ws) in (1006, 1008)


# ----------------------------------------------------------------- durable state


async def _trade_and_look(port: int, *, trade: bool) -> dict:
    """Log in as alice; with ``trade``: open a position, rest a limit order and
    close a position. Returns what she then sees."""
    async with open_websocket_url(url(port, await login(port))) as ws:
        await send(ws, "subscribe", {"symbols": ["EURUSD", "GBPUSD"], "events": ["quoteEvent"]})
        await next_of(ws, "quoteEvent")
        if trade:
            await send(ws, "createOrder", {**ORDER, "quantity": 2000, "clientOrderId": "open-1"})
            assert (await next_of(ws, "executionEvent"))["payload"]["status"] == "NEW"
            assert (await next_of(ws, "executionEvent"))["payload"]["status"] == "FILLED"
            await send(ws, "createOrder", {**ORDER, "symbol": "GBPUSD"})
            await next_of(ws, "executionEvent")
            gbp = (await next_of(ws, "executionEvent"))["payload"]["positionId"]
            await send(ws, "closePosition", {"accountId": "A1", "positionId": gbp})
            while (await next_of(ws, "executionEvent"))["payload"]["status"] != "FILLED":
                pass
            await send(ws, "createOrder", {**ORDER, "type": "LIMIT", "price": 0.5,
                                           "clientOrderId": "rest-1"})
            assert (await next_of(ws, "executionEvent"))["payload"]["status"] == "NEW"
        seen = {}
        await send(ws, "subscribe", {"symbols": ["EURUSD"], "events": ["portfolioEvent"]})
        seen["portfolio"] = (await next_of(ws, "portfolioEvent"))["payload"]
        for kind in ("orderHistory", "positionHistory", "dealHistory"):
            await send(ws, kind, {"accountId": "A1"})
            seen[kind] = (await next_of(ws, kind))["payload"]
        return seen


def _held(portfolio: dict) -> tuple:
    """Balance and positions, without what moves with the market."""
    return portfolio["balance"], [
        {k: v for k, v in p.items() if k not in ("currentPrice", "unrealizedPnl")}
        for p in portfolio["positions"]]


async def test_a_restart_on_the_same_store_keeps_balance_positions_orders_and_history(tmp_path):
    path = tmp_path / "state.sqlite3"
    over = {"store": str(path), "venue": {"commission_per_million": 30}}
    with trio.fail_after(20):
        async with sim(**over) as s:
            before = await _trade_and_look(s.port, trade=True)
        async with sim(**over) as s:
            after = await _trade_and_look(s.port, trade=False)
            assert _held(after["portfolio"]) == _held(before["portfolio"])
            assert before["portfolio"]["balance"] < 100_000  # commission was booked
            assert len(before["portfolio"]["positions"]) == 1
            for kind in ("orderHistory", "positionHistory", "dealHistory"):
                assert after[kind] == before[kind]
            assert [o["status"] for o in after["orderHistory"]["orders"]] == [
                "FILLED", "FILLED", "FILLED", "NEW"]
            assert len(after["positionHistory"]["positions"]) == 1
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                # the resting order still works; used clientOrderIds stay used; ids go on
                await send(ws, "cancelOrder", {"accountId": "A1", "clientOrderId": "rest-1"})
                assert (await next_of(ws, "executionEvent"))["payload"]["status"] == "CANCELLED"
                await send(ws, "createOrder", {**ORDER, "clientOrderId": "open-1"})
                assert (await next_of(ws, "error"))["payload"]["code"] == "DUPLICATE_CLIENT_ORDER_ID"
                await send(ws, "createOrder", ORDER)
                new = (await next_of(ws, "executionEvent"))["payload"]["orderId"]
                assert new not in {o["orderId"] for o in before["orderHistory"]["orders"]}


async def test_bob_cannot_see_state_restored_for_alice(tmp_path):
    path = tmp_path / "state.sqlite3"
    with trio.fail_after(20):
        async with sim(store=str(path)) as s:
            await _trade_and_look(s.port, trade=True)
        async with sim(store=str(path)) as s:
            async with open_websocket_url(url(s.port, await login(s.port, "bob"))) as ws:
                await send(ws, "orderHistory", {"accountId": "A1"})
                assert (await next_of(ws, "error"))["payload"]["code"] == "FORBIDDEN"
                await send(ws, "orderHistory", {"accountId": "B1"})
                assert (await next_of(ws, "orderHistory"))["payload"]["orders"] == []


def test_the_store_defaults_to_a_file_next_to_the_config(tmp_path):
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(json.dumps(config_dict()))
    assert load_sim_config(cfg, env=ENV).store == str(tmp_path / "sim-state.sqlite3")
    cfg.write_text(json.dumps(config_dict(store="state/x.db")))
    assert load_sim_config(cfg, env=ENV).store == str(tmp_path / "state/x.db")
    cfg.write_text(json.dumps(config_dict(store=":memory:")))
    assert load_sim_config(cfg, env=ENV).store == ":memory:"


def test_a_store_that_cannot_be_restored_stops_the_start(tmp_path):
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError) as info:
        SimServer(sim_config_from_dict(config_dict(store=str(path))), ENV)
    assert info.value.key == "store"


@pytest.mark.parametrize("memory", [True, False])
async def test_the_cli_keeps_state_in_a_file_unless_memory(tmp_path, memory):
    """``triotrade sim`` as a user runs it: SIGINT flushes the state to the
    file next to the config; ``--memory`` leaves no file."""
    import signal
    import subprocess
    import sys

    cfg = tmp_path / "sim.yaml"
    cfg.write_text(json.dumps(config_dict()))
    argv = [sys.executable, "-m", "engine", "sim", "--config", str(cfg), "--port", "0"]
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process(
            argv + (["--memory"] if memory else []), cwd=str(tmp_path), stdout=subprocess.PIPE,
            env={"SIM_TEST_SECRET": SECRET, "PYTHONPATH": str(ROOT)},
        )
        try:
            out = b""
            while b"(Ctrl-C stops)" not in out:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, out
                out += chunk
            port = int(out.split(b"http://127.0.0.1:")[1].split(b"/")[0])
            before = await _trade_and_look(port, trade=True)
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.stdout.aclose()
    files = sorted(p.name for p in tmp_path.iterdir())
    if memory:
        assert files == ["sim.yaml"]
    else:
        assert "sim-state.sqlite3" in files
        async with sim(store=str(tmp_path / "sim-state.sqlite3")) as s:
            after = await _trade_and_look(s.port, trade=False)
        assert _held(after["portfolio"]) == _held(before["portfolio"])
        assert after["dealHistory"] == before["dealHistory"]
