"""The wire codec: the only module that knows JSON, envelopes and camelCase.

Inbound (server->client) messages decode straight into the frozen Structs of
``engine.events`` through one tagged-union decoder (the envelope ``type`` is
the tag), so a quote costs one C call. Outbound intents (``engine.intents``)
encode through request Structs that mirror them field for field; the same
Structs decode requests on the server side. Every failure is a ``WireError``
naming the message type and the field path.

Encoders for events (what a server sends) and decoders for intents (what a
server reads) live here too, so the simulator and the client share one
schema.
"""

from __future__ import annotations

import operator
import sys
from datetime import datetime
from typing import Annotated, Any, Union

import attrs
import msgspec

from engine import events as ev
from engine import intents as it
from engine.enums import ErrorCode, EventKind, OrderType, Side, TimeInForce
from engine.errors import WireError

_MAX = sys.float_info.max
_Finite = Annotated[float, msgspec.Meta(ge=-_MAX, le=_MAX)]
_Id = Annotated[str, msgspec.Meta(max_length=64)]
_ClientOrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]

# --------------------------------------------------------------------------
# Inbound envelopes: {"type": ..., "payload": {...}, "id"?: ...}

_ENV = dict(frozen=True, gc=False, tag_field="type", omit_defaults=True)


def _envelope(tag: str, payload_type: type) -> type:
    return msgspec.defstruct(
        f"{payload_type.__name__}Envelope",
        [("payload", payload_type), ("id", Union[_Id, None], None)],
        tag=tag,
        **_ENV,
    )


EVENT_TYPES: dict[type, str] = {
    ev.Quote: "quoteEvent",
    ev.Depth: "depthEvent",
    ev.Execution: "executionEvent",
    ev.Portfolio: "portfolioEvent",
    ev.Metrics: "metricsEvent",
    ev.Subscribed: "subscribed",
    ev.Unsubscribed: "unsubscribed",
    ev.Error: "error",
    ev.OrderHistory: "orderHistory",
    ev.PositionHistory: "positionHistory",
    ev.DealHistory: "dealHistory",
}
"""Payload class -> wire ``type``, for every server->client message."""

_EVENT_ENVELOPES = {cls: _envelope(tag, cls) for cls, tag in EVENT_TYPES.items()}
_event_decoder = msgspec.json.Decoder(Union[tuple(_EVENT_ENVELOPES.values())])
_market_decoder = msgspec.json.Decoder(
    Union[_EVENT_ENVELOPES[ev.Quote], _EVENT_ENVELOPES[ev.Depth]]
)
MARKET_TYPES = frozenset({"quoteEvent", "depthEvent"})


class _TypeOnly(msgspec.Struct, gc=False):
    type: Any = None


_type_decoder = msgspec.json.Decoder(_TypeOnly)
_encoder = msgspec.json.Encoder()


def message_type(data: bytes | str) -> str | None:
    """The envelope's ``type`` if it is a string, else None (slow path only)."""
    try:
        t = _type_decoder.decode(data).type
    except (msgspec.DecodeError, TypeError, UnicodeError):
        return None
    return t if isinstance(t, str) else None


_BAD_INPUT = (msgspec.DecodeError, UnicodeError)
"""What msgspec raises on bad input: a string that is not UTF-8 (or a ``str``
with lone surrogates) is a ``UnicodeError``, not a ``DecodeError``."""


def _wire_error(exc: Exception, data: bytes | str, known: frozenset[str]) -> WireError:
    if isinstance(exc, UnicodeError):
        return WireError(f"not valid UTF-8 JSON ({exc})")
    text = str(exc)
    detail, sep, path = text.rpartition(" - at `")
    path = path.rstrip("`") if sep else None
    detail = detail if sep else text
    msg_type = message_type(data)
    if not isinstance(exc, msgspec.ValidationError):
        return WireError(f"not valid JSON ({text})")
    if msg_type is not None and msg_type not in known and path == "$.type":
        return WireError(
            f"unknown message type {msg_type!r}", msg_type=msg_type, path=path,
            code=ErrorCode.UNKNOWN_TYPE,
        )
    return WireError(detail, msg_type=msg_type, path=path)


_EVENT_TAGS = frozenset(EVENT_TYPES.values())


def decode_event(data: bytes | str) -> ev.Event:
    """Decode one server->client message into its payload Struct.

    Raises:
        WireError: not JSON, an unknown type, or a field missing, of the wrong
            type or out of range; it names the type and the field path.
    """
    try:
        return _event_decoder.decode(data).payload
    except _BAD_INPUT as exc:
        raise _wire_error(exc, data, _EVENT_TAGS) from None


