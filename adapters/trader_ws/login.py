"""Where a Trader venue lives and how to log in to it (PROTOCOL sections 1, 2).

The configuration names one URL, the WebSocket (``wss://host/api/v1/ws``);
the login endpoint is derived from its origin. ``ws://`` is refused unless the
host is loopback, so a token never crosses a network in clear text.

``login`` is the one HTTP call of the live path: ``POST /api/v1/login``
through httpx, which runs on trio (through anyio). Every way it can fail is a
``VenueError``: ``auth=True`` with status 401 for refused credentials (the
caller stops instead of retrying), another status for other refusals, and
``status=None`` when the server cannot be reached. Neither the password nor
the token ever appears in an error, a repr or a log line: the token travels
as the ``token`` query parameter of the WebSocket URL, so any URL that may be
logged goes through ``redact`` first.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from datetime import datetime
from urllib.parse import quote, urlsplit

import attrs
import httpx
import msgspec
import trio

from engine.codec import parse_time
from engine.errors import ConfigError, VenueError, WireError

__all__ = [
    "Endpoints",
    "LoginResult",
    "client_ssl_context",
    "endpoints",
    "login",
    "redact",
    "ws_url_with_token",
]

LOGIN_PATH = "/api/v1/login"
_HTTP = {"wss": "https", "ws": "http"}
_TOKEN = re.compile(r"([?&]token=)[^&#]*")
_USERINFO = re.compile(r"//[^/?#]*@")
_MAX_DETAIL = 200  # characters of a server's error text kept in a message


@attrs.frozen
class Endpoints:
    """The WebSocket URL of a venue and the login URL derived from it."""

    ws_url: str
    login_url: str


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoints(url: str, *, key: str = "venue.url") -> Endpoints:
    """Check a venue WebSocket URL and derive its login URL.

    ``wss://host[:port]/any/path`` gives ``https://host[:port]/api/v1/login``
    (``ws://`` gives ``http://``, loopback hosts only).

    Raises:
        ConfigError: (naming ``key``) not ws/wss, no host, a bad port,
            ``ws://`` to a host that is not loopback, credentials, a query
            string or a fragment in the URL.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(key, "the venue URL is empty; expected wss://host[:port]/api/v1/ws")
    url = url.strip()
    shown = _USERINFO.sub("//***@", redact(url))  # what an error may quote
    try:
        parts = urlsplit(url)
        port = parts.port  # a bad port raises here
    except ValueError as exc:
        raise ConfigError(key, f"not a valid URL ({exc}): {shown!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in _HTTP:
        raise ConfigError(
            key, f"the venue URL must start with wss:// (ws:// on loopback only), got {shown!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(key, "the venue URL must not hold credentials (user:password@)")
    host = parts.hostname
    if not host:
        raise ConfigError(key, f"the venue URL has no host: {shown!r}")
    if parts.query or "?" in url:
        raise ConfigError(key, "the venue URL must not have a query string (the token is added at connect)")
    if parts.fragment or "#" in url:
        raise ConfigError(key, f"the venue URL must not have a fragment: {shown!r}")
    if scheme == "ws" and not is_loopback(host):
        raise ConfigError(
            key, f"ws:// is unencrypted and allowed only for a loopback host; use wss://{parts.netloc}"
        )
    if port == 0:
        raise ConfigError(key, f"the venue URL has port 0: {shown!r}")
    ws_url = parts._replace(scheme=scheme).geturl()
    login_url = f"{_HTTP[scheme]}://{parts.netloc}{LOGIN_PATH}"
    return Endpoints(ws_url, login_url)


@attrs.frozen
class LoginResult:
    """A granted login: the token (never shown), its expiry and the accounts it may use."""

    token: str = attrs.field(repr=False)
    expires_at: datetime
    accounts: tuple[str, ...]


async def login(
    login_url: str,
    username: str,
    password: str,
    *,
    verify: ssl.SSLContext | bool = True,
    timeout_s: float = 10.0,
) -> LoginResult:
    """``POST`` the credentials to ``login_url`` and return the granted token.

    Args:
        verify: certificate verification (an ``ssl.SSLContext`` to trust a
            private CA); on by default, off only when a caller says so.
        timeout_s: the deadline for the whole exchange.

    Raises:
        VenueError: ``auth=True, status=401`` when the credentials are refused;
            ``status=<HTTP status>`` for another refusal or a malformed reply;
            ``status=None`` when the server cannot be reached in time.
    """
    body = {"username": username, "password": password}
    resp = None
    # Environment proxies are ignored: the WebSocket (trio-websocket) cannot
    # use them, and the login must reach the same server the socket does.
    try:
        with trio.move_on_after(timeout_s):
            async with httpx.AsyncClient(
                verify=verify, timeout=timeout_s, trust_env=False, follow_redirects=False
            ) as client:
                resp = await client.post(login_url, json=body, headers={"Accept": "application/json"})
    except httpx.TimeoutException:
        resp = None
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ssl.SSLError) as exc:
        why = _scrub(_reason(exc), password)
        raise VenueError(f"cannot reach {login_url}: {why}") from None
    if resp is None:
        raise VenueError(f"cannot reach {login_url}: no reply within {timeout_s:g} s")
    status = resp.status_code
    if status == 200:
        return _parse_grant(login_url, resp.content)
    why = _scrub(_refusal(resp), password)
    if status == 401:
        raise VenueError(f"{login_url} refused the login: {why}", status=401, auth=True)
    raise VenueError(f"login at {login_url} failed: HTTP {status} {why}", status=status)


def _parse_grant(login_url: str, content: bytes) -> LoginResult:
    def bad(field: str, why: str) -> VenueError:
        return VenueError(f"bad login reply from {login_url}: `{field}` {why}", status=200)

    try:
        doc = msgspec.json.decode(content)
    except (msgspec.DecodeError, UnicodeError):
        raise VenueError(f"bad login reply from {login_url}: not JSON", status=200) from None
    if not isinstance(doc, dict):
        raise VenueError(f"bad login reply from {login_url}: not a JSON object", status=200)
    token = doc.get("token")
    if not isinstance(token, str) or not token:
        raise bad("token", "is missing or not a non-empty string")
    expires = doc.get("expiresAt")
    if not isinstance(expires, str):
        raise bad("expiresAt", "is missing or not a string")
    try:
        expires_at = parse_time(expires)
    except WireError:
        raise bad("expiresAt", f"is not an ISO-8601 UTC time: {expires[:40]!r}") from None
    accounts = doc.get("accounts")
    if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
        raise bad("accounts", "is missing or not a list of strings")
    return LoginResult(token, expires_at, tuple(accounts))


def _refusal(resp: httpx.Response) -> str:
    """``CODE: message`` from a PROTOCOL error body, else the start of the text."""
    try:
        doc = msgspec.json.decode(resp.content)
    except (msgspec.DecodeError, UnicodeError):
        doc = None
    if isinstance(doc, dict) and ("code" in doc or "message" in doc):
        text = ": ".join(str(doc[k]) for k in ("code", "message") if k in doc)
    else:
        text = resp.content[:_MAX_DETAIL].decode("utf-8", "replace").strip() or resp.reason_phrase
    return text[:_MAX_DETAIL]


def _reason(exc: BaseException) -> str:
    """The first non-empty message down the cause chain (httpx's own are
    often empty: the reason, e.g. a failed certificate check, is underneath)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if str(seen):
            return f"{type(seen).__name__}: {seen}" if seen is not exc else str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def ws_url_with_token(ws_url: str, token: str) -> str:
    """The URL to connect with: ``ws_url?token=<token>`` (url-encoded).

    The result holds the token: pass it through ``redact`` before logging it.
    """
    sep = "&" if "?" in ws_url else "?"
    return f"{ws_url}{sep}token={quote(token, safe='')}"


def redact(url: str) -> str:
    """``url`` with the value of its ``token`` parameter replaced by ``***``."""
    return _TOKEN.sub(r"\1***", url)


def client_ssl_context(url: str) -> ssl.SSLContext | None:
    """A verifying TLS context for ``wss://``/``https://``, None for ``ws://``/``http://``."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("wss", "https"):
        return ssl.create_default_context()
    if scheme in ("ws", "http"):
        return None
    raise ValueError(f"not a ws/wss URL: {redact(url)!r}")
