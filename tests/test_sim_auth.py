"""Login, password hashes and tokens of the simulator (PROTOCOL sections 1, 2)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import jwt
import msgspec
import pytest

from adapters.sim.auth import (
    ALGORITHM, AuthError, Authenticator, Claims, TokenIssuer, User, hash_password,
    secret_from_env, verify_password,
)
from engine.errors import ConfigError, TriotradeError, UsageError

UTC = timezone.utc
T0 = datetime(2026, 6, 1, 12, 0, 0, 250_000, tzinfo=UTC)
SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32
PASSWORD = "correct horse battery staple"
FAST = 1_000  # PBKDF2 rounds in tests that are not about the default cost

ALICE = User("alice", hash_password(PASSWORD, iterations=FAST), ("acc_1", "acc_2"))
BOB = User("bob", hash_password("hunter2hunter2", iterations=FAST), ("acc_3",))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_token(header: dict, claims: dict, signature: bytes = b"") -> str:
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()),
                     b64url(signature)])


def claims_at(now: datetime, **extra) -> dict:
    iat = int(now.timestamp())
    return {"sub": "alice", "accounts": ["acc_1"], "iat": iat, "exp": iat + 60, **extra}


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer(SECRET, timedelta(minutes=15))


# -- passwords --------------------------------------------------------------------------


def test_hash_round_trip_with_the_default_cost():
    stored = hash_password(PASSWORD)
    scheme, rounds, _salt, _digest = stored.split("$")
    assert (scheme, int(rounds)) == ("pbkdf2_sha256", 100_000)
    assert verify_password(PASSWORD, stored)
    assert PASSWORD not in stored


def test_wrong_password_is_refused():
    stored = hash_password(PASSWORD, iterations=FAST)
    assert not verify_password(PASSWORD + " ", stored)
    assert not verify_password("", stored)
    assert not verify_password(PASSWORD.upper(), stored)


def test_different_salts_give_different_hashes_and_a_fixed_salt_the_same():
    a, b = hash_password(PASSWORD, iterations=FAST), hash_password(PASSWORD, iterations=FAST)
    assert a != b
    assert verify_password(PASSWORD, a) and verify_password(PASSWORD, b)
    salt = b"\x01" * 16
    assert hash_password(PASSWORD, salt=salt, iterations=FAST) == hash_password(
        PASSWORD, salt=salt, iterations=FAST)


def test_non_ascii_and_lone_surrogate_passwords_hash_without_error():
    stored = hash_password("pässwörd€", iterations=FAST)
    assert verify_password("pässwörd€", stored)
    assert not verify_password("\ud800", stored)


@pytest.mark.parametrize("stored", [
    "", "plaintext", "pbkdf2_sha256$1000$abc", "md5$1000$AAAA$AAAA",
    "pbkdf2_sha256$x$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44,
    "pbkdf2_sha256$0$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44,
    "pbkdf2_sha256$99999999999$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44,
    "pbkdf2_sha256$1000$!!!!$" + "A" * 44,
    "pbkdf2_sha256$1000$AAAAAAAAAAAAAAAAAAAAAA==$AAAA",
    "pbkdf2_sha256$1000$$" + "A" * 44,
    "pbkdf2_sha256$１０００$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44,
    None,
])
def test_a_malformed_stored_hash_is_false_not_an_exception(stored):
    assert verify_password(PASSWORD, stored) is False


def test_user_repr_shows_no_hash():
    stored = hash_password(PASSWORD, iterations=FAST)
    user = User("alice", stored, ["acc_1"])
    assert user.accounts == ("acc_1",)
    assert stored not in repr(user) and "pbkdf2" not in repr(user) and PASSWORD not in repr(user)


# -- tokens ---------------------------------------------------------------------------------


def test_issue_and_verify(issuer):
    token, expires_at = issuer.issue(ALICE, T0)
    assert expires_at == datetime(2026, 6, 1, 12, 15, tzinfo=UTC)
    assert issuer.verify(token, T0) == Claims("alice", ("acc_1", "acc_2"), expires_at)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == ALGORITHM == "HS256"
    raw = jwt.decode(token, options={"verify_signature": False})
    assert raw == {"sub": "alice", "accounts": ["acc_1", "acc_2"],
                   "iat": 1780315200, "exp": 1780316100}


def test_a_token_expires_at_exp(issuer):
    token, expires_at = issuer.issue(ALICE, T0)
    assert issuer.verify(token, expires_at - timedelta(microseconds=1)).username == "alice"
    for late in (expires_at, expires_at + timedelta(days=1)):
        with pytest.raises(AuthError, match="expired") as info:
            issuer.verify(token, late)
        assert info.value.reason == "expired"


def test_verify_uses_the_now_passed_in_not_the_wall_clock():
    past = datetime(2001, 1, 1, tzinfo=UTC)
    issuer = TokenIssuer(SECRET, timedelta(seconds=60))
    token, _ = issuer.issue(ALICE, past)  # long expired by the wall clock
    assert issuer.verify(token, past + timedelta(seconds=30)).username == "alice"


def test_a_tampered_token_is_refused(issuer):
    token, _ = issuer.issue(ALICE, T0)
    header, payload, sig = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["accounts"].append("acc_3")
    forged_payload = b64url(json.dumps(forged).encode())
    with pytest.raises(AuthError, match="bad signature"):
        issuer.verify(f"{header}.{forged_payload}.{sig}", T0)
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    with pytest.raises(AuthError, match="bad signature"):
        issuer.verify(f"{header}.{payload}.{flipped}", T0)


def test_a_token_of_another_secret_is_refused(issuer):
    token, _ = TokenIssuer(OTHER_SECRET, timedelta(minutes=15)).issue(ALICE, T0)
    with pytest.raises(AuthError, match="bad signature"):
        issuer.verify(token, T0)


def test_alg_none_is_refused(issuer):
    token = hand_token({"alg": "none", "typ": "JWT"}, claims_at(T0))
    with pytest.raises(AuthError, match="wrong algorithm") as info:
        issuer.verify(token, T0)
    assert info.value.reason == "wrong algorithm"
    for alg in ("None", "NONE"):
        with pytest.raises(AuthError):
            issuer.verify(hand_token({"alg": alg, "typ": "JWT"}, claims_at(T0)), T0)


def test_hs512_and_rs256_headers_are_refused(issuer):
    hs512 = jwt.encode(claims_at(T0), SECRET * 2, algorithm="HS512")
    with pytest.raises(AuthError, match="wrong algorithm"):
        issuer.verify(hs512, T0)
    rs256 = hand_token({"alg": "RS256", "typ": "JWT"}, claims_at(T0), b"x" * 256)
    with pytest.raises(AuthError, match="wrong algorithm"):
        issuer.verify(rs256, T0)


@pytest.mark.parametrize("garbage", [
    "garbage", "a.b.c", "a.b", "....", "Bearer xyz", "é.é.é",
    hand_token({"alg": "HS256"}, ["not", "an", "object"]),
])
def test_garbage_is_malformed(issuer, garbage):
    with pytest.raises(AuthError) as info:
        issuer.verify(garbage, T0)
    assert info.value.reason in {"malformed", "bad signature"}
    assert isinstance(info.value, TriotradeError)


@pytest.mark.parametrize("token", [None, ""])
def test_a_missing_token_is_refused(issuer, token):
    with pytest.raises(AuthError, match="missing"):
        issuer.verify(token, T0)


@pytest.mark.parametrize("drop", ["sub", "accounts", "iat", "exp"])
def test_a_validly_signed_token_without_a_claim_is_refused(issuer, drop):
    claims = claims_at(T0)
    del claims[drop]
    with pytest.raises(AuthError, match="missing claims"):
        issuer.verify(jwt.encode(claims, SECRET, algorithm="HS256"), T0)


@pytest.mark.parametrize("bad", [
    {"sub": 7}, {"sub": ""}, {"accounts": "acc_1"}, {"accounts": [1]}, {"exp": "soon"},
    {"exp": 1.5e9}, {"iat": True}, {"exp": 10**30},
])
def test_a_validly_signed_token_with_ill_typed_claims_is_refused(issuer, bad):
    token = jwt.encode(claims_at(T0, **bad), SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as info:
        issuer.verify(token, T0)
    assert info.value.reason in {"bad claims", "malformed"}


def test_auth_errors_never_hold_the_token_or_the_password(issuer):
    token, _ = issuer.issue(ALICE, T0)
    for bad, now in [(token, T0 + timedelta(hours=1)), (token[:-3] + "AAA", T0), (token + "x", T0)]:
        with pytest.raises(AuthError) as info:
            issuer.verify(bad, now)
        text = str(info.value) + repr(info.value)
        assert token.split(".")[1] not in text and PASSWORD not in text


def test_bad_settings_are_usage_errors():
    with pytest.raises(UsageError):
        TokenIssuer(b"short", timedelta(minutes=1))
    with pytest.raises(UsageError):
        TokenIssuer(SECRET, timedelta(0))
    with pytest.raises(UsageError):
        TokenIssuer(SECRET, timedelta(minutes=1)).issue(ALICE, datetime(2026, 1, 1))
    assert "s" * 32 not in repr(TokenIssuer(SECRET, timedelta(minutes=1)))


def test_secret_from_env():
    value = "x" * 40
    assert secret_from_env("SIM_SECRET", {"SIM_SECRET": value}) == value.encode()
    a, b = secret_from_env("SIM_SECRET", {}), secret_from_env(None, {"SIM_SECRET": value})
    assert len(a) == len(b) == 32 and a != b
    with pytest.raises(ConfigError, match="SIM_SECRET"):
        secret_from_env("SIM_SECRET", {"SIM_SECRET": "short"})


# -- POST /api/v1/login ---------------------------------------------------------------------


@pytest.fixture
def auth(issuer) -> Authenticator:
    return Authenticator({u.username: u for u in (ALICE, BOB)}, issuer)


def test_login_succeeds(auth, issuer):
    status, body = auth.login(msgspec.json.encode({"username": "alice", "password": PASSWORD}), T0)
    assert status == 200
    reply = json.loads(body)
    assert set(reply) == {"token", "expiresAt", "accounts"}
    assert reply["expiresAt"] == "2026-06-01T12:15:00Z"
    assert reply["accounts"] == ["acc_1", "acc_2"]
    assert issuer.verify(reply["token"], T0).accounts == ("acc_1", "acc_2")


def test_login_ignores_unknown_keys(auth):
    body = {"username": "bob", "password": "hunter2hunter2", "remember": True}
    assert auth.login(msgspec.json.encode(body), T0)[0] == 200


@pytest.mark.parametrize("body", [
    b"", b"not json", b"{", b"[]", b'"alice"', b"null", b"\xff\xfe",
    b'{"username": "alice"}', b'{"password": "x"}', b'{"username": 1, "password": "x"}',
    b'{"username": "alice", "password": null}', b'{"username": "alice", "password": ["x"]}',
])
def test_login_with_a_malformed_body_is_400(auth, body):
    status, reply = auth.login(body, T0)
    assert status == 400
    reply = json.loads(reply)
    assert set(reply) == {"code", "message"} and reply["code"] == "BAD_REQUEST" and reply["message"]


def test_wrong_password_and_unknown_user_get_the_same_401(auth):
    wrong = auth.login(b'{"username": "alice", "password": "nope"}', T0)
    unknown = auth.login(b'{"username": "mallory", "password": "nope"}', T0)
    other = auth.login(msgspec.json.encode({"username": "bob", "password": PASSWORD}), T0)
    assert wrong == unknown == other
    assert wrong[0] == 401
    assert json.loads(wrong[1]) == {"code": "UNAUTHORIZED", "message": "bad credentials"}


def test_an_unknown_user_costs_the_same_hash_work(auth, monkeypatch):
    import adapters.sim.auth as mod

    rounds = []
    real = mod.hashlib.pbkdf2_hmac

    def counting(name, pw, salt, n):
        rounds.append(n)
        return real(name, pw, salt, n)

    monkeypatch.setattr(mod.hashlib, "pbkdf2_hmac", counting)
    auth.login(b'{"username": "alice", "password": "nope"}', T0)
    auth.login(b'{"username": "mallory", "password": "nope"}', T0)
    assert rounds == [FAST, FAST]


def test_the_password_never_shows_in_replies_or_reprs(auth):
    secret_pw = "pw-" + "z" * 20
    for body in ({"username": "alice", "password": secret_pw},
                 {"username": "alice", "password": secret_pw, "x": float("nan")},
                 {"username": 5, "password": secret_pw}):
        try:
            raw = msgspec.json.encode(body)
        except Exception:
            raw = json.dumps(body).encode()
        _, reply = auth.login(raw, T0)
        assert secret_pw.encode() not in reply
    assert PASSWORD not in repr(auth) and "pbkdf2" not in repr(auth)
