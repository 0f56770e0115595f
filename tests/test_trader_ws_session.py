"""The sans-IO session of the live adapter: subscriptions, reconcile, liveness,
reconnect decisions and pending trading requests (PROTOCOL sections 1, 2, 5.2).

Server messages go through the real wire codec (``encode_event`` then
``decode_envelope``), so the session sees what the trio reader will hand it.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from adapters.trader_ws.session import Liveness, Pending, Phase, Reconnect, Send, Session, Stop
from engine.codec import decode_envelope, encode_event
from engine.enums import ErrorCode, EventKind, OrderStatus, OrderType, PositionSide, Reason, Side
from engine.errors import UsageError
from engine.events import (
    Error,
    Execution,
    OrderHistory,
    Portfolio,
    Position,
    Quote,
    Subscribed,
)
from engine.intents import (
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

ACC = "acc_1"
T0 = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
Q, X, P = EventKind.QUOTE, EventKind.EXECUTION, EventKind.PORTFOLIO
_exec_ids = itertools.count()


# --------------------------------------------------------------------------
# Builders


def feed(s: Session, payload, rid: str | None = None, now: float = 0.0):
    """Pass ``payload`` through the wire codec into the session."""
    env = decode_envelope(encode_event(payload, rid))
    return s.on_event(env.payload, env.id, now)


def echo(intent) -> Subscribed:
    if type(intent) is Subscribe:
        return Subscribed(symbols=intent.symbols, events=intent.events)
    if type(intent) is DepthSubscribe:
        return Subscribed(symbol=intent.symbol, depth=intent.depth)
    return Subscribed(account_id=intent.account_id)


def execution(*, oid="o-1", cid=None, status=OrderStatus.NEW, reason=None, position_id=None, account=ACC):
    filled = 10_000.0 if status is OrderStatus.FILLED else 0.0
    return Execution(
        account_id=account, order_id=oid, client_order_id=cid, exec_id=f"x-{next(_exec_ids)}",
        symbol="EURUSD", side=Side.BUY, type=OrderType.MARKET, status=status, quantity=10_000.0,
        filled_quantity=filled, remaining_quantity=10_000.0 - filled, price=None, stop_price=None,
        last_quantity=None, last_price=None, average_price=None, commission=0.0,
        position_id=position_id, reason=None if reason is None else Reason(reason), ts=T0,
    )


def position(pid="p-1", stop_loss=None, take_profit=None) -> Position:
    return Position(pid, "EURUSD", PositionSide.LONG, 10_000.0, 1.084, 1.0841, 1.0, stop_loss,
                    take_profit, T0)


def portfolio(account=ACC, positions=()) -> Portfolio:
    return Portfolio(account, "USD", 10_000.0, tuple(positions), T0)


def history(account=ACC) -> OrderHistory:
    return OrderHistory(account, ())


def ack_all(s: Session, sends, *, ids=True, now=0.0) -> list[Send]:
    """Acknowledge ``sends``; returns what the session asked to send because of it."""
    out = []
    for send in sends:
        out += feed(s, echo(send.intent), send.request_id if ids else None, now)
    return out


def to_live(s: Session, now: float = 0.0) -> list[Send]:
    s.connecting(now)
    sends = s.opened(now)
    [query] = ack_all(s, sends, now=now)
    feed(s, history(), query.request_id, now)
    feed(s, portfolio(), None, now)
    assert s.live
    return sends + [query]


def wanting(*requests, **kw) -> Session:
    s = Session(ACC, **kw)
    s.want(requests)
    return s


# --------------------------------------------------------------------------
# Subscriptions


@pytest.mark.parametrize("wanted, expected", [
    ([Subscribe(("EURUSD",), (Q, X)), Subscribe(("GBPUSD",), (X, Q))],
     [Subscribe(("EURUSD", "GBPUSD"), (Q, X)), Subscribe(("EURUSD", "GBPUSD"), (P,))]),
    ([Subscribe(("EURUSD",), (Q,)), Subscribe(("EURUSD",), (X,)), Subscribe(("GBPUSD",), (Q,))],
     [Subscribe(("EURUSD",), (Q, X)), Subscribe(("GBPUSD",), (Q,)), Subscribe(("EURUSD", "GBPUSD"), (P,))]),
    ([DepthSubscribe("EURUSD", 5), DepthSubscribe("EURUSD", 20), DepthSubscribe("EURUSD", 3)],
     [DepthSubscribe("EURUSD", 20), Subscribe(("EURUSD",), (P,))]),
    ([Subscribe(("EURUSD",), (P,))], [Subscribe(("EURUSD",), (P,))]),
    ([Subscribe(("EURUSD",), (Q, P))], [Subscribe(("EURUSD",), (Q,)), Subscribe(("EURUSD",), (P,))]),
    ([MetricsSubscribe(ACC), MetricsSubscribe(ACC)], [MetricsSubscribe(ACC), Subscribe((), (P,))]),
    ([Subscribe(("BTCUSDT",), ()), MetricsSubscribe(ACC)],
     [MetricsSubscribe(ACC), Subscribe(("BTCUSDT",), (P,))]),
    ([], [Subscribe((), (P,))]),
], ids=["grouped", "merged-per-symbol", "larger-depth", "portfolio-once", "portfolio-split",
        "metrics-once", "symbol-without-events", "nothing"])
def test_opened_subscribes_what_is_wanted_and_always_the_portfolio(wanted, expected):
    s = wanting(*wanted)
    s.connecting(0.0)
    sends = s.opened(0.0)
    assert [x.intent for x in sends] == expected
    assert s.phase is Phase.SUBSCRIBING


@pytest.mark.parametrize("reach", ["SUBSCRIBING", "LIVE"])
def test_want_while_open_sends_only_what_is_new(reach):
    s = wanting(Subscribe(("EURUSD",), (Q,)), DepthSubscribe("EURUSD", 10))
    if reach == "LIVE":
        to_live(s)
    else:
        s.connecting(0.0)
        s.opened(0.0)
    sends = s.want([Subscribe(("EURUSD", "GBPUSD"), (Q,)), DepthSubscribe("EURUSD", 5),
                    DepthSubscribe("GBPUSD", 5), MetricsSubscribe(ACC)])
    assert [x.intent for x in sends] == [Subscribe(("GBPUSD",), (Q,)), DepthSubscribe("GBPUSD", 5),
                                         MetricsSubscribe(ACC)]
    assert s.want([Subscribe(("GBPUSD",), (Q,))]) == []


def test_want_while_disconnected_waits_for_the_next_open():
    s = wanting(Subscribe(("EURUSD",), (Q,)))
    assert s.want([Subscribe(("GBPUSD",), (Q,))]) == []
    s.connecting(0.0)
    assert Subscribe(("EURUSD", "GBPUSD"), (Q,)) in [x.intent for x in s.opened(0.0)]


def test_want_rejects_what_is_not_a_subscription():
    with pytest.raises(UsageError, match="CreateOrder"):
        Session(ACC).want([CreateOrder(ACC, "EURUSD", Side.BUY, 1.0)])


@pytest.mark.parametrize("ids", [True, False], ids=["by-request-id", "by-payload"])
def test_every_subscription_is_acknowledged_before_reconciling(ids):
    s = wanting(Subscribe(("EURUSD", "GBPUSD"), (Q, X)), DepthSubscribe("EURUSD", 5), MetricsSubscribe(ACC))
    s.connecting(0.0)
    sends = s.opened(0.0)
    assert len(sends) == 4
    for send in reversed(sends[1:]):  # acks in any order
        assert ack_all(s, [send], ids=ids) == []
        assert s.phase is Phase.SUBSCRIBING
    [query] = ack_all(s, sends[:1], ids=ids)
    assert s.phase is Phase.RECONCILING
    assert query.intent == OrderHistoryQuery(ACC, limit=1000)
    assert query.request_id not in {x.request_id for x in sends}


def test_an_echo_of_something_else_acknowledges_nothing():
    s = wanting(Subscribe(("EURUSD",), (Q,)))
    s.connecting(0.0)
    s.opened(0.0)
    for other in (Subscribed(symbols=("GBPUSD",), events=(Q,)), Subscribed(symbol="EURUSD", depth=5),
                  Subscribed(account_id="acc_2")):
        assert feed(s, other) == []
    assert s.phase is Phase.SUBSCRIBING and len(s.unacknowledged) == 2


# --------------------------------------------------------------------------
# Reconcile


def _reconciling() -> tuple[Session, str]:
    s = wanting(Subscribe(("EURUSD",), (Q, X)))
    s.connecting(0.0)
    [query] = ack_all(s, s.opened(0.0))
    return s, query.request_id


@pytest.mark.parametrize("order", [("history", "portfolio"), ("portfolio", "history")])
def test_live_only_after_order_history_and_portfolio(order):
    s, rid = _reconciling()
    first, second = [(history(), rid) if o == "history" else (portfolio(), None) for o in order]
    feed(s, *first)
    assert s.phase is Phase.RECONCILING and not s.live
    feed(s, *second)
    assert s.phase is Phase.LIVE and s.live


def test_a_portfolio_snapshot_before_the_last_ack_counts():
    s = wanting(Subscribe(("EURUSD",), (Q,)))
    s.connecting(0.0)
    sends = s.opened(0.0)
    ack_all(s, sends[1:])
    feed(s, portfolio())  # right after the portfolio's `subscribed`
    [query] = ack_all(s, sends[:1])
    assert not s.live
    feed(s, history(), query.request_id)
    assert s.live


@pytest.mark.parametrize("event, rid", [
    (history("acc_2"), "own"), (history(), "r999"), (portfolio("acc_2"), None),
], ids=["history-of-other-account", "history-answering-another-request", "portfolio-of-other-account"])
def test_what_does_not_reconcile(event, rid):
    s, query_id = _reconciling()
    if isinstance(event, OrderHistory):
        feed(s, portfolio())
        feed(s, event, query_id if rid == "own" else rid)
    else:
        feed(s, history(), query_id)
        feed(s, event, rid)
    assert s.phase is Phase.RECONCILING


def test_each_connection_reconciles_again():
    s = wanting(Subscribe(("EURUSD",), (Q,)))
    to_live(s)
    assert isinstance(s.closed(1.0), Reconnect)
    assert s.phase is Phase.DISCONNECTED and not s.live
    s.connecting(2.0)
    [query] = ack_all(s, s.opened(2.0))
    feed(s, history(), query.request_id)
    assert s.phase is Phase.RECONCILING  # the snapshot of the old connection does not count
    feed(s, portfolio())
    assert s.live


def test_history_limit_is_passed_on():
    s = wanting(Subscribe(("EURUSD",), (Q,)), history_limit=250)
    s.connecting(0.0)
    [query] = ack_all(s, s.opened(0.0))
    assert query.intent == OrderHistoryQuery(ACC, limit=250)


# --------------------------------------------------------------------------
# Subscription refused: fatal


@pytest.mark.parametrize("code", [ErrorCode.UNKNOWN_SYMBOL, ErrorCode.FORBIDDEN, ErrorCode.BAD_REQUEST])
@pytest.mark.parametrize("ids", [True, False], ids=["by-request-id", "by-request-type"])
def test_a_refused_subscription_fails_the_run(code, ids):
    s = wanting(Subscribe(("EURUSD", "XXXYYY"), (Q,)))
    s.connecting(0.0)
    sends = s.opened(0.0)
    err = Error(code, "unknown symbols ['XXXYYY']", request_type="subscribe")
    assert feed(s, err, sends[0].request_id if ids else None) == []
    assert s.phase is Phase.FAILED and not s.live
    assert s.failure.fatal and "XXXYYY" in s.failure.reason and code in s.failure.reason
    for close in ({"code": 1000}, {"code": None}, {"code": 4401}, {"http_status": 503}):
        assert s.closed(1.0, **close) == s.failure
    assert s.login_failed(2.0, status=None, reason="down") == s.failure
    s.stop()
    assert s.phase is Phase.FAILED and s.opened(3.0) == []


def test_a_refused_depth_or_metrics_subscription_names_it():
    s = wanting(DepthSubscribe("XXXYYY", 5))
    s.connecting(0.0)
    sends = s.opened(0.0)
    feed(s, Error(ErrorCode.UNKNOWN_SYMBOL, "no", request_type="depthSubscribe"), sends[0].request_id)
    assert "depthSubscribe XXXYYY" in s.failure.reason


def test_a_refused_history_query_fails_the_run():
    s, rid = _reconciling()
    feed(s, Error(ErrorCode.FORBIDDEN, "accountId is not one of this session's accounts",
                  request_type="orderHistory"), rid)
    assert s.phase is Phase.FAILED and ACC in s.failure.reason


def test_an_order_error_is_not_a_subscription_failure():
    s = wanting(Subscribe(("EURUSD",), (Q,)))
    s.connecting(0.0)
    s.opened(0.0)
    feed(s, Error(ErrorCode.UNKNOWN_SYMBOL, "no", request_type="createOrder", client_order_id="c-1"))
    assert s.failure is None and s.phase is Phase.SUBSCRIBING


# --------------------------------------------------------------------------
# Liveness (PROTOCOL 2)


@pytest.mark.parametrize("steps", [
    # (time, "rx" for a frame | expected liveness)
    [(9.9, "OK"), (10.0, "PING"), (12.0, "OK"), (19.9, "OK"), (20.0, "DEAD"), (25.0, "DEAD")],
    [(5.0, "rx"), (14.9, "OK"), (15.0, "PING"), (16.0, "rx"), (25.9, "OK"), (26.0, "PING"), (36.0, "DEAD")],
    [(11.0, "PING"), (13.0, "rx"), (22.9, "OK"), (23.0, "PING"), (23.0, "OK")],
    [(30.0, "PING"), (39.9, "OK"), (40.0, "DEAD")],  # dead counts from the ping actually sent
], ids=["silent", "frames-reset", "pong-resets", "late-ask"])
def test_liveness(steps):
    s = wanting(Subscribe(("EURUSD",), (Q,)))
    s.connecting(0.0)
    s.opened(0.0)
    for now, what in steps:
        if what == "rx":
            s.received(now)
        else:
            assert s.liveness(now) is Liveness[what], now


@pytest.mark.parametrize("steps, expected", [
    ([], 10.0),
    ([("rx", 4.0)], 14.0),
    ([("ask", 10.0)], 20.0),
    ([("ask", 12.0)], 22.0),
    ([("ask", 10.0), ("rx", 11.0)], 21.0),
], ids=["fresh", "after-frame", "after-ping", "after-late-ping", "frame-after-ping"])
def test_next_check_is_the_next_deadline(steps, expected):
    s = Session(ACC)
    s.connecting(0.0)
    s.opened(0.0)
    for what, now in steps:
        s.received(now) if what == "rx" else s.liveness(now)
    assert s.next_check(0.0) == expected
    assert s.next_check(100.0) == 100.0  # never in the past


def test_no_liveness_without_a_connection():
    s = Session(ACC)
    assert s.liveness(1000.0) is Liveness.OK
    assert s.next_check(1000.0) >= 1000.0
    s.connecting(0.0)
    s.opened(0.0)
    s.closed(100.0)
    assert s.liveness(1000.0) is Liveness.OK


def test_a_new_connection_resets_liveness():
    s = Session(ACC)
    s.connecting(0.0)
    s.opened(0.0)
    assert s.liveness(10.0) is Liveness.PING
    s.closed(11.0)
    s.connecting(12.0)
    s.opened(12.0)
    assert s.liveness(21.9) is Liveness.OK
    assert s.liveness(22.0) is Liveness.PING


# --------------------------------------------------------------------------
# Reconnect decisions


def test_backoff_grows_to_the_cap():
    jit = iter([0.0, 0.999, 0.5, 0.25] * 3)
    s = Session(ACC, jitter=lambda: next(jit))
    delays = []
    for t in range(10):
        s.connecting(float(t))
        delays.append(s.closed(float(t), code=None).delay_s)
    bases = [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    factors = [0.5, 1.499, 1.0, 0.75] * 3
    assert delays == pytest.approx([b * f for b, f in zip(bases, factors)])
    assert max(delays) <= 1.5 * 30


@pytest.mark.parametrize("open_for, attempt_after", [(29.9, 4), (30.0, 1), (3600.0, 1)])
def test_backoff_resets_after_a_stable_connection(open_for, attempt_after):
    s = Session(ACC, jitter=lambda: 0.5)
    for _ in range(3):
        s.connecting(0.0)
        s.opened(0.0)
        s.closed(1.0)
    assert s.attempt == 3
    s.connecting(100.0)
    s.opened(100.0)
    r = s.closed(100.0 + open_for, code=1006)
    assert s.attempt == attempt_after
    assert r.delay_s == (0.5 if attempt_after == 1 else 4.0)


def test_a_refused_handshake_is_never_a_stable_connection():
    s = Session(ACC)
    s.connecting(0.0)
    assert s.closed(0.0, http_status=503).delay_s == 0.5
    s.connecting(100.0)
    assert s.closed(400.0, http_status=503).delay_s == 1.0  # 300 s of trying is not 300 s open


@pytest.mark.parametrize("close", [
    {"code": 1000}, {"code": 1001}, {"code": 1008}, {"code": 1009}, {"code": 1011}, {"code": 4000},
    {"code": 1006}, {}, {"http_status": 500}, {"http_status": 502}, {"http_status": 503},
    {"http_status": 429},
])
def test_drops_reconnect_with_backoff(close):
    s = Session(ACC)
    to_live(s)
    r = s.closed(5.0, **close)
    assert isinstance(r, Reconnect) and not r.relogin and r.delay_s == 0.5
    assert s.phase is Phase.DISCONNECTED and s.failure is None


@pytest.mark.parametrize("status", [400, 403, 404])
def test_a_refused_handshake_for_a_configuration_problem_is_fatal(status):
    s = Session(ACC)
    s.connecting(0.0)
    r = s.closed(0.0, http_status=status)
    assert r == Stop(r.reason, fatal=True) and str(status) in r.reason
    assert s.phase is Phase.FAILED and s.failure == r


@pytest.mark.parametrize("refusal", [{"code": 4401}, {"http_status": 401}])
@pytest.mark.parametrize("again", [{"code": 4401}, {"http_status": 401}])
def test_auth_refused_logs_in_once_then_stops(refusal, again):
    s = Session(ACC)
    to_live(s)
    r = s.closed(10.0, **refusal)
    assert r == Reconnect(0.0, True, r.reason)
    s.logging_in(10.0)
    s.logged_in(10.5)
    s.connecting(10.5)
    if "code" in again:
        s.opened(10.5)
    r2 = s.closed(11.0, **again)
    assert isinstance(r2, Stop) and r2.fatal and "authentication refused" in r2.reason
    assert s.phase is Phase.FAILED and s.failure == r2
    assert s.closed(12.0, code=1006) == r2  # terminal: never a Reconnect again


def test_auth_refused_after_a_drop_still_counts_the_relogin():
    s = Session(ACC)
    to_live(s)
    assert s.closed(1.0, code=4401).relogin
    s.logging_in(1.0)
    s.logged_in(1.0)
    s.connecting(1.0)
    assert isinstance(s.closed(2.0, code=None), Reconnect)  # network drop before LIVE
    s.connecting(3.0)
    assert s.closed(3.0, http_status=401).fatal


def test_token_expiry_every_hour_is_normal():
    s = Session(ACC)
    to_live(s, 0.0)
    for hour in range(1, 4):
        r = s.closed(3600.0 * hour, code=4401)
        assert isinstance(r, Reconnect) and r.relogin and r.delay_s == 0.0
        s.logging_in(3600.0 * hour)
        s.logged_in(3600.0 * hour)
        to_live(s, 3600.0 * hour)


@pytest.mark.parametrize("status, outcome", [
    (401, "fatal"), (400, "fatal"), (403, "fatal"), (404, "fatal"),
    (None, "retry"), (500, "retry"), (503, "retry"), (429, "retry"),
])
def test_login_failures(status, outcome):
    s = Session(ACC)
    s.logging_in(0.0)
    r = s.login_failed(0.0, status=status, reason="bad credentials")
    if outcome == "fatal":
        assert isinstance(r, Stop) and r.fatal and s.phase is Phase.FAILED
        assert "bad credentials" in r.reason
        if status == 401:
            assert r.reason.startswith("login refused")
    else:
        assert r == Reconnect(0.5, True, r.reason) and s.phase is Phase.DISCONNECTED
        s.logging_in(1.0)
        assert s.login_failed(1.0, status=status, reason="again").delay_s == 1.0


@pytest.mark.parametrize("close", [{"code": 1000}, {"code": None}, {"code": 4401}, {"http_status": 401},
                                   {"http_status": 404}])
def test_stop_ends_the_run_without_error(close):
    s = Session(ACC)
    to_live(s)
    s.stop()
    assert s.phase is Phase.STOPPING and not s.live
    assert s.closed(1.0, **close) == Stop("stopped", fatal=False)
    assert s.phase is Phase.STOPPED
    assert s.closed(2.0) == Stop("stopped", fatal=False)
    assert s.opened(3.0) == []


def test_stop_while_logging_in():
    s = Session(ACC)
    s.logging_in(0.0)
    s.stop()
    assert s.login_failed(1.0, status=503, reason="down") == Stop("stopped", fatal=False)


def test_opened_twice_is_a_bug():
    s = Session(ACC)
    s.connecting(0.0)
    s.opened(0.0)
    with pytest.raises(UsageError, match="closed"):
        s.opened(1.0)


@pytest.mark.parametrize("kw", [{"ping_after_s": 0}, {"dead_after_s": -1}, {"backoff_initial_s": 0},
                                {"backoff_initial_s": 40}, {"backoff_factor": 0.5}, {"history_limit": 0},
                                {"history_limit": 1001}])
def test_bad_settings_are_refused(kw):
    with pytest.raises(UsageError):
        Session(ACC, **kw)


# --------------------------------------------------------------------------
# Pending trading requests


CREATE = CreateOrder(ACC, "EURUSD", Side.BUY, 10_000.0, client_order_id="c-1")


@pytest.mark.parametrize("intent, answer, by_id, resolved", [
    (CREATE, execution(cid="c-1"), False, True),
    (CREATE, execution(cid="c-1", status=OrderStatus.FILLED), False, True),
    (CREATE, execution(cid="c-2"), False, False),
    (CREATE, execution(cid="c-1", account="acc_2"), False, False),
    (CREATE, execution(cid=None), True, True),
    (CREATE, Error(ErrorCode.INSUFFICIENT_MARGIN, "no", "createOrder", "c-1"), False, True),
    (CREATE, Error(ErrorCode.INSUFFICIENT_MARGIN, "no", "createOrder", "c-9"), False, False),
    (CREATE, Error(ErrorCode.RATE_LIMITED, "slow down"), True, True),
    (CancelOrder(ACC, order_id="o-1"), execution(oid="o-1", status=OrderStatus.CANCELLED), False, True),
    (CancelOrder(ACC, order_id="o-1"), execution(oid="o-1", status=OrderStatus.PARTIALLY_FILLED), False, False),
    (CancelOrder(ACC, order_id="o-1"), execution(oid="o-1", status=OrderStatus.FILLED), False, True),
    (CancelOrder(ACC, client_order_id="c-1"), execution(cid="c-1", status=OrderStatus.CANCELLED), False, True),
    (CancelOrder(ACC, order_id="o-1"), Error(ErrorCode.UNKNOWN_ORDER, "no", "cancelOrder", None, "o-1"),
     False, True),
    (CancelOrder(ACC, order_id="o-1"), Error(ErrorCode.UNKNOWN_ORDER, "no", "cancelOrder", None, "o-2"),
     False, False),
    (AmendOrder(ACC, "o-1", price=1.08), execution(oid="o-1", status=OrderStatus.AMENDED), False, True),
    (AmendOrder(ACC, "o-1", price=1.08), execution(oid="o-2", status=OrderStatus.AMENDED), False, False),
    (AmendOrder(ACC, "o-1", price=1.08), Error(ErrorCode.NOT_AMENDABLE, "no", "amendOrder", None, "o-1"),
     False, True),
    (ClosePosition(ACC, "p-1"), execution(oid="o-7", reason="CLOSE_POSITION", position_id="p-1"), False, True),
    (ClosePosition(ACC, "p-1"), execution(oid="o-7", reason="STOP_LOSS", position_id="p-1"), False, False),
    (ClosePosition(ACC, "p-1"), Error(ErrorCode.UNKNOWN_POSITION, "no", "closePosition"), False, True),
    (AmendPosition(ACC, "p-1", stop_loss=1.07), portfolio(positions=[position(stop_loss=1.07)]), False, True),
    (AmendPosition(ACC, "p-1", stop_loss=1.07), portfolio(positions=[position(stop_loss=1.06)]), False, False),
    (AmendPosition(ACC, "p-1", stop_loss=1.07), portfolio(positions=[]), False, True),
    (AmendPosition(ACC, "p-1", stop_loss=1.07), portfolio(positions=[position(stop_loss=1.06)]), True, True),
], ids=lambda v: type(v).__name__ if not isinstance(v, bool) else str(v))
def test_pending_requests_are_resolved_by_their_answer(intent, answer, by_id, resolved):
    s = Session(ACC)
    to_live(s)
    send = Send(s.next_request_id(), intent)
    s.sent(send, 1.0)
    assert s.pending() == [Pending(send.request_id, intent, 1.0)]
    assert feed(s, answer, send.request_id if by_id else None, 2.0) == []
    assert (s.pending() == []) is resolved
    assert s.failure is None


def test_pending_are_listed_oldest_first_and_resolved_singly():
    s = Session(ACC)
    to_live(s)
    creates = [CreateOrder(ACC, "EURUSD", Side.BUY, 1.0, client_order_id=f"c-{i}") for i in range(4)]
    for i, c in enumerate(creates):
        s.sent(c, float(i))
    s.sent(CancelOrder(ACC, order_id="o-9"), 9.0)
    s.sent(Subscribe(("EURUSD",), (Q,)), 9.0)  # not a trading request: not tracked
    feed(s, execution(cid="c-2"))
    feed(s, execution(cid="c-2", status=OrderStatus.FILLED))  # its later events change nothing
    assert [p.intent for p in s.pending()] == [creates[0], creates[1], creates[3],
                                                CancelOrder(ACC, order_id="o-9")]
    assert [p.sent_at for p in s.pending()] == [0.0, 1.0, 3.0, 9.0]


def test_pending_requests_are_never_resent_after_a_drop():
    s = wanting(Subscribe(("EURUSD",), (Q, X)))
    to_live(s)
    s.sent(Send(s.next_request_id(), CREATE), 1.0)
    s.sent(CancelOrder(ACC, order_id="o-3"), 1.0)
    assert isinstance(s.closed(2.0), Reconnect)
    s.connecting(3.0)
    sends = s.opened(3.0)
    assert all(isinstance(x.intent, (Subscribe, DepthSubscribe, MetricsSubscribe)) for x in sends)
    [query] = ack_all(s, sends)
    assert isinstance(query.intent, OrderHistoryQuery)
    assert len(s.pending()) == 2  # the caller settles them against the history reply
    feed(s, history(), query.request_id)
    s.forget_pending()
    assert s.pending() == []
    feed(s, execution(cid="c-1"))  # a late answer after forgetting is harmless
    assert s.pending() == []


def test_request_ids_are_unique():
    s = wanting(Subscribe(("EURUSD",), (Q,)), DepthSubscribe("EURUSD", 5), MetricsSubscribe(ACC))
    ids = [x.request_id for x in to_live(s)]
    ids += [s.next_request_id() for _ in range(3)]
    s.closed(1.0)
    ids += [x.request_id for x in to_live(s, 2.0)]
    assert len(ids) == len(set(ids)) and all(i.startswith("r") for i in ids)


def test_quotes_take_the_fast_path():
    s = wanting(Subscribe(("EURUSD",), (Q,)))
    s.connecting(0.0)
    s.opened(0.0)
    before = s.unacknowledged
    out = feed(s, Quote("EURUSD", 1.084, 1.0841, T0))
    assert out == [] and s.unacknowledged == before and s.phase is Phase.SUBSCRIBING


# --------------------------------------------------------------------------
# Random lives


SUB_ERRORS = (ErrorCode.UNKNOWN_SYMBOL, ErrorCode.FORBIDDEN)
CLOSES = st.sampled_from([
    {"code": None}, {"code": 1000}, {"code": 1001}, {"code": 1008}, {"code": 1009}, {"code": 1011},
    {"code": 4000}, {"code": 4401}, {"http_status": 500}, {"http_status": 503}, {"http_status": 429},
])
FATAL_CLOSES = st.sampled_from([{"http_status": 401}, {"http_status": 403}, {"http_status": 404}])


class SessionLife(RuleBasedStateMachine):
    """Random lives of a session; a tiny model checks the backoff and the terminal states."""

    INIT, MAX, FACTOR, STABLE = 0.5, 30.0, 2.0, 30.0

    def __init__(self) -> None:
        super().__init__()
        self.jit = 0.5
        self.s = Session(ACC, backoff_initial_s=self.INIT, backoff_max_s=self.MAX,
                         backoff_factor=self.FACTOR, stable_after_s=self.STABLE, jitter=lambda: self.jit)
        self.s.want([Subscribe(("EURUSD", "GBPUSD"), (Q, X)), DepthSubscribe("EURUSD", 5)])
        self.now = 0.0
        self.ids: set[str] = set()
        self.unacked: list[Send] = []
        self.history_id: str | None = None
        self.pinged = False  # PING returned and no frame since
        self.final: Stop | None = None
        self.attempt = 0  # the model's backoff exponent
        self.opened_at: float | None = None
        self.cids = itertools.count()

    def take(self, sends) -> None:
        for x in sends:
            assert x.request_id not in self.ids
            self.ids.add(x.request_id)
            if isinstance(x.intent, OrderHistoryQuery):
                self.history_id = x.request_id
            else:
                self.unacked.append(x)

    def check(self, r: Reconnect | Stop, *, backoff: bool) -> None:
        if self.final is not None:
            assert isinstance(r, Stop)
            if self.final.fatal:
                assert r == self.final and self.s.phase is Phase.FAILED
            return
        if isinstance(r, Stop):
            self.final = r
            assert self.s.phase is (Phase.FAILED if r.fatal else Phase.STOPPED)
            return
        if backoff:
            base = min(self.MAX, self.INIT * self.FACTOR ** self.attempt)
            self.attempt += 1
            assert 0.5 * base <= r.delay_s <= 1.5 * base and r.delay_s <= 1.5 * self.MAX
            assert r.delay_s == pytest.approx(base * (0.5 + self.jit))
        else:
            assert r.delay_s == 0.0 and r.relogin

    @rule(dt=st.floats(0.0, 45.0))
    def advance(self, dt):
        self.now += dt

    @rule(j=st.floats(0.0, 1.0, exclude_max=True))
    def set_jitter(self, j):
        self.jit = j

    @precondition(lambda self: self.s.phase in (Phase.DISCONNECTED, Phase.CONNECTING))
    @rule()
    def connect(self):
        self.s.connecting(self.now)
        self.unacked, self.history_id, self.pinged = [], None, False
        self.take(self.s.opened(self.now))
        self.opened_at = self.now
        assert self.s.phase is Phase.SUBSCRIBING

    @precondition(lambda self: self.s.phase is Phase.DISCONNECTED)
    @rule(status=st.sampled_from([200, None, 500, 503, 429]), rare=st.integers(0, 5),
          fatal=st.sampled_from([401, 404]))
    def login(self, status, rare, fatal):
        status = status if rare else fatal
        self.s.logging_in(self.now)
        if status == 200:
            self.s.logged_in(self.now)
        else:
            self.check(self.s.login_failed(self.now, status=status, reason="x"),
                       backoff=status is None or status >= 429)

    @rule()
    def frame(self):
        self.s.received(self.now)
        self.pinged = False

    @rule()
    def ask_liveness(self):
        assert self.s.next_check(self.now) >= self.now
        r = self.s.liveness(self.now)
        if r is Liveness.PING:
            assert not self.pinged, "PING twice without a frame"
            self.pinged = True

    @rule(first=st.floats(0.0, 15.0), then=st.floats(0.0, 15.0))
    def silence(self, first, then):
        """No frame for a while, liveness asked twice: PING then maybe DEAD."""
        for dt in (first, then):
            self.now += dt
            self.ask_liveness()

    @precondition(lambda self: self.unacked)
    @rule(data=st.data(), by_id=st.booleans())
    def ack_one(self, data, by_id):
        self.ack(data.draw(st.sampled_from(self.unacked)), by_id)

    def ack(self, x: Send, by_id: bool) -> None:
        self.unacked.remove(x)
        self.take(feed(self.s, echo(x.intent), x.request_id if by_id else None, self.now))

    @precondition(lambda self: self.s.phase is Phase.SUBSCRIBING)
    @rule()
    def server_answers_everything(self):
        """A well-behaved server: every ack, then the history reply and the snapshot."""
        for x in list(self.unacked):
            self.ack(x, True)
        assert self.s.phase is Phase.RECONCILING and self.history_id is not None
        self.order_history(True)
        self.snapshot()
        assert self.s.live

    @precondition(lambda self: self.unacked)
    @rule(data=st.data(), code=st.sampled_from(SUB_ERRORS), rare=st.integers(0, 3))
    def refuse(self, data, code, rare):
        if rare:
            return
        x = data.draw(st.sampled_from(self.unacked))
        feed(self.s, Error(code, "no"), x.request_id, self.now)
        assert self.s.phase is Phase.FAILED and self.s.failure.fatal
        if self.final is None:
            self.final = self.s.failure

    @rule(own=st.booleans())
    def history_reply(self, own):
        self.order_history(own)

    def order_history(self, own: bool) -> None:
        feed(self.s, history(), self.history_id if own else None, self.now)

    @rule(symbol=st.sampled_from(["EURUSD", "USDJPY", "BTCUSDT"]), depth=st.integers(1, 50))
    def want_more(self, symbol, depth):
        sends = self.s.want([Subscribe((symbol,), (Q,)), DepthSubscribe(symbol, depth)])
        if self.s.phase not in (Phase.SUBSCRIBING, Phase.RECONCILING, Phase.LIVE):
            assert sends == []
        self.take(sends)

    @rule()
    def snapshot(self):
        feed(self.s, portfolio(), None, self.now)

    @rule()
    def quote(self):
        assert feed(self.s, Quote("EURUSD", 1.084, 1.0841, T0), None, self.now) == []

    @rule()
    def trade(self):
        send = Send(self.s.next_request_id(), CreateOrder(ACC, "EURUSD", Side.BUY, 1.0,
                                                          client_order_id=f"c-{next(self.cids)}"))
        self.take([send])
        self.unacked.remove(send)
        self.s.sent(send, self.now)

    @precondition(lambda self: self.s.pending())
    @rule(data=st.data())
    def answer(self, data):
        p = data.draw(st.sampled_from(self.s.pending()))
        feed(self.s, execution(cid=p.intent.client_order_id), None, self.now)
        assert p not in self.s.pending()

    @rule(rare=st.integers(0, 3))
    def stop(self, rare):
        if not rare:
            self.s.stop()

    @precondition(lambda self: self.s.phase is not Phase.LOGGING_IN)
    @rule(close=CLOSES, rare=st.integers(0, 5),
          fatal=FATAL_CLOSES)
    def close(self, close, rare, fatal):
        close = close if rare else fatal
        was_live = self.s.live
        if self.opened_at is not None and self.now - self.opened_at >= self.STABLE:
            self.attempt = 0
        self.opened_at = None
        auth = close.get("code") == 4401 or close.get("http_status") == 401
        r = self.s.closed(self.now, **close)
        self.unacked, self.history_id = [], None
        self.check(r, backoff=not auth)
        if was_live and auth:
            assert isinstance(r, Reconnect)  # reaching LIVE earns a new relogin
        assert self.s.liveness(self.now + 1000.0) is Liveness.OK

    @invariant()
    def consistent(self):
        assert (self.s.phase is Phase.FAILED) == (self.s.failure is not None)
        if self.final is not None and self.final.fatal:
            assert self.s.phase is Phase.FAILED and self.s.failure == self.final
        if self.s.live:
            assert self.s.failure is None
        rids = [p.request_id for p in self.s.pending()]
        assert len(rids) == len(set(rids))


SessionLife.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_session_life = SessionLife.TestCase


def test_module_is_sans_io():
    import ast
    import pathlib

    import adapters.trader_ws.session as mod

    tree = ast.parse(pathlib.Path(mod.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"trio", "trio_websocket", "socket", "asyncio", "time", "random"}


def test_a_recorder_session_is_live_once_subscribed_without_portfolio_or_history():
    s = Session(ACC, reconcile=False)
    s.want([Subscribe(("EURUSD",), (Q,)), DepthSubscribe("EURUSD", 5)])
    sends = s.opened(0.0)
    assert [type(x.intent) for x in sends] == [Subscribe, DepthSubscribe]  # no portfolio subscription
    assert all(P not in getattr(x.intent, "events", ()) for x in sends)
    for x in sends[:-1]:
        assert feed(s, echo(x.intent), x.request_id) == []
        assert not s.live
    assert feed(s, echo(sends[-1].intent), sends[-1].request_id) == []  # no orderHistory query
    assert s.live
