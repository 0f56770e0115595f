"""The gate's verdicts and its checks, one pure function each.

A check takes the intent and the numbers it needs and returns ``None``
(passes) or a ``Denied`` whose reason code says which check and whose
message says what and by how much ("quantity 150000 > max_order_qty
100000"). None of them reads the book or keeps state, so each is tested
with plain numbers; ``risk.gate`` gathers the numbers and runs them in
order. The one exception is ``check_rate``, which takes a token from the
bucket it is given.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import attrs

from engine.enums import OrderType, Side
from engine.events import Quote
from engine.instruments import Instrument
from risk.throttle import TokenBucket


class DenialReason(StrEnum):
    """Why the gate said no: one code per check, and the halt causes."""

    UNKNOWN_INSTRUMENT = "UNKNOWN_INSTRUMENT"
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    UNKNOWN_POSITION = "UNKNOWN_POSITION"
    INVALID_QUANTITY = "INVALID_QUANTITY"
    LOT_STEP = "LOT_STEP"
    INVALID_PRICE = "INVALID_PRICE"
    MAX_ORDER_QTY = "MAX_ORDER_QTY"
    MAX_ORDER_NOTIONAL = "MAX_ORDER_NOTIONAL"
    MAX_POSITION = "MAX_POSITION"
    MAX_GROSS_EXPOSURE = "MAX_GROSS_EXPOSURE"
    MAX_OPEN_ORDERS = "MAX_OPEN_ORDERS"
    ORDER_RATE = "ORDER_RATE"
    AMEND_RATE = "AMEND_RATE"
    PRICE_COLLAR = "PRICE_COLLAR"
    NO_FRESH_QUOTE = "NO_FRESH_QUOTE"
    DUPLICATE_ORDER = "DUPLICATE_ORDER"
    STALE_SYMBOL = "STALE_SYMBOL"
    REDUCING_ONLY = "REDUCING_ONLY"
    HALTED = "HALTED"
    DAILY_LOSS = "DAILY_LOSS"
    MAX_DRAWDOWN = "MAX_DRAWDOWN"
    KILL_SWITCH = "KILL_SWITCH"


@attrs.frozen
class Approved:
    """The intent may go to the venue."""

    intent: Any


@attrs.frozen
class Denied:
    """The intent must not go to the venue; it goes back to the strategy."""

    intent: Any
    reason: DenialReason
    message: str


Decision = Approved | Denied

_MS = timedelta(milliseconds=1)
_EPS = 1e-9
_HAS_PRICE = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
_HAS_STOP = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})


# -- small helpers ------------------------------------------------------------
def fmt(x: float) -> str:
    """A quantity or price as one would write it: ``150000``, ``1.0842``."""
    if isinstance(x, float) and math.isfinite(x) and x.is_integer():
        return str(int(x))
    return str(x)


def above(x: float, limit: float) -> bool:
    """``x > limit``, forgiving the float noise of sums and products."""
    return x - limit > _EPS * max(1.0, abs(limit))


def quote_age_ms(quote: Quote, now: datetime) -> float:
    return (now - quote.ts) / _MS


def is_fresh(quote: Quote | None, now: datetime, max_age_ms: float) -> bool:
    return quote is not None and quote_age_ms(quote, now) <= max_age_ms


def valuation_price(
    side: Side, order_type: OrderType, price: float | None, stop_price: float | None,
    quote: Quote | None,
) -> float | None:
    """The price an order is valued at: its limit price, a STOP's trigger,
    else the side of the book it would take (ask for BUY, bid for SELL)."""
    if order_type in _HAS_PRICE and price is not None:
        return price
    if order_type is OrderType.STOP and stop_price is not None:
        return stop_price
    if quote is None:
        return None
    return quote.ask if side is Side.BUY else quote.bid


def reduces(side: Side, added: float, net: float, working_same_side: float) -> bool:
    """True if the order shrinks |position| and, with the working orders of its
    side filled as well, does not flip it."""
    if side is Side.BUY:
        return net < 0 and net + working_same_side + added <= _EPS * max(1.0, -net)
    return net > 0 and net - working_same_side - added >= -_EPS * max(1.0, net)


def symbol_exposure(net: float, working_buy: float, working_sell: float) -> float:
    """Worst-case |position| of a symbol if the working orders of either side filled."""
    return max(net + working_buy, working_sell - net, 0.0)


# -- the checks ---------------------------------------------------------------
def check_instrument(intent, symbol: str, instrument: Instrument | None) -> Denied | None:
    if instrument is None:
        return Denied(intent, DenialReason.UNKNOWN_INSTRUMENT, f"unknown symbol {symbol!r}")
    return None


def check_quantity(intent, quantity: float, instrument: Instrument) -> Denied | None:
    """Quantity finite, > 0 and a whole multiple of the lot step."""
    if not (isinstance(quantity, (int, float)) and math.isfinite(quantity) and quantity > 0):
        return Denied(intent, DenialReason.INVALID_QUANTITY,
                      f"quantity {quantity!r} must be a finite number > 0")
    if not instrument.on_lot_step(quantity):
        return Denied(intent, DenialReason.LOT_STEP,
                      f"quantity {fmt(quantity)} is not a multiple of lot_step "
                      f"{instrument.lot_step} of {instrument.symbol}")
    return None


def check_prices(
    intent, order_type: OrderType, price: float | None, stop_price: float | None,
    *, amend: bool = False,
) -> Denied | None:
    """The prices the order type needs are there, and every price given is > 0.

    For an amendment (``amend=True``) None means "unchanged", and a price the
    order type does not have cannot be set.
    """
    for name, value, has in (("price", price, order_type in _HAS_PRICE),
                             ("stop_price", stop_price, order_type in _HAS_STOP)):
        if value is None:
            if has and not amend:
                return Denied(intent, DenialReason.INVALID_PRICE, f"a {order_type} order needs {name}")
        elif not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            return Denied(intent, DenialReason.INVALID_PRICE,
                          f"{name} {value!r} must be a finite number > 0")
        elif amend and not has:
            return Denied(intent, DenialReason.INVALID_PRICE, f"a {order_type} order has no {name}")
    return None


def check_max_order_qty(intent, quantity: float, limit: float) -> Denied | None:
    if quantity > limit:
        return Denied(intent, DenialReason.MAX_ORDER_QTY,
                      f"quantity {fmt(quantity)} > max_order_qty {fmt(limit)}")
    return None


def check_max_order_notional(
    intent, symbol: str, quantity: float, price: float | None, rate: float, limit: float,
) -> Denied | None:
    """quantity x price x rate within the limit; no price to value it at fails closed."""
    if price is None:
        return Denied(intent, DenialReason.NO_FRESH_QUOTE,
                      f"cannot value the order against max_order_notional: no quote for {symbol}")
    notional = quantity * price * rate
    if above(notional, limit):
        return Denied(intent, DenialReason.MAX_ORDER_NOTIONAL,
                      f"notional {notional:.2f} (quantity {fmt(quantity)} x price {fmt(price)}"
                      f" x rate {fmt(rate)}) > max_order_notional {limit:.2f}")
    return None


def check_max_position(
    intent, symbol: str, side: Side, added: float, net: float, working_same_side: float,
    limit: float,
) -> Denied | None:
    """The position if this order and the working orders of its side all filled."""
    projected = net + side.sign * (working_same_side + added)
    if above(side.sign * projected, limit):
        return Denied(intent, DenialReason.MAX_POSITION,
                      f"{symbol} position would reach {fmt(projected)} (net {fmt(net)}, working "
                      f"{side} {fmt(working_same_side)}, adding {fmt(added)}): over max_position "
                      f"{fmt(limit)} by {fmt(abs(projected) - limit)}")
    return None


def check_max_gross_exposure(intent, before: float, after: float, limit: float) -> Denied | None:
    """Denied only if the order raises the gross exposure to above the limit."""
    if above(after, limit) and after > before:
        return Denied(intent, DenialReason.MAX_GROSS_EXPOSURE,
                      f"gross exposure would reach {after:.2f} (now {before:.2f}): over "
                      f"max_gross_exposure {limit:.2f} by {after - limit:.2f}")
    return None


def check_max_open_orders(intent, open_orders: int, limit: int) -> Denied | None:
    if open_orders + 1 > limit:
        return Denied(intent, DenialReason.MAX_OPEN_ORDERS,
                      f"{open_orders} working orders already, max_open_orders {limit}")
    return None


def check_rate(
    intent, bucket: TokenBucket, now_us: int, reason: DenialReason, what: str,
) -> Denied | None:
    """Takes a token from ``bucket``; without one the intent is denied, not queued."""
    if bucket.try_take(now_us):
        return None
    return Denied(intent, reason,
                  f"more than {fmt(bucket.rate)} {what}/s (burst {bucket.burst}); next allowed "
                  f"in {bucket.wait_us() / 1000:.1f} ms")


def check_fresh_quote(
    intent, symbol: str, order_type: OrderType, quote: Quote | None, now: datetime,
    max_age_ms: float,
) -> Denied | None:
    """A MARKET order needs a fresh quote: it fills at whatever the book holds."""
    if order_type is not OrderType.MARKET or is_fresh(quote, now, max_age_ms):
        return None
    return Denied(intent, DenialReason.NO_FRESH_QUOTE,
                  f"MARKET order on {symbol} needs a fresh quote: {_staleness(quote, now, max_age_ms)}")


def check_price_collar(
    intent, symbol: str, order_type: OrderType, price: float | None, stop_price: float | None,
    quote: Quote | None, now: datetime, max_age_ms: float, pct: float,
) -> Denied | None:
    """A limit or stop price more than ``pct`` % from the fresh mid is a fat finger."""
    checked = [(name, value) for name, value, has in (
        ("price", price, order_type in _HAS_PRICE), ("stop_price", stop_price, order_type in _HAS_STOP),
    ) if has and value is not None]
    if not checked:
        return None
    if not is_fresh(quote, now, max_age_ms):
        return Denied(intent, DenialReason.NO_FRESH_QUOTE,
                      f"price_collar_pct needs a fresh quote of {symbol}: "
                      f"{_staleness(quote, now, max_age_ms)}")
    mid = quote.mid
    for name, value in checked:
        off = abs(value - mid) / mid * 100.0
        if above(off, pct):
            return Denied(intent, DenialReason.PRICE_COLLAR,
                          f"{name} {fmt(value)} is {off:.3g}% from mid {mid:.10g}: over "
                          f"price_collar_pct {fmt(pct)}")
    return None


def check_duplicate(
    intent, last_us: int | None, now_us: int, window_ms: float,
) -> Denied | None:
    """The same order approved less than ``window_ms`` ago is a strategy stutter."""
    if last_us is None:
        return None
    ago_ms = (now_us - last_us) / 1000.0
    if ago_ms < window_ms:
        return Denied(intent, DenialReason.DUPLICATE_ORDER,
                      f"the same order was approved {ago_ms:g} ms ago, within "
                      f"duplicate_window_ms {fmt(window_ms)}")
    return None


def check_stale_symbol(
    intent, symbol: str, quote: Quote | None, now: datetime, stale_ms: float,
) -> Denied | None:
    """A symbol whose feed went quiet takes no new risk (the caller skips reducing orders)."""
    if quote is None:
        return Denied(intent, DenialReason.STALE_SYMBOL, f"no quote for {symbol} yet")
    age = quote_age_ms(quote, now)
    if age > stale_ms:
        return Denied(intent, DenialReason.STALE_SYMBOL,
                      f"last quote for {symbol} {age:.0f} ms ago > stale_quote_ms {fmt(stale_ms)}")
    return None


def _staleness(quote: Quote | None, now: datetime, max_age_ms: float) -> str:
    if quote is None:
        return "none yet"
    return f"last one {quote_age_ms(quote, now):.0f} ms old > quote_max_age_ms {fmt(max_age_ms)}"
