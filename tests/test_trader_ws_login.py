"""Venue URLs and the login call (PROTOCOL sections 1 and 2).

The URL rules are a table. Login runs over real loopback sockets: against the
project's paper-trading server for the real replies, and against a tiny
canned-reply HTTP server written here for replies no correct server sends
(a 200 with a broken body, a server that never answers, a self-signed TLS
certificate).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from functools import partial

import pytest
import trio
from trio_websocket import open_websocket_url

from adapters.sim.auth import hash_password
from adapters.sim.server import SimServer
from adapters.sim.simconfig import sim_config_from_dict
from adapters.trader_ws.login import (
    Endpoints,
    LoginResult,
    client_ssl_context,
    endpoints,
    login,
    redact,
    ws_url_with_token,
)
from engine.errors import ConfigError, VenueError

SECRET = "s" * 40
ENV = {"SIM_TEST_SECRET": SECRET}
PASSWORD = "correct-horse-battery"
WRONG = "hunter2-wrong-password"


def config_dict() -> dict:
    return {
        "users": [{"username": "alice", "password_hash": hash_password(PASSWORD, iterations=1000),
                   "accounts": ["A1", "A2"]}],
        "accounts": [{"id": "A1"}, {"id": "A2"}],
        "market": {"synthetic": {"symbols": ["EURUSD"], "seed": 3, "rate_per_s": 50}},
        "auth": {"secret_env": "SIM_TEST_SECRET"},
    }


@asynccontextmanager
async def sim():
    """A running paper-trading server; yields it (``.port``), stops it on exit."""
    server = SimServer(sim_config_from_dict(config_dict()), ENV)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def canned(response: bytes | None, ssl_context: ssl.SSLContext | None = None):
    """A loopback HTTP server that reads one request and sends ``response``
    (None: never answers). Yields its port."""

    async def handler(stream):
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_side=True)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            if response is None:
                await trio.sleep_forever()
            await stream.send_all(response)
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # e.g. the client refused our certificate

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def reply(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


def login_url(port: int, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{port}/api/v1/login"


# ------------------------------------------------------------------ endpoints


@pytest.mark.parametrize(
    ("url", "ws_url", "login_url_"),
    [
        ("wss://trader.example.com/api/v1/ws", "wss://trader.example.com/api/v1/ws",
         "https://trader.example.com/api/v1/login"),
        ("wss://trader.example.com:8443/api/v1/ws", "wss://trader.example.com:8443/api/v1/ws",
         "https://trader.example.com:8443/api/v1/login"),
        ("WSS://trader.example.com/other/path", "wss://trader.example.com/other/path",
         "https://trader.example.com/api/v1/login"),
        ("  wss://trader.example.com/api/v1/ws\n", "wss://trader.example.com/api/v1/ws",
         "https://trader.example.com/api/v1/login"),
        ("ws://127.0.0.1:8000/api/v1/ws", "ws://127.0.0.1:8000/api/v1/ws",
         "http://127.0.0.1:8000/api/v1/login"),
        ("ws://127.8.9.10/api/v1/ws", "ws://127.8.9.10/api/v1/ws", "http://127.8.9.10/api/v1/login"),
        ("ws://localhost:9/api/v1/ws", "ws://localhost:9/api/v1/ws", "http://localhost:9/api/v1/login"),
        ("ws://[::1]:8000/api/v1/ws", "ws://[::1]:8000/api/v1/ws", "http://[::1]:8000/api/v1/login"),
        ("wss://[2001:db8::1]:443/api/v1/ws", "wss://[2001:db8::1]:443/api/v1/ws",
         "https://[2001:db8::1]:443/api/v1/login"),
    ],
)
def test_endpoints_derive_the_login_url_from_the_origin(url, ws_url, login_url_):
    assert endpoints(url) == Endpoints(ws_url, login_url_)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("https://trader.example.com/api/v1/ws", "must start with wss://"),
        ("http://127.0.0.1/api/v1/ws", "must start with wss://"),
        ("trader.example.com/api/v1/ws", "must start with wss://"),
        ("ws://trader.example.com/api/v1/ws", "loopback"),
        ("ws://10.0.0.5:8000/api/v1/ws", "loopback"),
        ("ws://[2001:db8::1]/api/v1/ws", "loopback"),
        ("ws://localhost.example.com/api/v1/ws", "loopback"),
        ("wss:///api/v1/ws", "no host"),
        ("wss://trader.example.com/api/v1/ws?token=abc", "query string"),
        ("wss://trader.example.com/api/v1/ws?", "query string"),
        ("wss://trader.example.com/api/v1/ws#frag", "fragment"),
        ("wss://user:pw@trader.example.com/api/v1/ws", "credentials"),
        ("wss://trader.example.com:99999/api/v1/ws", "not a valid URL"),
        ("wss://trader.example.com:abc/api/v1/ws", "not a valid URL"),
        ("wss://trader.example.com:0/api/v1/ws", "port 0"),
    ],
)
def test_endpoints_refuse_unsafe_or_unusable_urls(url, why):
    with pytest.raises(ConfigError) as info:
        endpoints(url, key="venues.live.url")
    assert info.value.key == "venues.live.url"
    assert why in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "wss://user:s3cret-pw@trader.example.com/api/v1/ws",
        "wss://user:s3cret-pw@trader.example.com:abc/api/v1/ws",
        "https://user:s3cret-pw@trader.example.com/api/v1/ws?token=s3cret-pw",
        "ws://trader.example.com/api/v1/ws?token=s3cret-pw",
        "wss:///api/v1/ws?token=s3cret-pw",
    ],
)
def test_a_refusal_never_quotes_a_password_or_token(url):
    with pytest.raises(ConfigError) as info:
        endpoints(url)
    assert "s3cret-pw" not in str(info.value)


# ------------------------------------------------------- token in the URL


def test_ws_url_with_token_encodes_and_redact_hides_it():
    token = "eyJhbGciOi.J9+/=&x y"
    url = ws_url_with_token("wss://h/api/v1/ws", token)
    assert url == "wss://h/api/v1/ws?token=eyJhbGciOi.J9%2B%2F%3D%26x%20y"
    shown = redact(url)
    assert shown == "wss://h/api/v1/ws?token=***"
    assert "eyJhbGciOi" not in shown
    # another parameter first, and one after
    assert redact("wss://h/ws?a=1&token=abc.def&b=2") == "wss://h/ws?a=1&token=***&b=2"
    assert ws_url_with_token("wss://h/ws?a=1", "t") == "wss://h/ws?a=1&token=t"
    assert redact("wss://h/ws") == "wss://h/ws"


def test_login_result_repr_hides_the_token():
    result = LoginResult("secret.jwt.value", datetime(2026, 6, 1, tzinfo=timezone.utc), ("A1",))
    assert "secret.jwt.value" not in repr(result)
    assert "A1" in repr(result)


def test_client_ssl_context_verifies_for_wss_and_is_none_for_ws():
    ctx = client_ssl_context("wss://trader.example.com/api/v1/ws")
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert client_ssl_context("ws://127.0.0.1:8000/api/v1/ws") is None
    with pytest.raises(ValueError):
        client_ssl_context("ftp://h/x?token=abc")


# --------------------------------------------------- login against the server


async def test_login_to_the_paper_trading_server_and_connect_with_the_token():
    with trio.fail_after(10):
        async with sim() as server:
            ends = endpoints(f"ws://127.0.0.1:{server.port}/api/v1/ws")
            result = await login(ends.login_url, "alice", PASSWORD)
            assert result.accounts == ("A1", "A2")
            assert result.expires_at > datetime.now(timezone.utc)
            assert result.token
            # the token opens the WebSocket: the server streams to it
            async with open_websocket_url(ws_url_with_token(ends.ws_url, result.token)) as ws:
                await ws.send_message('{"type":"subscribe","payload":{"symbols":["EURUSD"],'
                                      '"events":["quoteEvent"]}}')
                assert '"subscribed"' in await ws.get_message()


async def test_a_wrong_password_is_an_auth_error_that_does_not_show_it():
    with trio.fail_after(10):
        async with sim() as server:
            with pytest.raises(VenueError) as info:
                await login(login_url(server.port), "alice", WRONG)
    exc = info.value
    assert exc.auth is True and exc.status == 401
    assert "login refused" in str(exc)
    assert WRONG not in str(exc) and WRONG not in repr(exc) and WRONG not in exc.detail


async def test_an_unknown_user_gets_the_same_refusal():
    with trio.fail_after(10):
        async with sim() as server:
            with pytest.raises(VenueError) as info:
                await login(login_url(server.port), "mallory", PASSWORD)
    assert info.value.auth and info.value.status == 401


async def test_a_closed_port_is_unreachable():
    with trio.fail_after(10):
        sock = trio.socket.socket()
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()  # nothing listens there now
        with pytest.raises(VenueError) as info:
            await login(login_url(port), "alice", PASSWORD)
    assert info.value.status is None and not info.value.auth
    assert str(info.value).startswith(f"cannot reach {login_url(port)}: ")


async def test_a_server_that_never_answers_times_out():
    with trio.fail_after(10):
        async with canned(None) as port:
            with pytest.raises(VenueError) as info:
                await login(login_url(port), "alice", PASSWORD, timeout_s=0.3)
    assert info.value.status is None
    assert "cannot reach" in str(info.value)


# ------------------------------------------------------- replies of a bad server


GOOD = b'{"token":"tok.en.x","expiresAt":"2026-06-01T12:00:00Z","accounts":["A1"]}'


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "not JSON"),
        (b'["token"]', "not a JSON object"),
        (b'{"expiresAt":"2026-06-01T12:00:00Z","accounts":["A1"]}', "`token`"),
        (b'{"token":"","expiresAt":"2026-06-01T12:00:00Z","accounts":["A1"]}', "`token`"),
        (b'{"token":42,"expiresAt":"2026-06-01T12:00:00Z","accounts":["A1"]}', "`token`"),
        (b'{"token":"t","accounts":["A1"]}', "`expiresAt`"),
        (b'{"token":"t","expiresAt":"tomorrow","accounts":["A1"]}', "`expiresAt`"),
        (b'{"token":"t","expiresAt":"2026-06-01T12:00:00Z"}', "`accounts`"),
        (b'{"token":"t","expiresAt":"2026-06-01T12:00:00Z","accounts":"A1"}', "`accounts`"),
        (b'{"token":"t","expiresAt":"2026-06-01T12:00:00Z","accounts":["A1",2]}', "`accounts`"),
    ],
)
async def test_a_malformed_grant_names_the_bad_field(body, field):
    with trio.fail_after(10):
        async with canned(reply("200 OK", body)) as port:
            with pytest.raises(VenueError) as info:
                await login(login_url(port), "alice", PASSWORD)
    assert field in str(info.value)
    assert info.value.status == 200 and not info.value.auth
    assert PASSWORD not in str(info.value)


async def test_a_well_formed_grant_from_any_server_is_accepted():
    with trio.fail_after(10):
        async with canned(reply("200 OK", GOOD)) as port:
            result = await login(login_url(port), "alice", PASSWORD)
    assert result == LoginResult("tok.en.x", datetime(2026, 6, 1, 12, tzinfo=timezone.utc), ("A1",))


@pytest.mark.parametrize(
    ("status", "body", "shown"),
    [
        ("400 Bad Request", b'{"code":"BAD_REQUEST","message":"the body is not JSON"}',
         "BAD_REQUEST: the body is not JSON"),
        ("503 Service Unavailable", b"<html>down for maintenance</html>", "down for maintenance"),
        ("302 Found", b"", "Found"),
    ],
)
async def test_other_refusals_carry_the_status_and_the_servers_words(status, body, shown):
    with trio.fail_after(10):
        async with canned(reply(status, body)) as port:
            with pytest.raises(VenueError) as info:
                await login(login_url(port), "alice", PASSWORD)
    assert info.value.status == int(status.split()[0]) and not info.value.auth
    assert shown in str(info.value)


async def test_a_server_echoing_the_password_does_not_get_it_into_the_error():
    body = b'{"code":"UNAUTHORIZED","message":"bad password ' + PASSWORD.encode() + b'"}'
    with trio.fail_after(10):
        async with canned(reply("401 Unauthorized", body)) as port:
            with pytest.raises(VenueError) as info:
                await login(login_url(port), "alice", PASSWORD)
    assert info.value.auth and "UNAUTHORIZED" in str(info.value)
    assert PASSWORD not in str(info.value)


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """(cert, key) files of a self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_certificates_are_verified_by_default(self_signed):
    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    with trio.fail_after(10):
        async with canned(reply("200 OK", GOOD), server_ctx) as port:
            with pytest.raises(VenueError) as info:
                await login(login_url(port, "https"), "alice", PASSWORD)
            assert info.value.status is None
            assert "certificate" in str(info.value).lower(), str(info.value)
            # a context that trusts this certificate gets through
            trusting = ssl.create_default_context(cafile=str(cert))
            result = await login(login_url(port, "https"), "alice", PASSWORD, verify=trusting)
    assert result.token == "tok.en.x"
