"""The wire codec: what goes out comes back, and bad input is a WireError that
says which message and which field (DESIGN rule 4, PROTOCOL sections 3-6)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import codec
from engine import intents as it
from engine.enums import ErrorCode, OrderType, Side
from engine.errors import WireError
from tests import gen

TS = "2026-06-01T12:00:00.125Z"
QUOTE = {"symbol": "EURUSD", "bid": 1.0841, "ask": 1.0843, "ts": TS}
EXECUTION = {
    "accountId": "acc_1", "orderId": "o-1", "clientOrderId": "c-1", "execId": "x-1",
    "symbol": "EURUSD", "side": "BUY", "type": "LIMIT", "status": "PARTIALLY_FILLED",
    "quantity": 10000, "filledQuantity": 4000, "remainingQuantity": 6000, "price": 1.084,
    "stopPrice": None, "lastQuantity": 4000, "lastPrice": 1.084, "averagePrice": 1.084,
    "commission": 0.32, "positionId": "p-1", "reason": None, "ts": TS,
}
DEPTH = {"symbol": "EURUSD", "bids": [[1.0841, 1e6], [1.084, 2e6]], "asks": [[1.0843, 1e6]], "ts": TS}
PORTFOLIO = {"accountId": "acc_1", "currency": "USD", "balance": 100000.0, "positions": [], "ts": TS}
CREATE = {"accountId": "acc_1", "symbol": "EURUSD", "side": "BUY", "quantity": 10000}


def msg(type_: str, payload, **top) -> bytes:
    return json.dumps({"type": type_, "payload": payload, **top}).encode()


def with_(base: dict, **changes) -> dict:
    return {**base, **changes}


def without(base: dict, key: str) -> dict:
    return {k: v for k, v in base.items() if k != key}


# --------------------------------------------------------------------------
# Round trips


def test_every_wire_type_has_a_generator():
    assert set(gen.EVENTS) == set(codec.EVENT_TYPES)
    assert set(gen.INTENTS) == set(codec.REQUEST_TYPES)


@given(gen.events(), gen.request_ids)
def test_event_round_trip(payload, id):
    env = codec.decode_envelope(codec.encode_event(payload, id))
    assert (env.payload, env.id) == (payload, id)
    assert type(env.payload) is type(payload)


@given(gen.intents(), gen.request_ids)
def test_intent_round_trip(intent, id):
    assert codec.decode_request(codec.encode_intent(intent, id)) == (intent, id)


@given(gen.events())
def test_encoded_event_names_its_type(payload):
    assert codec.message_type(codec.encode_event(payload)) == codec.EVENT_TYPES[type(payload)]


def test_create_order_is_camel_case_and_omits_defaults():
    intent = it.CreateOrder(
        "acc_1", "EURUSD", Side.BUY, 10000, OrderType.LIMIT, price=1.084, client_order_id="s-1"
    )
    wire = json.loads(codec.encode_intent(intent, "r-1"))
    assert wire == {
        "type": "createOrder", "id": "r-1",
        "payload": {"accountId": "acc_1", "symbol": "EURUSD", "side": "BUY", "quantity": 10000,
                    "type": "LIMIT", "price": 1.084, "clientOrderId": "s-1"},
    }


def test_amend_position_keep_is_absent_and_none_is_null():
    intent = it.AmendPosition("acc_1", "p-1", stop_loss=None)  # take_profit: KEEP
    payload = json.loads(codec.encode_intent(intent))["payload"]
    assert payload == {"accountId": "acc_1", "positionId": "p-1", "stopLoss": None}
    back, _ = codec.decode_request(msg("amendPosition", payload))
    assert back.stop_loss is None and back.take_profit is it.KEEP


def test_history_from_is_the_wire_key_from():
    since = datetime(2026, 6, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
    payload = json.loads(codec.encode_intent(it.DealHistoryQuery("acc_1", from_=since)))["payload"]
    assert payload == {"accountId": "acc_1", "from": "2026-06-01T12:00:00.123000Z"}
    back, _ = codec.decode_request(msg("dealHistory", {"accountId": "acc_1", "from": "2026-06-01T12:00:00.123Z"}))
    assert back == it.DealHistoryQuery("acc_1", from_=since, limit=100)


def test_request_defaults_apply_when_absent():
    (order, id) = codec.decode_request(msg("createOrder", CREATE))
    assert (order.type, order.effective_tif, id) == (OrderType.MARKET, "IOC", None)
    (depth, _) = codec.decode_request(msg("depthSubscribe", {"symbol": "EURUSD"}))
    assert depth.depth == 10


# --------------------------------------------------------------------------
# What a tolerant reader accepts


def test_crossed_quote_is_accepted_and_flagged():
    q = codec.decode_event(msg("quoteEvent", with_(QUOTE, bid=1.1, ask=1.0)))
    assert q.crossed and (q.bid, q.ask) == (1.1, 1.0)
    assert not codec.decode_event(msg("quoteEvent", QUOTE)).crossed


def test_unknown_keys_are_ignored_at_top_level_and_in_payloads():
    q = codec.decode_event(msg("quoteEvent", with_(QUOTE, venueSeq=7, extra={"a": [1]}), recvTs=TS))
    assert q == codec.decode_event(msg("quoteEvent", QUOTE))
    order, _ = codec.decode_request(msg("createOrder", with_(CREATE, memo="x"), trace="y"))
    assert order == it.CreateOrder("acc_1", "EURUSD", Side.BUY, 10000)


def test_type_may_come_after_payload():
    data = json.dumps({"payload": QUOTE, "type": "quoteEvent"}).encode()
    assert codec.decode_event(data).symbol == "EURUSD"


@pytest.mark.parametrize(
    "ts, micro",
    [("2026-06-01T12:00:00Z", 0), ("2026-06-01T12:00:00.123Z", 123000),
     ("2026-06-01T12:00:00.123456Z", 123456)],
)
def test_times_with_0_3_6_fraction_digits(ts, micro):
    q = codec.decode_event(msg("quoteEvent", with_(QUOTE, ts=ts)))
    assert q.ts == datetime(2026, 6, 1, 12, 0, 0, micro, tzinfo=timezone.utc)
    assert codec.parse_time(ts) == q.ts
    assert codec.format_time(q.ts).endswith("Z")


def test_request_quantity_sign_is_not_a_shape_error():
    """quantity <= 0 is INVALID_ORDER, which the venue decides, not the codec."""
    order, _ = codec.decode_request(msg("createOrder", with_(CREATE, quantity=-5)))
    assert order.quantity == -5


# --------------------------------------------------------------------------
# Bad input: each names the message type and the field


def bad_event(data) -> WireError:
    with pytest.raises(WireError) as info:
        codec.decode_event(data)
    return info.value


def bad_request(data) -> WireError:
    with pytest.raises(WireError) as info:
        codec.decode_request(data)
    return info.value


NOT_JSON = [
    b"not json", b"", b"{", b'{"type": "quoteEvent", "payload": {"bid": NaN}}',
    b'{"type": "quoteEvent", "payload": {"bid": Infinity}}', b"\x00\xff\xfe\x81binary",
    b'\xef\xbb\xbf{"type": "quoteEvent"}', "\ud800",
]


@pytest.mark.parametrize("data", NOT_JSON)
def test_not_json_is_bad_request(data):
    for err in (bad_event(data), bad_request(data)):
        assert (err.code, err.msg_type, err.path) == (ErrorCode.BAD_REQUEST, None, None)


@pytest.mark.parametrize(
    "type_, payload, path",
    [
        ("quoteEvent", with_(QUOTE, bid=float("inf")), "$.payload.bid"),  # dumped as 1e999-like
        ("quoteEvent", with_(QUOTE, bid="1.0841"), "$.payload.bid"),
        ("quoteEvent", with_(QUOTE, bid=0), "$.payload.bid"),
        ("quoteEvent", with_(QUOTE, ask=-1.08), "$.payload.ask"),
        ("quoteEvent", with_(QUOTE, bidSize=0), "$.payload.bidSize"),
        ("quoteEvent", with_(QUOTE, symbol=5), "$.payload.symbol"),
        ("quoteEvent", with_(QUOTE, ts="2026-06-01T12:00:00"), "$.payload.ts"),
        ("quoteEvent", with_(QUOTE, ts="yesterday"), "$.payload.ts"),
        ("depthEvent", with_(DEPTH, bids=[[1.08, -5]]), "$.payload.bids[0][1]"),
        ("depthEvent", with_(DEPTH, asks=[[1.08, 1e6], [0, 1e6]]), "$.payload.asks[1][0]"),
        ("executionEvent", with_(EXECUTION, quantity=0), "$.payload.quantity"),
        ("executionEvent", with_(EXECUTION, filledQuantity=-1), "$.payload.filledQuantity"),
        ("executionEvent", with_(EXECUTION, status="DONE"), "$.payload.status"),
        ("executionEvent", with_(EXECUTION, side="buy"), "$.payload.side"),
        ("executionEvent", with_(EXECUTION, reason="BECAUSE"), "$.payload.reason"),
        ("executionEvent", with_(EXECUTION, commission=float("-inf")), "$.payload.commission"),
        ("portfolioEvent", with_(PORTFOLIO, positions={}), "$.payload.positions"),
        ("error", {"code": "OOPS", "message": "x"}, "$.payload.code"),
        ("quoteEvent", [QUOTE], "$.payload"),
        ("quoteEvent", None, "$.payload"),
    ],
)
def test_bad_event_field_is_named(type_, payload, path):
    data = json.dumps({"type": type_, "payload": payload}).replace("Infinity", "1e999").encode()
    err = bad_event(data)
    assert (err.code, err.msg_type, err.path) == (ErrorCode.BAD_REQUEST, type_, path)
    assert type_ in str(err) and path in str(err)


@pytest.mark.parametrize("type_, payload, field", [("quoteEvent", QUOTE, "bid"), ("executionEvent", EXECUTION, "execId")])
def test_missing_event_field_is_named(type_, payload, field):
    err = bad_event(msg(type_, without(payload, field)))
    assert (err.msg_type, err.path) == (type_, "$.payload")
    assert f"`{field}`" in err.detail


def test_bad_event_envelope():
    assert bad_event(json.dumps({"payload": QUOTE}).encode()).code == ErrorCode.BAD_REQUEST
    err = bad_event(json.dumps({"type": "quoteEvent"}).encode())
    assert (err.msg_type, err.code) == ("quoteEvent", ErrorCode.BAD_REQUEST)
    err = bad_event(msg("quoteEvent", QUOTE, id="x" * 65))
    assert (err.msg_type, err.path) == ("quoteEvent", "$.id")
    err = bad_event(b"[1, 2]")
    assert (err.code, err.msg_type) == (ErrorCode.BAD_REQUEST, None)


def test_unknown_event_type():
    err = bad_event(msg("tradeEvent", QUOTE))
    assert (err.code, err.msg_type, err.path) == (ErrorCode.UNKNOWN_TYPE, "tradeEvent", "$.type")
    # a request type is not an event type either
    assert bad_event(msg("createOrder", CREATE)).code == ErrorCode.UNKNOWN_TYPE
    # the replay's market-only decoder treats any other type as unknown
    with pytest.raises(WireError) as info:
        codec.decode_market(msg("executionEvent", EXECUTION))
    assert info.value.code == ErrorCode.UNKNOWN_TYPE


def test_event_type_that_is_not_a_string():
    err = bad_event(json.dumps({"type": 7, "payload": QUOTE}).encode())
    assert (err.code, err.msg_type, err.path) == (ErrorCode.BAD_REQUEST, None, "$.type")


@pytest.mark.parametrize(
    "type_, payload, path",
    [
        ("createOrder", with_(CREATE, quantity=float("inf")), "$.payload.quantity"),
        ("createOrder", with_(CREATE, price=float("-inf")), "$.payload.price"),
        ("createOrder", with_(CREATE, quantity="10000"), "$.payload.quantity"),
        ("createOrder", with_(CREATE, side="HOLD"), "$.payload.side"),
        ("createOrder", with_(CREATE, type="ICEBERG"), "$.payload.type"),
        ("createOrder", with_(CREATE, timeInForce="GTD"), "$.payload.timeInForce"),
        ("createOrder", with_(CREATE, clientOrderId="c" * 65), "$.payload.clientOrderId"),
        ("createOrder", with_(CREATE, clientOrderId=""), "$.payload.clientOrderId"),
        ("createOrder", with_(CREATE, accountId=None), "$.payload.accountId"),
        ("cancelOrder", {"accountId": "acc_1", "clientOrderId": "c" * 65}, "$.payload.clientOrderId"),
        ("subscribe", {"symbols": ["EURUSD"], "events": ["tradeEvent"]}, "$.payload.events[0]"),
        ("subscribe", {"symbols": "EURUSD", "events": []}, "$.payload.symbols"),
        ("depthSubscribe", {"symbol": "EURUSD", "depth": 0}, "$.payload.depth"),
        ("depthSubscribe", {"symbol": "EURUSD", "depth": 51}, "$.payload.depth"),
        ("depthSubscribe", {"symbol": "EURUSD", "depth": 5.5}, "$.payload.depth"),
        ("orderHistory", {"accountId": "acc_1", "limit": 0}, "$.payload.limit"),
        ("dealHistory", {"accountId": "acc_1", "limit": 1001}, "$.payload.limit"),
        ("positionHistory", {"accountId": "acc_1", "from": "2026-06-01"}, "$.payload.from"),
        ("amendPosition", {"accountId": "a", "positionId": "p", "stopLoss": "1.08"}, "$.payload.stopLoss"),
        ("amendOrder", {"accountId": "acc_1", "orderId": "o-1"}, "$.payload"),
        ("amendOrder", {"accountId": "acc_1", "orderId": "o-1", "price": None}, "$.payload"),
        ("cancelOrder", {"accountId": "acc_1"}, "$.payload"),
        ("cancelOrder", {"accountId": "acc_1", "orderId": None, "clientOrderId": None}, "$.payload"),
        ("createOrder", [CREATE], "$.payload"),
        ("createOrder", None, "$.payload"),
        ("createOrder", "createOrder", "$.payload"),
    ],
)
def test_bad_request_field_is_named(type_, payload, path):
    data = json.dumps({"type": type_, "payload": payload}).replace("Infinity", "1e999").encode()
    err = bad_request(data)
    assert (err.code, err.msg_type, err.path) == (ErrorCode.BAD_REQUEST, type_, path)
    assert type_ in str(err)


@pytest.mark.parametrize("field", ["accountId", "symbol", "side", "quantity"])
def test_missing_request_field_is_named(field):
    err = bad_request(msg("createOrder", without(CREATE, field)))
    assert (err.code, err.msg_type, err.path) == (ErrorCode.BAD_REQUEST, "createOrder", "$.payload")
    assert f"`{field}`" in err.detail


def test_bad_request_envelope():
    err = bad_request(json.dumps({"type": "createOrder"}).encode())
    assert (err.code, err.msg_type) == (ErrorCode.BAD_REQUEST, "createOrder")
    err = bad_request(json.dumps({"payload": CREATE}).encode())
    assert (err.code, err.msg_type) == (ErrorCode.BAD_REQUEST, None)
    err = bad_request(json.dumps({"type": ["createOrder"], "payload": CREATE}).encode())
    assert (err.code, err.msg_type, err.path) == (ErrorCode.BAD_REQUEST, None, "$.type")
    err = bad_request(msg("createOrder", CREATE, id="r" * 65))
    assert (err.code, err.msg_type, err.path) == (ErrorCode.BAD_REQUEST, "createOrder", "$.id")
    assert codec.decode_request(msg("createOrder", CREATE, id="r" * 64))[1] == "r" * 64
    assert bad_request(b'"createOrder"').code == ErrorCode.BAD_REQUEST


def test_unknown_request_type_comes_after_envelope_and_before_shape():
    # type is judged before the payload's shape ...
    err = bad_request(msg("placeOrder", {"nonsense": True}))
    assert (err.code, err.msg_type, err.path) == (ErrorCode.UNKNOWN_TYPE, "placeOrder", "$.type")
    # ... but after the envelope (no payload: BAD_REQUEST)
    assert bad_request(json.dumps({"type": "placeOrder"}).encode()).code == ErrorCode.BAD_REQUEST
    # an event type is not a request type
    assert bad_request(msg("quoteEvent", QUOTE)).code == ErrorCode.UNKNOWN_TYPE


def test_invalid_utf8_inside_a_known_message():
    data = b'{"type": "createOrder", "payload": {"accountId": "\xff", "symbol": "E"}}'
    assert bad_request(data).code == ErrorCode.BAD_REQUEST
    data = b'{"type": "quoteEvent", "payload": {"symbol": "EUR\xffUSD", "bid": 1, "ask": 1, "ts": "%s"}}'
    for decode in (codec.decode_event, codec.decode_market):
        with pytest.raises(WireError):
            decode(data % TS.encode())
    with pytest.raises(msgspec.DecodeError):  # what the replay's batch path expects
        codec.decode_market_lines(data % TS.encode() + b"\n")


# --------------------------------------------------------------------------
# Fuzz: anything in, a value or a WireError out


def _value_or_wire_error(decode, data) -> None:
    try:
        decode(data)
    except WireError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_TYPE)


DECODERS = [codec.decode_event, codec.decode_envelope, codec.decode_market, codec.decode_request]
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)


@settings(max_examples=300)
@given(st.binary(max_size=200) | any_text)
def test_arbitrary_input_gives_a_value_or_wire_error(data):
    for decode in DECODERS:
        _value_or_wire_error(decode, data)


@st.composite
def corrupted_messages(draw) -> bytes:
    """A valid message with a few of its bytes replaced by any bytes."""
    data = draw(
        gen.events().map(codec.encode_event) | gen.intents().map(codec.encode_intent)
    )
    start = draw(st.integers(0, len(data)))
    end = draw(st.integers(start, min(len(data), start + 4)))
    return data[:start] + draw(st.binary(min_size=1, max_size=4)) + data[end:]


@settings(max_examples=300)
@given(corrupted_messages())
def test_corrupted_messages_give_a_value_or_wire_error(data):
    for decode in DECODERS:
        _value_or_wire_error(decode, data)


def _wire_names(schema) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(schema)]


_PAYLOAD_SCHEMAS = [(tag, cls) for cls, tag in codec.EVENT_TYPES.items()] + [
    (tag, schema) for tag, schema in codec.REQUEST_TYPES.values()
]


@st.composite
def near_miss_messages(draw) -> bytes:
    """A known type with a payload of its own field names holding any JSON."""
    tag, schema = draw(st.sampled_from(_PAYLOAD_SCHEMAS))
    keys = st.sampled_from(_wire_names(schema)) | st.text(max_size=5)
    payload = draw(st.dictionaries(keys, gen.json_values, max_size=8))
    return json.dumps({"type": tag, "payload": payload}).encode()


@settings(max_examples=300)
@given(near_miss_messages())
def test_near_miss_payloads_give_a_value_or_wire_error(data):
    for decode in DECODERS:
        _value_or_wire_error(decode, data)


@st.composite
def mutated_events(draw) -> bytes:
    """A valid event with one payload field replaced by any JSON value."""
    wire = json.loads(codec.encode_event(draw(gen.events())))
    if wire["payload"]:
        key = draw(st.sampled_from(sorted(wire["payload"])))
        wire["payload"][key] = draw(gen.json_values)
    return json.dumps(wire).encode()


@st.composite
def mutated_requests(draw) -> bytes:
    wire = json.loads(codec.encode_intent(draw(gen.intents())))
    key = draw(st.sampled_from(sorted(wire["payload"])))
    wire["payload"][key] = draw(gen.json_values)
    return json.dumps(wire).encode()


@given(mutated_events())
def test_mutated_event_gives_a_value_or_a_wire_error_naming_the_type(data):
    try:
        codec.decode_event(data)
    except WireError as exc:
        assert exc.msg_type == json.loads(data)["type"]


@given(mutated_requests())
def test_mutated_request_gives_a_value_or_a_wire_error_naming_the_type(data):
    try:
        codec.decode_request(data)
    except WireError as exc:
        assert exc.msg_type == json.loads(data)["type"]
        assert exc.path is not None and exc.path.startswith("$.payload")
