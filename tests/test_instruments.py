"""Instruments and money rounding: the numbers the JSON text held, exactly."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.instruments import Instrument, dec, to_cents

EURUSD = Instrument("EURUSD", "USD", lot_step=1000, price_precision=5, base_currency="EUR")
BTC = Instrument("BTCUSDT", "USDT", lot_step=0.00001, price_precision=2)


def test_dec_is_the_number_the_text_said():
    assert dec(0.1) + dec(0.2) == Decimal("0.3")
    assert dec(1.084) == Decimal("1.084") and dec(10000) == 10000 and dec("2.5") == Decimal("2.5")
    assert BTC.lot_step == Decimal("0.00001")


def test_prices_round_half_to_even_at_the_precision():
    assert EURUSD.round_price(1.084565) == 1.08456
    assert EURUSD.round_price(1.084575) == 1.08458
    assert BTC.round_price(65000.125) == 65000.12


def test_quantities_round_to_the_lot_step():
    assert (EURUSD.round_quantity(1499), EURUSD.round_quantity(1501)) == (1000, 2000)
    assert EURUSD.round_quantity(2500) == 2000  # half to even
    assert BTC.round_quantity(0.123456) == 0.12346


def test_on_lot_step_is_exact():
    assert EURUSD.on_lot_step(3000) and not EURUSD.on_lot_step(3500)
    assert BTC.on_lot_step(0.3) and BTC.on_lot_step(0.00003) and not BTC.on_lot_step(0.000035)


@given(st.integers(1, 10**6))
def test_multiples_of_the_lot_step_are_on_it(n):
    assert BTC.on_lot_step(float(dec(n) * BTC.lot_step))
    assert EURUSD.on_lot_step(EURUSD.round_quantity(n * 7.3))


def test_to_cents_is_half_even():
    assert [to_cents(Decimal(x)) for x in ("0.125", "0.135", "-0.125", "1.005")] == [
        Decimal("0.12"), Decimal("0.14"), Decimal("-0.12"), Decimal("1.00")
    ]


@pytest.mark.parametrize("field", ["lot_step", "leverage"])
@pytest.mark.parametrize("value", [0, -1])
def test_lot_step_and_leverage_must_be_positive(field, value):
    with pytest.raises(ValueError, match=field):
        Instrument("EURUSD", "USD", **{field: value})
