"""Login and tokens of the paper-trading server (PROTOCOL sections 1 and 2).

Sans-IO: every function takes the time it needs (``now``) and the request
bytes, and returns values; the server does the sockets. Passwords are kept
only as salted PBKDF2 hashes (a self-describing string, so the iteration
count can be raised later without breaking stored hashes) and never appear
in a repr, a log line or an error message. Tokens are HS256 JWTs; anything
else (``alg: none``, HS512, RS256, a forged signature) is refused.

Hashing costs tens of milliseconds on purpose: the server should run
``Authenticator.login`` in a worker thread (``trio.to_thread.run_sync``) so
one login does not stall every connection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

import attrs
import jwt
import msgspec

from engine.errors import ConfigError, TriotradeError, UsageError

__all__ = [
    "ALGORITHM", "AuthError", "Authenticator", "Claims", "ITERATIONS", "TokenIssuer", "User",
    "hash_password", "secret_from_env", "verify_password",
]

ALGORITHM = "HS256"
SCHEME = "pbkdf2_sha256"
ITERATIONS = 100_000
"""PBKDF2-HMAC-SHA256 rounds for new hashes: about 30 ms here. OWASP asks
600,000 for real user databases; this is a paper-trading venue on loopback
with play money, where a login must not stall the server and the test suite
logs in often. The count is stored in each hash, so raising it later keeps
old hashes valid."""
MAX_ITERATIONS = 10_000_000
"""A stored hash asking for more rounds is malformed (it would hang a login)."""
SALT_BYTES = 16
MIN_SECRET_BYTES = 32
"""HS256 keys shorter than the hash output are weak (RFC 7518 3.2)."""

_UTC = timezone.utc


# -- passwords ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _pw_bytes(password: str) -> bytes:
    # surrogatepass: a JSON "\ud800" must hash (and fail to match), not raise.
    return password.encode("utf-8", "surrogatepass")


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>`` for ``password``.

    Args:
        salt: fixed salt (tests); None draws 16 random bytes.
        iterations: PBKDF2 rounds (default ``ITERATIONS``).
    """
    if not isinstance(password, str):
        raise UsageError("hash_password takes the password as a str")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise UsageError(f"iterations must be in 1..{MAX_ITERATIONS}, got {iterations}")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha256", _pw_bytes(password), salt, iterations)
    return f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def _parse_hash(stored: str) -> tuple[int, bytes, bytes] | None:
    """(iterations, salt, digest) of a stored hash, or None if malformed."""
    if not isinstance(stored, str):
        return None
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != SCHEME or not parts[1].isascii() or not parts[1].isdigit():
        return None
    iterations = int(parts[1])
    if not 1 <= iterations <= MAX_ITERATIONS:
        return None
    try:
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except ValueError:
        return None
    if not salt or len(digest) != hashlib.sha256().digest_size:
        return None
    return iterations, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; a malformed ``stored`` is False."""
    parsed = _parse_hash(stored)
    if parsed is None or not isinstance(password, str):
        return False
    iterations, salt, digest = parsed
    got = hashlib.pbkdf2_hmac("sha256", _pw_bytes(password), salt, iterations)
    return hmac.compare_digest(got, digest)


@attrs.frozen
class User:
    """A login of the simulator: the hash stays out of ``repr``."""

    username: str
    password_hash: str = attrs.field(repr=False)
    accounts: tuple[str, ...] = attrs.field(converter=tuple)


# -- tokens ---------------------------------------------------------------------------


class AuthError(TriotradeError):
    """A token the server refuses (HTTP 401 / close code 4401).

    ``reason`` is one of ``missing``, ``malformed``, ``wrong algorithm``,
    ``bad signature``, ``missing claims``, ``bad claims``, ``expired``; the
    message never holds the token.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        self.reason = reason
        super().__init__(f"token refused: {reason}" + (f" ({detail})" if detail else ""))


@attrs.frozen
class Claims:
    """What a verified token grants."""

    username: str
    accounts: tuple[str, ...]
    expires_at: datetime


