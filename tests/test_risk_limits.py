"""RiskLimits: the YAML ``risk:`` section, structured and validated."""

from __future__ import annotations

import attrs
import cattrs
import pytest

from risk import RiskLimits


def test_everything_is_optional():
    limits = RiskLimits()
    assert limits.max_order_qty is None
    assert limits.quote_max_age_ms == 10_000
    assert limits.flatten_on_halt is False and limits.kill_switch is False


def test_structures_from_a_yaml_mapping():
    converter = cattrs.Converter(forbid_extra_keys=True)
    section = {"max_order_qty": 100000, "max_position": 200000, "max_orders_per_s": 5,
               "daily_loss_limit": 500, "max_open_orders": 10, "flatten_on_halt": True}
    limits = converter.structure(section, RiskLimits)
    assert limits == RiskLimits(max_order_qty=100000.0, max_position=200000.0, max_orders_per_s=5.0,
                                daily_loss_limit=500.0, max_open_orders=10, flatten_on_halt=True)
    with pytest.raises(cattrs.ClassValidationError):
        converter.structure({"max_order_size": 1}, RiskLimits)
    with pytest.raises(cattrs.ClassValidationError):
        converter.structure({"max_order_qty": -1}, RiskLimits)


_FIELDS = attrs.fields(attrs.resolve_types(RiskLimits))  # types, whoever resolved them first
NUMBERS = [f.name for f in _FIELDS if f.type in (float | None, float)]
COUNTS = [f.name for f in _FIELDS if f.type == int | None]
assert len(NUMBERS) == 12 and len(COUNTS) == 3


@pytest.mark.parametrize("key", NUMBERS)
@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "5", True])
def test_numbers_must_be_positive_and_finite(key, value):
    kw = {key: value}
    with pytest.raises(ValueError, match=f"^{key} must be"):
        RiskLimits(**kw)


@pytest.mark.parametrize("key", COUNTS)
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_counts_must_be_whole_and_at_least_one(key, value):
    rates = {"order_burst": {"max_orders_per_s": 1.0}, "amend_burst": {"max_amends_per_s": 1.0}}
    with pytest.raises(ValueError, match=f"^{key} must be"):
        RiskLimits(**{key: value, **rates.get(key, {})})


def test_flags_must_be_booleans():
    with pytest.raises(ValueError, match="^kill_switch must be true or false"):
        RiskLimits(kill_switch="yes")


@pytest.mark.parametrize("burst, rate", [("order_burst", "max_orders_per_s"),
                                         ("amend_burst", "max_amends_per_s")])
def test_burst_needs_its_rate(burst, rate):
    with pytest.raises(ValueError, match=f"^{burst} needs {rate}"):
        RiskLimits(**{burst: 3})
    assert getattr(RiskLimits(**{burst: 3, rate: 1.5}), burst) == 3