def decode_envelope(data: bytes | str):
    """Like ``decode_event`` but returns the envelope (``.payload``, ``.id``)."""
    try:
        return _event_decoder.decode(data)
    except _BAD_INPUT as exc:
        raise _wire_error(exc, data, _EVENT_TAGS) from None


def decode_market(data: bytes | str) -> ev.Quote | ev.Depth:
    """Decode a ``quoteEvent`` or ``depthEvent`` line (the replay's fast path)."""
    try:
        return _market_decoder.decode(data).payload
    except _BAD_INPUT as exc:
        raise _wire_error(exc, data, MARKET_TYPES) from None


def decode_market_lines(buf: bytes) -> list:
    """Decode a buffer of whole JSON lines, all quote/depth envelopes, at once.

    Raises ``msgspec.DecodeError`` if any line is not; the caller then goes
    line by line to find and count the bad ones.
    """
    try:
        return _market_decoder.decode_lines(buf)
    except UnicodeError as exc:
        raise msgspec.DecodeError(f"not valid UTF-8 ({exc})") from None


def encode_event(payload: ev.Event, id: str | None = None) -> bytes:
    """Encode a server->client payload in its envelope (what a server sends)."""
    return _encoder.encode(_EVENT_ENVELOPES[type(payload)](payload, id))


# --------------------------------------------------------------------------
# Requests (client->server): one Struct per type mirroring its intent.

_REQ = dict(frozen=True, gc=False, rename="camel", forbid_unknown_fields=False)


class _Subscribe(msgspec.Struct, **_REQ):
    symbols: tuple[str, ...]
    events: tuple[EventKind, ...]


class _DepthSubscribe(msgspec.Struct, **_REQ):
    symbol: str
    depth: Annotated[int, msgspec.Meta(ge=1, le=50)] = 10


class _DepthUnsubscribe(msgspec.Struct, **_REQ):
    symbol: str


class _MetricsSubscribe(msgspec.Struct, **_REQ):
    account_id: str


class _CreateOrder(msgspec.Struct, **_REQ, omit_defaults=True):
    account_id: str
    symbol: str
    side: Side
    quantity: _Finite
    type: OrderType = OrderType.MARKET
    price: _Finite | None = None
    stop_price: _Finite | None = None
    time_in_force: TimeInForce | None = None
    client_order_id: _ClientOrderId | None = None
    stop_loss: _Finite | None = None
    take_profit: _Finite | None = None


class _CancelOrder(msgspec.Struct, **_REQ, omit_defaults=True):
    account_id: str
    order_id: str | None = None
    client_order_id: _ClientOrderId | None = None


class _AmendOrder(msgspec.Struct, **_REQ, omit_defaults=True):
    account_id: str
    order_id: str
    quantity: _Finite | None = None
    price: _Finite | None = None
    stop_price: _Finite | None = None


class _ClosePosition(msgspec.Struct, **_REQ, omit_defaults=True):
    account_id: str
    position_id: str
    quantity: _Finite | None = None


class _AmendPosition(msgspec.Struct, **_REQ, omit_defaults=True):
    account_id: str
    position_id: str
    stop_loss: _Finite | None | msgspec.UnsetType = msgspec.UNSET
    take_profit: _Finite | None | msgspec.UnsetType = msgspec.UNSET


class _History(msgspec.Struct, **_REQ, omit_defaults=True):
    account_id: str
    symbol: str | None = None
    from_: ev.Time | None = msgspec.field(default=None, name="from")
    to: ev.Time | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


REQUEST_TYPES: dict[type, tuple[str, type]] = {
    it.Subscribe: ("subscribe", _Subscribe),
    it.Unsubscribe: ("unsubscribe", _Subscribe),
    it.DepthSubscribe: ("depthSubscribe", _DepthSubscribe),
    it.DepthUnsubscribe: ("depthUnsubscribe", _DepthUnsubscribe),
    it.MetricsSubscribe: ("metricsSubscribe", _MetricsSubscribe),
    it.CreateOrder: ("createOrder", _CreateOrder),
    it.CancelOrder: ("cancelOrder", _CancelOrder),
    it.AmendOrder: ("amendOrder", _AmendOrder),
    it.ClosePosition: ("closePosition", _ClosePosition),
    it.AmendPosition: ("amendPosition", _AmendPosition),
    it.OrderHistoryQuery: ("orderHistory", _History),
    it.PositionHistoryQuery: ("positionHistory", _History),
    it.DealHistoryQuery: ("dealHistory", _History),
}
"""Intent class -> (wire ``type``, request payload Struct)."""

