"""The server's protocol core against PROTOCOL sections 3-6, in memory.

A real matching engine and real instruments; clients are connection ids
whose frames go through ``Hub.receive`` and whose replies are read back out
of the ``Send`` actions, decoded as plain JSON (what a client would see).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.sim.hub import Close, Hub, HubConfig, Send
from adapters.sim.matching import MatchingEngine, VenueConfig
from engine.events import Depth, Quote
from engine.instruments import Instrument

T0 = datetime(2024, 1, 2, 12, tzinfo=timezone.utc)
INSTRUMENTS = {
    "EURUSD": Instrument("EURUSD", "USD", lot_step=1000, leverage=30, base_currency="EUR"),
    "GBPUSD": Instrument("GBPUSD", "USD", lot_step=1000, leverage=30, base_currency="GBP"),
    "BTCUSDT": Instrument("BTCUSDT", "USD", lot_step="0.0001", price_precision=2, leverage=10),
}
ALICE = ("A1", "A2")  # one user's accounts
BOB = ("B1",)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def quote(bid, ask, s=0.0, sym="EURUSD") -> Quote:
    return Quote(symbol=sym, bid=bid, ask=ask, ts=at(s))


class World:
    """A hub over a fresh engine; ``connect`` makes clients."""

    def __init__(self, balance=100_000, venue: dict | None = None, **cfg):
        self.engine = MatchingEngine(INSTRUMENTS, VenueConfig(**(venue or {})))
        for acc in ALICE + BOB:
            self.engine.open_account(acc, "USD", balance)
        self.hub = Hub(self.engine, HubConfig(**cfg))
        self.market(quote(1.1000, 1.1002))
        self.market(quote(1.2500, 1.2502, sym="GBPUSD"))
        self._next = 0
        self.t = 0.0

    def connect(self, accounts=ALICE, **kw) -> Client:
        self._next += 1
        assert self.hub.connect(self._next, accounts, at(self.t), **kw) == []
        return Client(self, self._next)

    def market(self, event, t: float | None = None) -> list:
        if t is not None:
            self.t = t
        return self.hub.on_market(event, at(getattr(self, "t", 0.0)))

    def state(self) -> bytes:
        """Everything a request could change, as bytes to compare."""
        eng = self.engine
        parts = []
        for acc in ALICE + BOB:
            a = eng.accounts[acc]
            parts.append((
                msgspec.json.encode(eng.portfolio(acc)),
                [msgspec.json.encode(o.snapshot()) for o in a.orders.values()],
                sorted(a.by_client_id), len(a.ledger.deals),
            ))
        return repr(parts).encode()


class Client:
    def __init__(self, world: World, conn: int):
        self.world, self.conn = world, conn

    def send(self, msg, id=None, t: float | None = None) -> list:
        """Send one frame (a dict is JSON-encoded); returns all outputs."""
        if t is not None:
            self.world.t = t
        if isinstance(msg, dict):
            if id is not None:
                msg = {**msg, "id": id}
            msg = json.dumps(msg)
        return self.world.hub.receive(self.conn, msg, at(self.world.t))

    def ask(self, type_, id=None, t=None, **payload) -> list[dict]:
        """Send a request; returns the messages this connection got."""
        return self.mine(self.send({"type": type_, "payload": payload}, id=id, t=t))

    def mine(self, outputs) -> list[dict]:
        msgs = [json.loads(o.data) for o in outputs if isinstance(o, Send) and o.conn == self.conn]
        kinds_ = [o.kind for o in outputs if isinstance(o, Send) and o.conn == self.conn]
        assert kinds_ == [m["type"] for m in msgs]  # Send.kind is the wire type
        return msgs


def kinds(msgs) -> list[str]:
    out = []
    for m in msgs:
        p = m["payload"]
        if m["type"] == "executionEvent":
            out.append(p["status"])
        elif m["type"] == "error":
            out.append("E:" + p["code"])
        else:
            out.append(m["type"])
    return out


def the_error(msgs) -> dict:
    assert [m["type"] for m in msgs] == ["error"], msgs
    return msgs[0]


def order(acc="A1", sym="EURUSD", side="BUY", qty=10_000, **kw) -> dict:
    return {"accountId": acc, "symbol": sym, "side": side, "quantity": qty, **kw}


def world_and_client(**kw):
    w = World(**kw)
    return w, w.connect()


# ------------------------------------------------------------------ subscriptions


def test_subscribe_acks_with_payload_and_id_then_latest_quote_once():
    w, c = world_and_client()
    msgs = c.ask("subscribe", id="s1", symbols=["EURUSD"], events=["quoteEvent"])
    assert kinds(msgs) == ["subscribed", "quoteEvent"]
    ack, q = msgs
    assert ack["id"] == "s1" and "id" not in q
    assert (ack["payload"]["symbols"], ack["payload"]["events"]) == (["EURUSD"], ["quoteEvent"])
    assert (q["payload"]["bid"], q["payload"]["ask"]) == (1.1, 1.1002)
    # again, plus a new symbol: only the new one's quote follows
    msgs = c.ask("subscribe", symbols=["EURUSD", "GBPUSD"], events=["quoteEvent"])
    assert kinds(msgs) == ["subscribed", "quoteEvent"]
    assert msgs[1]["payload"]["symbol"] == "GBPUSD"
    assert kinds(c.mine(w.market(quote(1.1001, 1.1003, 1)))) == ["quoteEvent"]


def test_subscribe_with_an_unknown_symbol_subscribes_nothing():
    w, c = world_and_client()
    err = the_error(c.ask("subscribe", id="s", symbols=["EURUSD", "NOPE"], events=["quoteEvent"]))
    assert err["payload"]["code"] == "UNKNOWN_SYMBOL" and err["id"] == "s"
    assert err["payload"]["requestType"] == "subscribe"
    assert c.mine(w.market(quote(1.1001, 1.1003, 1))) == []
    assert the_error(c.ask("depthSubscribe", symbol="NOPE"))["payload"]["code"] == "UNKNOWN_SYMBOL"


def test_unsubscribe_stops_quotes_and_unsubscribing_nothing_is_fine():
    w, c = world_and_client()
    c.ask("subscribe", symbols=["EURUSD"], events=["quoteEvent"])
    msgs = c.ask("unsubscribe", id="u", symbols=["EURUSD", "GBPUSD"], events=["quoteEvent"])
    assert kinds(msgs) == ["unsubscribed"] and msgs[0]["id"] == "u"
    assert msgs[0]["payload"]["symbols"] == ["EURUSD", "GBPUSD"]
    assert c.mine(w.market(quote(1.1001, 1.1003, 1))) == []


def test_quote_fan_out_is_one_encode_for_a_hundred_connections():
    w = World()
    clients = [w.connect() for _ in range(100)]
    for c in clients:
        c.ask("subscribe", symbols=["EURUSD"], events=["quoteEvent"])
    before = w.hub.statistics()["encoded"]
    outputs = w.market(quote(1.1001, 1.1003, 1))
    assert sorted(o.conn for o in outputs) == [c.conn for c in clients]
    assert len({id(o.data) for o in outputs}) == 1
    assert w.hub.statistics()["encoded"] == before + 1
    assert w.market(quote(1.25, 1.2502, 1, sym="GBPUSD")) == []


def test_portfolio_subscription_snapshots_every_account_once_then_on_changes_only():
    w, c = world_and_client()
    msgs = c.ask("subscribe", symbols=[], events=["portfolioEvent"])
    assert kinds(msgs) == ["subscribed", "portfolioEvent", "portfolioEvent"]
    assert [m["payload"]["accountId"] for m in msgs[1:]] == ["A1", "A2"]
    again = c.ask("subscribe", symbols=["EURUSD"], events=["portfolioEvent"])
    assert kinds(again) == ["subscribed"]
    msgs = c.ask("createOrder", **order())
    assert kinds(msgs) == ["NEW", "FILLED", "portfolioEvent"]
    assert len(msgs[2]["payload"]["positions"]) == 1
    assert c.mine(w.market(quote(1.1010, 1.1012, 1))) == []  # a price move is no change
    c.ask("unsubscribe", symbols=[], events=["portfolioEvent"])
    assert kinds(c.ask("createOrder", **order())) == ["NEW", "FILLED"]


def test_depth_synthesized_from_the_quote_replaced_and_followed_on_each_quote():
    w, c = world_and_client(depth_size=500_000)
    msgs = c.ask("depthSubscribe", id="d", symbol="EURUSD", depth=3)
    assert kinds(msgs) == ["subscribed", "depthEvent"]
    assert msgs[0]["id"] == "d" and msgs[0]["payload"]["depth"] == 3
    d = msgs[1]["payload"]
    assert d["bids"] == [[1.1, 500_000], [1.09999, 500_000], [1.09998, 500_000]]
    assert d["asks"] == [[1.1002, 500_000], [1.10021, 500_000], [1.10022, 500_000]]
    assert kinds(c.ask("depthSubscribe", symbol="EURUSD", depth=3)) == ["subscribed"]
    msgs = c.ask("depthSubscribe", symbol="EURUSD", depth=1)
    assert kinds(msgs) == ["subscribed", "depthEvent"]
    assert msgs[1]["payload"]["bids"] == [[1.1, 500_000]]
    (ev,) = c.mine(w.market(quote(1.1001, 1.1003, 1)))
    assert ev["type"] == "depthEvent" and ev["payload"]["asks"] == [[1.1003, 500_000]]
    assert kinds(c.ask("depthUnsubscribe", symbol="EURUSD")) == ["unsubscribed"]
    assert c.mine(w.market(quote(1.1002, 1.1004, 2))) == []


def test_depth_from_the_recorded_feed_top_levels_and_only_on_depth_events():
    w, c = world_and_client()
    book = Depth(symbol="BTCUSDT", bids=((100.0, 1.0), (99.5, 2.0), (99.0, 3.0)),
                 asks=((100.5, 1.5), (101.0, 2.5), (102.0, 4.0)), ts=at(1))
    w.market(book, t=1)
    msgs = c.ask("depthSubscribe", symbol="BTCUSDT", depth=2)
    assert kinds(msgs) == ["subscribed", "depthEvent"]
    assert msgs[1]["payload"]["bids"] == [[100.0, 1.0], [99.5, 2.0]]
    assert msgs[1]["payload"]["asks"] == [[100.5, 1.5], [101.0, 2.5]]
    assert c.mine(w.market(quote(100.0, 100.5, 2, sym="BTCUSDT"))) == []
    new = Depth(symbol="BTCUSDT", bids=((100.1, 1.0),), asks=((100.6, 1.0),), ts=at(3))
    (ev,) = c.mine(w.market(new))
    assert ev["payload"]["bids"] == [[100.1, 1.0]]


def test_metrics_subscribe_sends_one_at_once_then_on_change_throttled():
    w, c = world_and_client(metrics_interval_s=1.0, metrics_poll_s=0.1)
    msgs = c.ask("metricsSubscribe", id="m", accountId="A1")
    assert kinds(msgs) == ["subscribed", "metricsEvent"] and msgs[0]["id"] == "m"
    assert msgs[0]["payload"]["accountId"] == "A1"
    assert kinds(c.ask("metricsSubscribe", accountId="A1")) == ["subscribed"]  # no new one
    # a fill right after: the first counted one, at once
    assert kinds(c.ask("createOrder", **order())) == ["NEW", "FILLED", "metricsEvent"]
    sent = []
    for i in range(1, 40):  # price moves every 0.1 s for 3.9 s
        t = i / 10
        got = c.mine(w.market(quote(1.1000 + i * 1e-5, 1.1002 + i * 1e-5, t), t=t))
        sent += [t for m in got if m["type"] == "metricsEvent"]
    assert sent == [1.0, 2.0, 3.0]
    # the moves after 3.0 are not lost: they go out once the interval is over
    (late,) = c.mine(w.hub.tick(at(4.0)))
    assert late["payload"]["unrealizedPnl"] == pytest.approx(10_000 * (1.10039 - 1.1002))
    # nothing changes: nothing is sent
    assert c.mine(w.hub.tick(at(10))) == []
    w.market(quote(1.2, 1.2002, 10.05, sym="GBPUSD"), t=10.05)  # not A1's symbol
    assert c.mine(w.hub.tick(at(11))) == []
    got = c.mine(w.market(quote(1.1, 1.1002, 11.5), t=11.5))
    assert kinds(got) == ["metricsEvent"] and got[0]["payload"]["equity"] == pytest.approx(99_998)


# ------------------------------------------------------------------ errors


BAD = {
    "not JSON": '{"type": "subscribe", "payload": ',
    "not an object": '["subscribe"]',
    "missing type": '{"payload": {}}',
    "type not a string": '{"type": 3, "payload": {}}',
    "payload missing": '{"type": "subscribe"}',
    "payload not an object": '{"type": "subscribe", "payload": [1]}',
    "field missing": '{"type": "createOrder", "payload": {"accountId": "A1", "symbol": "EURUSD"}}',
    "field of the wrong type": '{"type": "depthSubscribe", "payload": {"symbol": 7}}',
    "NaN literal": '{"type": "createOrder", "payload": {"accountId": "A1", "symbol": "EURUSD",'
                   ' "side": "BUY", "quantity": NaN}}',
    "Infinity": '{"type": "createOrder", "payload": {"accountId": "A1", "symbol": "EURUSD",'
                ' "side": "BUY", "quantity": 1e999}}',
    "enum outside its set": '{"type": "createOrder", "payload": {"accountId": "A1",'
                            ' "symbol": "EURUSD", "side": "UP", "quantity": 1000}}',
    "depth out of range": '{"type": "depthSubscribe", "payload": {"symbol": "EURUSD",'
                          ' "depth": 51}}',
    "limit out of range": '{"type": "dealHistory", "payload": {"accountId": "A1", "limit": 0}}',
    "id too long": '{"type": "subscribe", "id": "' + "x" * 65 + '", "payload": '
                   '{"symbols": [], "events": []}}',
    "nothing to amend": '{"type": "amendOrder", "payload": {"accountId": "A1", "orderId": "o-1"}}',
    "clientOrderId too long": json.dumps({"type": "createOrder", "payload": order(
        clientOrderId="c" * 65)}),
}


@pytest.mark.parametrize("frame", BAD.values(), ids=BAD.keys())
def test_bad_input_is_bad_request_changes_nothing_and_keeps_the_connection(frame):
    w, c = world_and_client()
    before = w.state()
    out = c.send(frame)
    assert not any(isinstance(o, Close) for o in out)
    err = the_error(c.mine(out))
    assert err["payload"]["code"] == "BAD_REQUEST" and err["payload"]["message"]
    assert w.state() == before
    assert kinds(c.ask("subscribe", symbols=[], events=[])) == ["subscribed"]


def test_bad_request_names_the_type_and_echoes_id_and_order_ids_when_it_can():
    w, c = world_and_client()
    frame = json.dumps({"type": "createOrder", "id": "r9",
                        "payload": order(side="UP", clientOrderId="c-1")})
    err = the_error(c.mine(c.send(frame)))
    assert err["id"] == "r9"
    assert err["payload"] | {"message": ""} == {
        "code": "BAD_REQUEST", "message": "", "requestType": "createOrder",
        "clientOrderId": "c-1", "orderId": None}


def test_a_binary_frame_is_bad_request():
    w, c = world_and_client()
    err = the_error(c.mine(c.send(b'{"type": "subscribe", "payload": {}}')))
    assert err["payload"]["code"] == "BAD_REQUEST" and "binary" in err["payload"]["message"]


def test_unknown_type_echoes_type_and_id():
    w, c = world_and_client()
    err = the_error(c.ask("teleport", id="t1"))
    assert err["id"] == "t1"
    assert (err["payload"]["code"], err["payload"]["requestType"]) == ("UNKNOWN_TYPE", "teleport")


@pytest.mark.parametrize("request_", [
    ("createOrder", order(acc="{}", clientOrderId="c1")),
    ("cancelOrder", {"accountId": "{}", "orderId": "o-1"}),
    ("amendOrder", {"accountId": "{}", "orderId": "o-1", "price": 1.0}),
    ("closePosition", {"accountId": "{}", "positionId": "p-1"}),
    ("amendPosition", {"accountId": "{}", "positionId": "p-1", "stopLoss": None}),
    ("metricsSubscribe", {"accountId": "{}"}),
    ("orderHistory", {"accountId": "{}"}),
    ("positionHistory", {"accountId": "{}"}),
    ("dealHistory", {"accountId": "{}"}),
], ids=lambda r: r[0])
def test_forbidden_is_the_same_for_someone_elses_account_and_a_made_up_one(request_):
    w = World()
    bob = w.connect(BOB)
    bob.ask("createOrder", **order(acc="B1", type="LIMIT", price=1.05, clientOrderId="c1"))
    bob.ask("createOrder", **order(acc="B1"))  # o-2, and position p-1
    alice = w.connect(ALICE)
    type_, payload = request_
    before = w.state()
    replies = []
    for acc in ("B1", "ZZ9"):
        body = {k: (acc if v == "{}" else v) for k, v in payload.items()}
        err = the_error(alice.ask(type_, id="f", **body))
        assert err["payload"]["code"] == "FORBIDDEN"
        replies.append(err)
    assert replies[0] == replies[1]
    assert replies[0]["id"] == "f" and replies[0]["payload"]["requestType"] == type_
    assert w.state() == before


def test_another_accounts_order_and_position_ids_do_not_exist_for_you():
    w = World()
    bob = w.connect(BOB)
    bob.ask("createOrder", **order(acc="B1", type="LIMIT", price=1.05))  # o-1
    bob.ask("createOrder", **order(acc="B1"))  # position p-1
    alice = w.connect(ALICE)
    before = w.state()
    err = the_error(alice.ask("cancelOrder", accountId="A1", orderId="o-1"))
    assert err["payload"]["code"] == "UNKNOWN_ORDER" and err["payload"]["orderId"] == "o-1"
    err = the_error(alice.ask("closePosition", accountId="A1", positionId="p-1"))
    assert err["payload"]["code"] == "UNKNOWN_POSITION"
    assert w.state() == before


def _resting(c) -> str:
    (new,) = c.ask("createOrder", **order(type="LIMIT", price=1.05, clientOrderId="rest"))
    return new["payload"]["orderId"]


def _position(c) -> str:
    msgs = c.ask("createOrder", **order())
    (filled,) = [m for m in msgs if m["payload"].get("status") == "FILLED"]
    return filled["payload"]["positionId"]


ENGINE_ERRORS = {
    # name: (setup(client) -> dict of names, request type, payload, code)
    "unknown symbol": (None, "createOrder", order(sym="XAUUSD", clientOrderId="k"),
                       "UNKNOWN_SYMBOL"),
    "unknown order": (None, "cancelOrder", {"accountId": "A1", "orderId": "o-77"},
                      "UNKNOWN_ORDER"),
    "cancel by unknown clientOrderId": (None, "cancelOrder",
                                        {"accountId": "A1", "clientOrderId": "nope"},
                                        "UNKNOWN_ORDER"),
    "unknown position": (None, "closePosition", {"accountId": "A1", "positionId": "p-9"},
                         "UNKNOWN_POSITION"),
    "amend unknown position": (None, "amendPosition",
                               {"accountId": "A1", "positionId": "p-9", "stopLoss": 1.0},
                               "UNKNOWN_POSITION"),
    "off the lot step": (None, "createOrder", order(qty=1500, clientOrderId="k"),
                         "INVALID_ORDER"),
    "limit without price": (None, "createOrder", order(type="LIMIT"), "INVALID_ORDER"),
    "close more than held": (_position, "closePosition",
                             {"accountId": "A1", "positionId": "{}", "quantity": 20_000},
                             "INVALID_ORDER"),
    "amend a finished order": (lambda c: c.ask("createOrder", **order())[0]["payload"]["orderId"],
                               "amendOrder", {"accountId": "A1", "orderId": "{}", "quantity": 5000},
                               "NOT_AMENDABLE"),
    "amend off the lot step": (_resting, "amendOrder",
                               {"accountId": "A1", "orderId": "{}", "quantity": 1500},
                               "NOT_AMENDABLE"),
    "stop-loss that triggers at once": (_position, "amendPosition",
                                        {"accountId": "A1", "positionId": "{}", "stopLoss": 1.2},
                                        "NOT_AMENDABLE"),
    "too big": (None, "createOrder", order(qty=50_000_000, clientOrderId="k"),
                "INSUFFICIENT_MARGIN"),
    "duplicate clientOrderId": (_resting, "createOrder", order(clientOrderId="rest"),
                                "DUPLICATE_CLIENT_ORDER_ID"),
}


@pytest.mark.parametrize("case", ENGINE_ERRORS.values(), ids=ENGINE_ERRORS.keys())
def test_engine_refusals_carry_request_type_ids_and_change_nothing(case):
    setup, type_, payload, code = case
    w, c = world_and_client()
    c.ask("subscribe", symbols=["EURUSD"], events=["portfolioEvent", "executionEvent"])
    ref = setup(c) if setup else None
    payload = {k: (ref if v == "{}" else v) for k, v in payload.items()}
    before = w.state()
    err = the_error(c.ask(type_, id="q", **payload))
    p = err["payload"]
    assert (p["code"], p["requestType"], err["id"]) == (code, type_, "q")
    assert p["clientOrderId"] == payload.get("clientOrderId")
    assert p["orderId"] == payload.get("orderId")
    assert w.state() == before


def test_rate_limited_after_the_burst_not_processed_then_recovers():
    w, c = world_and_client(rate_per_s=10, burst=5)
    for _ in range(5):
        assert kinds(c.ask("subscribe", symbols=[], events=[])) == ["subscribed"]
    before = w.state()
    err = the_error(c.ask("createOrder", id="r", **order(clientOrderId="k")))
    assert err["id"] == "r"
    p = err["payload"]
    assert (p["code"], p["requestType"]) == ("RATE_LIMITED", "createOrder")
    assert err["payload"]["clientOrderId"] == "k"
    assert w.state() == before
    the_error(c.ask("subscribe", symbols=["EURUSD"], events=["quoteEvent"], t=0.05))
    assert c.mine(w.market(quote(1.1001, 1.1003, 0.05))) == []  # was not processed
    assert kinds(c.ask("createOrder", **order(), t=0.1)) == ["NEW", "FILLED"]  # a token back
    assert the_error(c.ask("createOrder", **order(), t=0.1))["payload"]["code"] == "RATE_LIMITED"
    other = w.connect()  # per connection
    assert kinds(other.ask("subscribe", symbols=[], events=[], t=0.1)) == ["subscribed"]
    assert w.hub.statistics()["errors"]["RATE_LIMITED"] == 3


def test_an_internal_error_is_answered_and_the_connection_stays():
    w = World()
    c = w.connect(("A1", "GHOST"))  # a token carrying an account the venue lacks
    err = the_error(c.ask("metricsSubscribe", id="i", accountId="GHOST"))
    assert (err["payload"]["code"], err["id"]) == ("INTERNAL", "i")
    assert kinds(c.ask("metricsSubscribe", accountId="A1")) == ["subscribed", "metricsEvent"]


def test_an_oversize_frame_closes_with_1009_and_the_connection_is_gone():
    w, c = world_and_client(max_frame=1000)
    c.ask("subscribe", symbols=["EURUSD"], events=["quoteEvent"])
    big = json.dumps({"type": "subscribe", "payload": {"symbols": ["x" * 1000], "events": []}})
    assert c.send(big) == [Close(c.conn, 1009, "message over 1000 bytes")]
    assert c.send(big) == []
    assert w.market(quote(1.1001, 1.1003, 1)) == []
    w.hub.disconnect(c.conn)  # harmless after the close
    assert w.hub.statistics()["connections"] == 0
    # a text frame measured in bytes, not characters
    d = w.connect()
    assert isinstance(d.send('{"type": "x", "payload": {}, "pad": "' + "é" * 490 + '"}')[0], Close)


def test_an_expired_token_closes_with_4401():
    w = World()
    c = w.connect(expires_at=at(60))
    assert w.hub.tick(at(59)) == []
    assert w.hub.tick(at(60)) == [Close(c.conn, 4401, "token expired")]
    d = w.connect(expires_at=at(120))
    assert d.send('{"type": "x", "payload": {}}', t=120) == [Close(d.conn, 4401, "token expired")]


# ------------------------------------------------------------------ replies and delivery


def test_request_id_goes_on_the_direct_reply_only():
    w, c = world_and_client()
    c.ask("subscribe", symbols=["EURUSD"], events=["portfolioEvent"])
    new, filled, pf = c.ask("createOrder", id="c", **order())
    assert new["id"] == "c" and "id" not in filled and "id" not in pf
    pos = filled["payload"]["positionId"]
    (new,) = c.ask("createOrder", id="l", **order(type="LIMIT", price=1.05))
    oid = new["payload"]["orderId"]
    (amended,) = c.ask("amendOrder", id="a", accountId="A1", orderId=oid, price=1.06)
    assert (amended["id"], amended["payload"]["status"], amended["payload"]["price"]) == (
        "a", "AMENDED", 1.06)
    (cancelled,) = c.ask("cancelOrder", id="x", accountId="A1", orderId=oid)
    assert (cancelled["id"], cancelled["payload"]["reason"]) == ("x", "CLIENT")
    (pf,) = c.ask("amendPosition", id="p", accountId="A1", positionId=pos, stopLoss=1.09)
    assert pf["type"] == "portfolioEvent" and pf["id"] == "p"  # once, though subscribed
    assert pf["payload"]["positions"][0]["stopLoss"] == 1.09
    msgs = c.ask("closePosition", id="z", accountId="A1", positionId=pos, quantity=4000)
    assert kinds(msgs) == ["NEW", "FILLED", "portfolioEvent"]
    assert msgs[0]["id"] == "z" and msgs[0]["payload"]["reason"] == "CLOSE_POSITION"
    assert "id" not in msgs[1]
    for type_ in ("orderHistory", "positionHistory", "dealHistory"):
        (h,) = c.ask(type_, id=type_, accountId="A1")
        assert (h["type"], h["id"], h["payload"]["accountId"]) == (type_, type_, "A1")
    (h,) = c.ask("dealHistory", accountId="A1", limit=1)
    assert len(h["payload"]["deals"]) == 1 and h["payload"]["deals"][0]["quantity"] == 4000


def test_amend_position_answers_the_requester_even_unsubscribed_and_subscribers_too():
    w = World()
    x, y = w.connect(), w.connect()
    y.ask("subscribe", symbols=[], events=["portfolioEvent"])
    pos = _position(x)
    out = x.send({"type": "amendPosition", "payload": {
        "accountId": "A1", "positionId": pos, "takeProfit": 1.2}}, id="p")
    (mine,), (theirs,) = x.mine(out), y.mine(out)
    assert mine["id"] == "p" and "id" not in theirs
    assert mine["payload"] == theirs["payload"]


def test_execution_delivery_rule_sender_always_others_by_subscription_never_twice():
    w = World()
    x, y = w.connect(), w.connect()  # two sessions of one user
    bob = w.connect(BOB)
    bob.ask("subscribe", symbols=["EURUSD"], events=["executionEvent"])
    out = x.send({"type": "createOrder", "payload": order()})
    assert kinds(x.mine(out)) == ["NEW", "FILLED"] and y.mine(out) == [] and bob.mine(out) == []
    y.ask("subscribe", symbols=["EURUSD"], events=["executionEvent"])
    x.ask("subscribe", symbols=["EURUSD"], events=["executionEvent"])
    out = x.send({"type": "createOrder", "payload": order()})
    assert kinds(x.mine(out)) == ["NEW", "FILLED"] and kinds(y.mine(out)) == ["NEW", "FILLED"]
    exec_ids = [[m["payload"]["execId"] for m in c.mine(out)] for c in (x, y)]
    assert exec_ids[0] == exec_ids[1]
    assert bob.mine(out) == []
    out = x.send({"type": "createOrder", "payload": order(sym="GBPUSD")})
    assert kinds(x.mine(out)) == ["NEW", "FILLED"] and y.mine(out) == []


def test_events_of_your_order_reach_you_when_another_session_acts_on_it():
    w = World()
    x, y = w.connect(), w.connect()
    oid = _resting(x)
    out = y.send({"type": "cancelOrder", "payload": {"accountId": "A1", "orderId": oid}}, id="y")
    (to_x,), (to_y,) = x.mine(out), y.mine(out)
    assert to_x["payload"]["status"] == to_y["payload"]["status"] == "CANCELLED"
    assert to_y["id"] == "y" and "id" not in to_x
    # subscribed or not, the one who acts gets each event once
    y.ask("subscribe", symbols=["EURUSD"], events=["executionEvent"])
    oid = x.ask("createOrder", **order(type="LIMIT", price=1.05))[0]["payload"]["orderId"]
    out = y.send({"type": "cancelOrder", "payload": {"accountId": "A1", "orderId": oid}}, id="y")
    assert kinds(x.mine(out)) == ["CANCELLED"] and kinds(y.mine(out)) == ["CANCELLED"]
    # a position x opened, closed by y: y gets the close order's events, x does not
    pos = _position(x)
    out = y.send({"type": "closePosition", "payload": {"accountId": "A1", "positionId": pos}})
    assert kinds(y.mine(out)) == ["NEW", "FILLED"] and x.mine(out) == []
    y.ask("unsubscribe", symbols=["EURUSD"], events=["executionEvent"])


def test_fills_on_a_quote_go_to_the_sender_before_the_quote():
    w, c = world_and_client()
    c.ask("subscribe", symbols=["EURUSD"], events=["quoteEvent"])
    _resting(c)
    assert kinds(c.mine(w.market(quote(1.0480, 1.0490, 1)))) == ["FILLED", "quoteEvent"]


def test_a_stop_loss_goes_to_subscribers_only():
    w = World()
    x, y = w.connect(), w.connect()
    y.ask("subscribe", symbols=["EURUSD"], events=["executionEvent"])
    x.ask("createOrder", **order(stopLoss=1.09))
    out = w.market(quote(1.0890, 1.0892, 1))
    assert x.mine(out) == []
    msgs = y.mine(out)
    assert kinds(msgs) == ["NEW", "FILLED"] and msgs[0]["payload"]["reason"] == "STOP_LOSS"


def test_with_latency_the_direct_reply_comes_with_the_market_and_keeps_its_id():
    w = World(venue={"latency_ms": 100})
    x, y = w.connect(), w.connect()
    y.ask("subscribe", symbols=["EURUSD"], events=["executionEvent"])
    assert x.ask("createOrder", id="late", **order()) == []
    out = w.market(quote(1.1001, 1.1003, 0.2), t=0.2)
    new, filled = x.mine(out)
    assert new["id"] == "late" and "id" not in filled and filled["payload"]["lastPrice"] == 1.1003
    assert kinds(y.mine(out)) == ["NEW", "FILLED"] and "id" not in y.mine(out)[0]
    # the sender is gone before arrival: subscribers still get the events
    x.ask("createOrder", **order())
    w.hub.disconnect(x.conn)
    out = w.market(quote(1.1001, 1.1003, 0.4), t=0.4)
    assert {o.conn for o in out} == {y.conn} and kinds(y.mine(out)) == ["NEW", "FILLED"]


# ------------------------------------------------------------------ robustness


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.builds(lambda t, p: json.dumps({"type": t, "payload": p}),
              st.sampled_from(["subscribe", "createOrder", "cancelOrder", "amendOrder",
                               "closePosition", "amendPosition", "depthSubscribe",
                               "orderHistory", "metricsSubscribe"]),
              st.dictionaries(st.sampled_from(["accountId", "symbol", "side", "quantity",
                                               "orderId", "positionId", "depth", "symbols",
                                               "events", "price", "type"]),
                              st.one_of(st.none(), st.integers(), st.floats(allow_nan=False),
                                        st.text(max_size=8),
                                        st.sampled_from(["A1", "B1", "EURUSD", "BUY"]),
                                        st.lists(st.sampled_from(["EURUSD", "quoteEvent"]))))),
))
def test_any_frame_gets_answers_never_a_close_nor_an_exception(frame):
    w, c = SHARED
    out = c.send(frame)
    assert out and all(isinstance(o, Send) for o in out)
    assert w.hub.statistics()["errors"].get("INTERNAL", 0) == 0


SHARED = world_and_client(rate_per_s=1e9, burst=10**9)


def test_cancel_by_client_order_id_and_an_amend_by_another_session_reach_the_owner():
    w = World()
    x, y = w.connect(), w.connect()
    oid = _resting(x)
    out = y.send({"type": "amendOrder", "payload": {"accountId": "A1", "orderId": oid,
                                                   "quantity": 20_000}})
    assert kinds(x.mine(out)) == kinds(y.mine(out)) == ["AMENDED"]
    assert x.mine(out)[0]["payload"]["quantity"] == 20_000
    (cancelled,) = x.ask("cancelOrder", id="k", accountId="A1", clientOrderId="rest")
    assert (cancelled["payload"]["orderId"], cancelled["payload"]["status"], cancelled["id"]) == (
        oid, "CANCELLED", "k")
    the_error(x.ask("cancelOrder", accountId="A1", clientOrderId="rest"))  # no longer working


def test_unsubscribing_executions_stops_other_sessions_events():
    w = World()
    x, y = w.connect(), w.connect()
    y.ask("subscribe", symbols=["EURUSD"], events=["executionEvent"])
    y.ask("unsubscribe", symbols=["EURUSD"], events=["executionEvent"])
    out = x.send({"type": "createOrder", "payload": order()})
    assert y.mine(out) == [] and kinds(x.mine(out)) == ["NEW", "FILLED"]


def test_a_depth_only_feed_still_gives_quote_subscribers_quotes():
    w, c = world_and_client()
    c.ask("subscribe", symbols=["BTCUSDT"], events=["quoteEvent"])
    book = Depth(symbol="BTCUSDT", bids=((100.0, 1.0),), asks=((100.5, 1.5),), ts=at(1))
    (q,) = c.mine(w.market(book, t=1))
    assert q["type"] == "quoteEvent"
    p = q["payload"]
    assert (p["bid"], p["ask"], p["askSize"]) == (100.0, 100.5, 1.5)


def test_statistics_count_connections_messages_and_errors():
    w, c = world_and_client()
    c.ask("subscribe", symbols=["EURUSD"], events=["quoteEvent"])
    c.ask("teleport")
    s = w.hub.statistics()
    assert (s["connections"], s["received"], s["quote_subscriptions"]) == (1, 2, 1)
    assert s["errors"] == {"UNKNOWN_TYPE": 1} and s["sent"] == 3


@pytest.mark.parametrize("bad", [{"rate_per_s": 0}, {"burst": 0}, {"metrics_poll_s": 0},
                                 {"depth_size": -1}])
def test_config_refuses_settings_that_cannot_work(bad):
    with pytest.raises(ValueError):
        HubConfig(**bad)
