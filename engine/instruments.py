"""Instruments and the rounding rules at the edges of money.

Prices and quantities travel as floats on the wire; where exactness matters
(lot steps, cents) they go through ``Decimal`` built from the float's shortest
repr, which is the number the JSON text held.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import attrs


def dec(x: float | int | str | Decimal) -> Decimal:
    """The exact decimal a wire number means (``1.084`` -> ``Decimal('1.084')``)."""
    if isinstance(x, Decimal):
        return x
    if isinstance(x, float):
        return Decimal(repr(x))
    return Decimal(x)


def _positive(_inst, attribute, value) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen
class Instrument:
    """What a venue lists for a symbol.

    Attributes:
        symbol: e.g. ``EURUSD``.
        lot_step: quantities must be a multiple of it (units).
        price_precision: decimal places prices are rounded to.
        leverage: margin = notional / leverage.
        quote_currency: currency prices are quoted in (``USD`` for EURUSD).
        base_currency: currency of the quantity (``EUR`` for EURUSD), if any.
        conversion_rate: fixed quote->account rate when no pair links them.
    """

    symbol: str
    quote_currency: str
    lot_step: Decimal = attrs.field(default=Decimal(1), converter=dec, validator=_positive)
    price_precision: int = 5
    leverage: Decimal = attrs.field(default=Decimal(1), converter=dec, validator=_positive)
    base_currency: str | None = None
    conversion_rate: Decimal | None = attrs.field(
        default=None, converter=attrs.converters.optional(dec)
    )
    _tick: Decimal = attrs.field(init=False, repr=False, eq=False)
    _scale: float = attrs.field(init=False, repr=False, eq=False)
    _rounded_qty: dict = attrs.field(init=False, repr=False, eq=False, factory=dict)

    @_tick.default
    def _tick_default(self) -> Decimal:
        return Decimal(1).scaleb(-self.price_precision)

    @_scale.default
    def _scale_default(self) -> float:
        return 10.0 ** self.price_precision

    def round_price(self, price: float) -> float:
        """``price`` rounded half-to-even to the instrument's precision.

        Float ``round`` is exact except near a decimal tie, where the float's
        binary value may sit on either side of it; only there is Decimal asked.
        """
        r = round(price, self.price_precision)
        if abs(abs(price - r) * self._scale - 0.5) > 1e-6:
            return r + 0.0
        return float(dec(price).quantize(self._tick, rounding=ROUND_HALF_EVEN))

    def round_quantity(self, qty: float) -> float:
        """``qty`` rounded half-to-even to a multiple of the lot step (memoized:
        strategies send the same few quantities over and over)."""
        cache = self._rounded_qty
        r = cache.get(qty)
        if r is None:
            steps = (dec(qty) / self.lot_step).to_integral_value(rounding=ROUND_HALF_EVEN)
            r = float(steps * self.lot_step)
            if len(cache) < 4096:
                cache[qty] = r
        return r

    def on_lot_step(self, qty: float | Decimal) -> bool:
        """True if ``qty`` is a whole multiple of the lot step."""
        if type(qty) is float:
            return self.round_quantity(qty) == qty
        return dec(qty) % self.lot_step == 0


CENT = Decimal("0.01")


def to_cents(x: Decimal) -> Decimal:
    """Round an amount to 0.01, half to even (how deals are booked)."""
    return x.quantize(CENT, rounding=ROUND_HALF_EVEN)
