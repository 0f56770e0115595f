"""Wire enums of the Trader API (PROTOCOL.md sections 4-6).

They are ``StrEnum``s, so a member compares equal to its wire string and
msgspec decodes and encodes them by value; a value outside the set is a
decode error naming the field.
"""

from enum import StrEnum


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        """+1 for BUY, -1 for SELL: the sign a fill adds to a position."""
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> "Side":
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP = "STOP"
    STOP_LIMIT = "STOP_LIMIT"


class TimeInForce(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"
    DAY = "DAY"


class OrderStatus(StrEnum):
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"
    AMENDED = "AMENDED"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED}
)


class PositionSide(StrEnum):
    LONG = "LONG"
    SHORT = "SHORT"


class ErrorCode(StrEnum):
    """``error.code`` values (PROTOCOL section 6)."""

    BAD_REQUEST = "BAD_REQUEST"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    FORBIDDEN = "FORBIDDEN"
    UNKNOWN_SYMBOL = "UNKNOWN_SYMBOL"
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    UNKNOWN_POSITION = "UNKNOWN_POSITION"
    INVALID_ORDER = "INVALID_ORDER"
    INSUFFICIENT_MARGIN = "INSUFFICIENT_MARGIN"
    DUPLICATE_CLIENT_ORDER_ID = "DUPLICATE_CLIENT_ORDER_ID"
    NOT_AMENDABLE = "NOT_AMENDABLE"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL = "INTERNAL"


Reason = StrEnum(
    "Reason",
    [(r, r) for r in ("CLIENT", "IOC", "FOK", "DAY",
                      "CLOSE_POSITION", "STOP_LOSS", "TAKE_PROFIT", "STOP_OUT")]
    + [(code.name, code.value) for code in ErrorCode],
    module=__name__,
)
Reason.__doc__ = """``executionEvent.reason``: why an order ended (``CLIENT``, ``IOC``, ``FOK``,
``DAY`` or an error code), or why the server created it (``CLOSE_POSITION``,
``STOP_LOSS``, ``TAKE_PROFIT``, ``STOP_OUT``)."""


class EventKind(StrEnum):
    """The event kinds a ``subscribe`` names."""

    QUOTE = "quoteEvent"
    EXECUTION = "executionEvent"
    PORTFOLIO = "portfolioEvent"