_INTENT_BY_TAG = {tag: (cls, schema) for cls, (tag, schema) in REQUEST_TYPES.items()}
REQUEST_TAGS = frozenset(_INTENT_BY_TAG)


class _RequestEnvelope(msgspec.Struct, gc=False):
    type: str
    payload: msgspec.Raw
    id: _Id | None = None


_request_envelope_decoder = msgspec.json.Decoder(_RequestEnvelope)
_request_decoders = {
    tag: msgspec.json.Decoder(schema) for tag, (_, schema) in _INTENT_BY_TAG.items()
}


class _OutEnvelope(msgspec.Struct, gc=False, omit_defaults=True):
    type: str
    payload: Any
    id: str | None = None


def _field_getter(cls: type):
    names = [f.name for f in attrs.fields(cls)]
    get = operator.attrgetter(*names)
    return (lambda x: (get(x),)) if len(names) == 1 else get


_ENCODE_PLAN = {
    cls: (tag, schema, _field_getter(cls), any(f.default is it.KEEP for f in attrs.fields(cls)))
    for cls, (tag, schema) in REQUEST_TYPES.items()
}


def encode_intent(intent: it.Intent, id: str | None = None) -> bytes:
    """Encode an intent as its request envelope (about 1 us: on the tick-to-order path)."""
    tag, schema, get, has_keep = _ENCODE_PLAN[type(intent)]
    values = get(intent)
    if has_keep:
        values = [msgspec.UNSET if v is it.KEEP else v for v in values]
    return _encoder.encode(_OutEnvelope(tag, schema(*values), id))


def decode_request(data: bytes | str) -> tuple[it.Intent, str | None]:
    """Decode a client->server message into its intent and the request ``id``.

    The checks run in PROTOCOL section 6 order: the envelope (``BAD_REQUEST``),
    the type (``UNKNOWN_TYPE``), then the payload's shape (``BAD_REQUEST``).

    Raises:
        WireError: with ``code`` set to what a server answers.
    """
    if isinstance(data, (bytes, bytearray, memoryview)) and not isinstance(data, bytes):
        data = bytes(data)
    try:
        env = _request_envelope_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _wire_error(exc, data, REQUEST_TAGS) from None
    except _BAD_INPUT as exc:
        raise WireError(f"not valid JSON ({exc})") from None
    if env.type not in _INTENT_BY_TAG:
        raise WireError(
            f"unknown message type {env.type!r}", msg_type=env.type, path="$.type",
            code=ErrorCode.UNKNOWN_TYPE,
        )
    cls, _ = _INTENT_BY_TAG[env.type]
    raw = bytes(env.payload)
    if not raw.lstrip().startswith(b"{"):
        raise WireError("payload must be an object", msg_type=env.type, path="$.payload")
    try:
        body = _request_decoders[env.type].decode(raw)
    except UnicodeError as exc:
        raise WireError(f"not valid UTF-8 ({exc})", msg_type=env.type, path="$.payload") from None
    except msgspec.DecodeError as exc:
        text = str(exc)
        detail, sep, path = text.rpartition(" - at `")
        path = "$.payload" + path.rstrip("`")[1:] if sep else "$.payload"
        raise WireError(detail if sep else text, msg_type=env.type, path=path) from None
    fields = {
        f: (it.KEEP if v is msgspec.UNSET else v)
        for f in body.__struct_fields__
        for v in (getattr(body, f),)
    }
    intent = cls(**fields)
    _check_request(intent, env.type)
    return intent, env.id


def _check_request(intent: it.Intent, tag: str) -> None:
    """Shape rules a Struct cannot say: which of several optional fields is needed."""
    if isinstance(intent, it.CancelOrder) and not (intent.order_id or intent.client_order_id):
        raise WireError("needs orderId or clientOrderId", msg_type=tag, path="$.payload")
    if isinstance(intent, it.AmendOrder) and (
        intent.quantity is None and intent.price is None and intent.stop_price is None
    ):
        raise WireError(
            "nothing to amend: give quantity, price or stopPrice", msg_type=tag, path="$.payload"
        )


def request_type(intent: it.Intent) -> str:
    """The wire ``type`` of an intent."""
    return REQUEST_TYPES[type(intent)][0]


def parse_time(text: str) -> datetime:
    """Parse a PROTOCOL time string (ISO-8601 UTC ending in ``Z``)."""
    try:
        return msgspec.json.decode(_encoder.encode(text), type=ev.Time)
    except _BAD_INPUT as exc:
        raise WireError(f"not a time: {text!r} ({exc})") from None


def format_time(ts: datetime) -> str:
    """Format a time the way the wire does (``...Z``)."""
    return _encoder.encode(ts).decode()[1:-1]