def _aware(now: datetime, what: str) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise UsageError(f"{what} needs a timezone-aware datetime, got {now!r}")
    return now


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class TokenIssuer:
    """Signs and checks the server's HS256 tokens.

    Args:
        secret: the HMAC key, at least 32 bytes (see ``secret_from_env``).
        lifetime: how long a token is valid (whole seconds, > 0).
    """

    def __init__(self, secret: bytes, lifetime: timedelta) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise UsageError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
        seconds = int(lifetime.total_seconds())
        if seconds < 1:
            raise UsageError(f"token lifetime must be at least 1 s, got {lifetime}")
        self._secret = secret
        self.lifetime = timedelta(seconds=seconds)

    def __repr__(self) -> str:
        return f"TokenIssuer(lifetime={self.lifetime})"

    def issue(self, user: User, now: datetime) -> tuple[str, datetime]:
        """A token for ``user`` issued at ``now``, and when it expires."""
        iat = int(_aware(now, "issue").timestamp())
        exp = iat + int(self.lifetime.total_seconds())
        claims = {"sub": user.username, "accounts": list(user.accounts), "iat": iat, "exp": exp}
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return token, datetime.fromtimestamp(exp, _UTC)

    def verify(self, token: str | None, now: datetime) -> Claims:
        """The claims of a valid ``token`` at ``now``.

        Raises:
            AuthError: missing, malformed, not HS256 (``alg: none`` included),
                badly signed, missing or ill-typed claims, or expired
                (``now`` at or after ``exp``).
        """
        now = _aware(now, "verify")
        if not token:
            raise AuthError("missing")
        if not isinstance(token, str):
            raise AuthError("malformed", "not a string")
        try:
            payload = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM],
                # exp is checked below against the ``now`` passed in, never the wall clock.
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                         "require": ["sub", "accounts", "iat", "exp"]},
            )
        except jwt.InvalidAlgorithmError:
            raise AuthError("wrong algorithm", f"only {ALGORITHM} is accepted") from None
        except jwt.InvalidSignatureError:
            raise AuthError("bad signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("missing claims", f"no {exc.claim!r}") from None
        except jwt.DecodeError:
            raise AuthError("malformed") from None
        except jwt.InvalidTokenError:
            raise AuthError("malformed") from None
        sub, accounts, iat, exp = (payload[k] for k in ("sub", "accounts", "iat", "exp"))
        if not (
            isinstance(sub, str) and sub and _is_int(iat) and _is_int(exp)
            and isinstance(accounts, list) and all(isinstance(a, str) for a in accounts)
        ):
            raise AuthError("bad claims")
        if now.timestamp() >= exp:
            raise AuthError("expired")
        try:
            expires_at = datetime.fromtimestamp(exp, _UTC)
        except (OverflowError, OSError, ValueError):
            raise AuthError("bad claims", "exp out of range") from None
        return Claims(sub, tuple(accounts), expires_at)


def secret_from_env(name: str | None, env: Mapping[str, str] = os.environ) -> bytes:
    """The token secret: the variable ``name``'s value, else a fresh random one.

    A random secret (``name`` None or not set) lives as long as the process:
    tokens do not survive a restart. Set the variable to keep them valid.

    Raises:
        ConfigError: the variable is set but shorter than 32 bytes.
    """
    value = env.get(name) if name else None
    if value is None:
        return secrets.token_bytes(MIN_SECRET_BYTES)
    secret = value.encode("utf-8", "surrogateescape")
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(name, f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


# -- POST /api/v1/login ---------------------------------------------------------------


class _LoginBody(msgspec.Struct):
    username: str
    password: str


class _LoginReply(msgspec.Struct, rename="camel"):
    token: str
    expires_at: str
    accounts: list[str]


class _ErrorReply(msgspec.Struct):
    code: str
    message: str


_decoder = msgspec.json.Decoder(_LoginBody)
_encoder = msgspec.json.Encoder()
_UNAUTHORIZED = (401, _encoder.encode(_ErrorReply("UNAUTHORIZED", "bad credentials")))


def _format_time(ts: datetime) -> str:
    return ts.astimezone(_UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Authenticator:
    """``POST /api/v1/login``: a body in, a status and JSON body out.

    An unknown user and a wrong password get the same 401, after the same
    hashing work (a dummy hash stands in for the missing user), so neither
    the reply nor its timing tells whether a username exists.
    """

    def __init__(self, users: Mapping[str, User], issuer: TokenIssuer) -> None:
        self.users = dict(users)
        self.issuer = issuer
        costs = [p[0] for u in self.users.values() if (p := _parse_hash(u.password_hash))]
        self._dummy = hash_password("", salt=b"\0" * SALT_BYTES, iterations=max(costs, default=ITERATIONS))

    def __repr__(self) -> str:
        return f"Authenticator(users={sorted(self.users)})"

    def login(self, body: bytes, now: datetime) -> tuple[int, bytes]:
        """(HTTP status, JSON body) for a login request body."""
        try:
            req = _decoder.decode(body)
        except msgspec.ValidationError:
            return _bad_request("the body must be an object with string username and password")
        except msgspec.DecodeError:
            return _bad_request("the body is not JSON")
        user = self.users.get(req.username)
        ok = verify_password(req.password, user.password_hash if user else self._dummy)
        if user is None or not ok:
            return _UNAUTHORIZED
        token, expires_at = self.issuer.issue(user, now)
        return 200, _encoder.encode(_LoginReply(token, _format_time(expires_at), list(user.accounts)))


def _bad_request(message: str) -> tuple[int, bytes]:
    return 400, _encoder.encode(_ErrorReply("BAD_REQUEST", message))
