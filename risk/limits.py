"""The risk limits: the YAML ``risk:`` section as one frozen value.

Every key is optional; a limit left out is not checked. The config loader
structures the section into this class with cattrs (unknown keys rejected),
and the validators here reject nonsense values with a ``ValueError`` whose
message starts with the key, which the loader turns into a ``ConfigError``.
"""

from __future__ import annotations

import math

import attrs


def _positive(_inst, attribute, value) -> None:
    """None, or a finite number > 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{attribute.name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _count(_inst, attribute, value) -> None:
    """None, or a whole number >= 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{attribute.name} must be a whole number, got {value!r}")
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value!r}")


def _flag(_inst, attribute, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be true or false, got {value!r}")


@attrs.frozen
class RiskLimits:
    """What the risk gate enforces. Amounts are in the account currency.

    Attributes:
        max_order_qty: units per order.
        max_order_notional: quantity x price x rate per order.
        max_position: |net position| per symbol, working orders on the
            order's side counted as if filled.
        max_gross_exposure: sum over symbols of the worst-case |position|
            (working orders counted) x price x rate.
        max_open_orders: working orders in total.
        max_orders_per_s, order_burst: token bucket for new orders (burst
            defaults to ``max(1, ceil(rate))``); over it, denied, not queued.
        max_amends_per_s, amend_burst: the same for amendments.
        price_collar_pct: a LIMIT/STOP price further than this % from the
            fresh mid is denied.
        quote_max_age_ms: a quote older than this is not fresh; MARKET
            orders and the collar need a fresh one.
        duplicate_window_ms: the same order (side, symbol, quantity, type,
            prices) approved again within this window is denied.
        daily_loss_limit: equity below the day's starting equity (00:00 UTC)
            minus this halts trading.
        max_drawdown: equity below its peak minus this halts trading.
        flatten_on_halt: on such a halt, also cancel every working order and
            close every position.
        stale_quote_ms: a symbol without a quote for this long takes no new
            risk (reducing orders still pass; other symbols trade on).
        kill_switch: start HALTED.
    """

    max_order_qty: float | None = attrs.field(default=None, validator=_positive)
    max_order_notional: float | None = attrs.field(default=None, validator=_positive)
    max_position: float | None = attrs.field(default=None, validator=_positive)
    max_gross_exposure: float | None = attrs.field(default=None, validator=_positive)
    max_open_orders: int | None = attrs.field(default=None, validator=_count)
    max_orders_per_s: float | None = attrs.field(default=None, validator=_positive)
    order_burst: int | None = attrs.field(default=None, validator=_count)
    max_amends_per_s: float | None = attrs.field(default=None, validator=_positive)
    amend_burst: int | None = attrs.field(default=None, validator=_count)
    price_collar_pct: float | None = attrs.field(default=None, validator=_positive)
    quote_max_age_ms: float = attrs.field(default=10_000, validator=_positive)
    duplicate_window_ms: float | None = attrs.field(default=None, validator=_positive)
    daily_loss_limit: float | None = attrs.field(default=None, validator=_positive)
    max_drawdown: float | None = attrs.field(default=None, validator=_positive)
    flatten_on_halt: bool = attrs.field(default=False, validator=_flag)
    stale_quote_ms: float | None = attrs.field(default=None, validator=_positive)
    kill_switch: bool = attrs.field(default=False, validator=_flag)

    def __attrs_post_init__(self) -> None:
        if self.quote_max_age_ms is None:
            raise ValueError("quote_max_age_ms must be a finite number > 0, got None")
        if self.order_burst is not None and self.max_orders_per_s is None:
            raise ValueError("order_burst needs max_orders_per_s (the rate it refills at)")
        if self.amend_burst is not None and self.max_amends_per_s is None:
            raise ValueError("amend_burst needs max_amends_per_s (the rate it refills at)")
