"""The venue's rules as pure functions: settings, request checks, liquidity,
and the price thresholds that make a symbol need matching.

Kept apart from ``matching`` (the stateful engine) so each rule of PROTOCOL
sections 6 and 7 reads in one place and none of them touches engine state.
A check that fails raises ``Reject``, which the engine turns into an
``error`` event.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import attrs

from adapters.sim.accounts import Order
from engine import events
from engine import intents as it
from engine.errors import UsageError
from engine.enums import ErrorCode, OrderType, PositionSide, Reason, Side, TimeInForce
from engine.instruments import Instrument, dec
from engine.ledger import ONE as _ONE
from engine.ledger import ZERO as _ZERO
from engine.ledger import OpenPosition, fdec

_UTC = timezone.utc
_INF = float("inf")
_MARKET, _LIMIT = OrderType.MARKET, OrderType.LIMIT
_STOP, _STOP_LIMIT = OrderType.STOP, OrderType.STOP_LIMIT
_PRICED = (_LIMIT, _STOP_LIMIT)
_STOPPED = (_STOP, _STOP_LIMIT)
_IOC, _FOK = TimeInForce.IOC, TimeInForce.FOK
_BUY, _LONG = Side.BUY, PositionSide.LONG
_INVALID_ORDER = ErrorCode.INVALID_ORDER


@attrs.frozen
class SyntheticDepth:
    """Depth made from each quote: ``levels`` per side, ``size`` units each
    (the first level takes the quote's bidSize/askSize when given), prices
    ``spacing_ticks`` ticks (of the instrument's price precision) apart."""

    levels: int = 5
    size: Decimal = attrs.field(default=Decimal(1_000_000), converter=dec)
    spacing_ticks: int = 1


@attrs.frozen
class VenueConfig:
    """Settings of the simulated venue (PROTOCOL section 7).

    Attributes:
        latency_ms: a request arrives at send time + this.
        commission_per_million: commission per million units of notional
            (quantity x fill price, converted to the account currency).
        stop_out_level: margin level (percent) under which positions are
            closed, largest loss first; None (default) turns stop-out off.
        synthetic_depth: levels made from quotes for symbols without recorded
            depth; None: top of book only.
    """

    latency_ms: float = 0
    commission_per_million: Decimal = attrs.field(default=Decimal(0), converter=dec)
    stop_out_level: float | None = None
    synthetic_depth: SyntheticDepth | None = None


class Reject(Exception):
    """A request refused when it arrives: the engine answers an ``error``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def check_create(c: it.CreateOrder, inst: Instrument, quote: events.Quote | None):
    """INVALID_ORDER rules of section 6 for a createOrder.

    Prices the type does not use are dropped. Stop-loss/take-profit must lie
    beyond the price the resulting position starts from: the limit (or stop)
    price, or for MARKET the side the position is valued at (a LONG's bid, a
    SHORT's ask), so that neither triggers at once.

    Returns:
        (quantity, price, stop_price, time_in_force)
    """
    bad = _INVALID_ORDER
    x = c.quantity
    qty = fdec(x) if type(x) is float else dec(x)
    if not qty.is_finite() or qty <= _ZERO or qty % inst.lot_step:
        raise Reject(bad, f"quantity {c.quantity} must be > 0 and a multiple of {inst.lot_step}")
    t, price, stop = c.type, c.price, c.stop_price
    sl, tp = c.stop_loss, c.take_profit
    if t is _MARKET and sl is None and tp is None:  # the common case, short: same answers
        tif = c.time_in_force
        if tif is None or tif is _IOC or tif is _FOK:
            return qty, None, None, _IOC if tif is None else tif
        raise Reject(bad, f"a MARKET order takes IOC or FOK, not {tif}")
    if t is _MARKET or t is _STOP:
        price = None
    if t is _MARKET or t is _LIMIT:
        stop = None
    if t in _PRICED and price is None:
        raise Reject(bad, f"a {t} order needs a price")
    if t in _STOPPED and stop is None:
        raise Reject(bad, f"a {t} order needs a stopPrice")
    if t is not _MARKET or sl is not None or tp is not None:
        for name, v in (("price", price), ("stopPrice", stop), ("stopLoss", sl), ("takeProfit", tp)):
            if v is not None and not v > 0:
                raise Reject(bad, f"{name} must be > 0, got {v}")
    tif = c.effective_tif
    if t is _MARKET and tif is not TimeInForce.IOC and tif is not TimeInForce.FOK:
        raise Reject(bad, f"a MARKET order takes IOC or FOK, not {tif}")
    if sl is not None or tp is not None:
        if t is _MARKET:
            ref = None if quote is None else (quote.bid if c.side is Side.BUY else quote.ask)
        else:
            ref = price if price is not None else stop
        if ref is not None:
            s = c.side.sign
            if sl is not None and not (ref - sl) * s > 0:
                raise Reject(bad, f"stopLoss {sl} is on the wrong side of {ref}")
            if tp is not None and not (tp - ref) * s > 0:
                raise Reject(bad, f"takeProfit {tp} is on the wrong side of {ref}")
    return qty, price, stop, tif


def check_amend(order: Order, a: it.AmendOrder, inst: Instrument) -> Decimal:
    """NOT_AMENDABLE rules of section 6; returns the new quantity."""
    na = ErrorCode.NOT_AMENDABLE
    if not order.working:
        raise Reject(na, f"order {order.order_id} is {order.status}")
    qty = order.quantity
    if a.quantity is not None:
        qty = dec(a.quantity)
        if not qty.is_finite() or qty <= order.filled or qty % inst.lot_step:
            raise Reject(
                na, f"quantity must be > filled ({order.filled}) and a multiple of {inst.lot_step}"
            )
    if a.price is not None and (order.type not in _PRICED or not a.price > 0):
        raise Reject(na, f"price {a.price} is not amendable on this {order.type} order")
    if a.stop_price is not None and (order.type not in _STOPPED or not a.stop_price > 0):
        raise Reject(na, f"stopPrice {a.stop_price} is not amendable on this {order.type} order")
    return qty


def check_close(c: it.ClosePosition, pos: OpenPosition, inst: Instrument) -> Decimal:
    """INVALID_ORDER rules of a closePosition; returns the quantity to close."""
    if c.quantity is None:
        return pos.quantity
    qty = dec(c.quantity)
    if not qty.is_finite() or qty <= 0 or qty > pos.quantity or qty % inst.lot_step:
        raise Reject(
            ErrorCode.INVALID_ORDER,
            f"quantity {c.quantity} must be > 0, <= {pos.quantity} and a multiple of {inst.lot_step}",
        )
    return qty


def sltp_hit(side: PositionSide, sl, tp, bid: float, ask: float) -> Reason | None:
    """Which level of a position the price crosses: a LONG's on the bid, a SHORT's on the ask."""
    if side is PositionSide.LONG:
        if sl is not None and bid <= sl:
            return Reason.STOP_LOSS
        if tp is not None and bid >= tp:
            return Reason.TAKE_PROFIT
    else:
        if sl is not None and ask >= sl:
            return Reason.STOP_LOSS
        if tp is not None and ask <= tp:
            return Reason.TAKE_PROFIT
    return None


def next_midnight(now: datetime) -> datetime:
    """00:00 UTC after ``now``: when a DAY order placed at ``now`` expires."""
    d = now.astimezone(_UTC)
    return datetime(d.year, d.month, d.day, tzinfo=_UTC) + timedelta(days=1)


def levels(
    side: Side,
    quote: events.Quote,
    depth: events.Depth | None,
    synthetic: SyntheticDepth | None,
    inst: Instrument,
):
    """The liquidity ``side`` takes, best first, as (price, size or None).

    Recorded depth wins; else synthetic depth when configured; else the top
    of book, unlimited unless the quote gives a size.
    """
    buy = side is Side.BUY
    if depth is not None:
        return depth.asks if buy else depth.bids
    top, size = (quote.ask, quote.ask_size) if buy else (quote.bid, quote.bid_size)
    if synthetic is None:
        return ((top, size),)
    step = synthetic.spacing_ticks * 10.0 ** -inst.price_precision
    sign = 1 if buy else -1
    return tuple(
        (round(top + sign * i * step, inst.price_precision),
         size if i == 0 and size is not None else synthetic.size)
        for i in range(synthetic.levels)
    )


class Watch:
    """Why a symbol's market events need work: price thresholds and a flag.

    A quote needs matching when bid <= bid_le (sell stops, a LONG's
    stop-loss), bid >= bid_ge (sell limits, a LONG's take-profit), ask >=
    ask_ge (buy stops, a SHORT's stop-loss) or ask <= ask_le (buy limits, a
    SHORT's take-profit); and always while a MARKET order waits for its quote
    or stop-out may act.
    """

    __slots__ = ("bid_le", "bid_ge", "ask_ge", "ask_le", "always")

    def __init__(self) -> None:
        self.bid_le = -_INF
        self.bid_ge = _INF
        self.ask_ge = _INF
        self.ask_le = -_INF
        self.always = False

    def hit(self, bid: float, ask: float) -> bool:
        return (
            self.always or bid <= self.bid_le or bid >= self.bid_ge
            or ask >= self.ask_ge or ask <= self.ask_le
        )

    def add_order(self, o: Order) -> None:
        buy = o.side is Side.BUY
        if o.type is _MARKET:
            self.always = True
        elif o.stop_pending:
            if buy:
                self.ask_ge = min(self.ask_ge, o.stop_price)
            else:
                self.bid_le = max(self.bid_le, o.stop_price)
        elif buy:
            self.ask_le = max(self.ask_le, o.price)
        else:
            self.bid_ge = min(self.bid_ge, o.price)

    def add_position(self, pos: OpenPosition) -> None:
        long = pos.side is PositionSide.LONG
        if pos.stop_loss is not None:
            if long:
                self.bid_le = max(self.bid_le, pos.stop_loss)
            else:
                self.ask_ge = min(self.ask_ge, pos.stop_loss)
        if pos.take_profit is not None:
            if long:
                self.bid_ge = min(self.bid_ge, pos.take_profit)
            else:
                self.ask_le = max(self.ask_le, pos.take_profit)


def margin_ok(ledger, instruments: Mapping[str, Instrument], symbol: str, side: Side,
              qty: Decimal, price: Decimal) -> bool | None:
    """Free margin covers the exposure an order adds; a reducing order always passes.

    None when it cannot be told yet: no quote converts the symbol's currency."""
    pos = ledger.positions.get(symbol)
    if pos is not None and (pos.side is _LONG) is not (side is _BUY):
        qty -= pos.quantity
        if qty <= _ZERO:
            return True
    required = qty * price
    try:
        rate = ledger.rate(symbol)
    except UsageError:  # no quote yet of the pair that converts it: decided at the fill
        return None
    if rate is not _ONE:  # x * 1 is x, digit for digit
        required = required * rate
    return ledger.free_margin() >= required / instruments[symbol].leverage
