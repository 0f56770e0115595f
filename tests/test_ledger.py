"""The account ledger of PROTOCOL 5.3: netting, deals, cents, conversion."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.enums import PositionSide, Side
from engine.errors import UsageError
from engine.events import Quote
from engine.instruments import Instrument
from engine.ledger import Ledger

T0 = datetime(2024, 1, 2, 12, tzinfo=timezone.utc)
T1 = datetime(2024, 1, 2, 13, tzinfo=timezone.utc)

INSTRUMENTS = {
    "EURUSD": Instrument("EURUSD", "USD", leverage=30, base_currency="EUR"),
    "USDJPY": Instrument("USDJPY", "JPY", leverage=20, base_currency="USD"),
    "EURGBP": Instrument("EURGBP", "GBP", base_currency="EUR"),
    "GBPUSD": Instrument("GBPUSD", "USD", base_currency="GBP"),
    "XAUCHF": Instrument("XAUCHF", "CHF", conversion_rate=1.1),
    "XAUSEK": Instrument("XAUSEK", "SEK"),
}


def make(balance=10_000, quotes=None):
    quotes = {} if quotes is None else quotes
    led = Ledger("acc", "USD", D(balance), INSTRUMENTS, quotes)
    pids = (f"p{i}" for i in itertools.count(1))
    dids = (f"d{i}" for i in itertools.count(1))

    def fill(symbol, side, qty, price, *, ts=T0, **kw):
        return led.apply_fill(
            order_id="o", symbol=symbol, side=side, quantity=D(str(qty)), price=D(str(price)),
            ts=ts, new_position_id=lambda: next(pids), new_deal_id=lambda: next(dids), **kw,
        )

    return led, quotes, fill


def q(symbol, bid, ask, ts=T0):
    return Quote(symbol=symbol, bid=bid, ask=ask, ts=ts)


def test_grow_averages_open_price_unrounded():
    led, _, fill = make()
    fill("EURUSD", Side.BUY, 10_000, "1.1000")
    fill("EURUSD", Side.BUY, 20_000, "1.1003")
    pos = led.positions["EURUSD"]
    assert pos.quantity == 30_000 and pos.side is PositionSide.LONG
    assert pos.open_price == (D("1.1000") * 10_000 + D("1.1003") * 20_000) / 30_000
    assert pos.open_price == D("1.1002")


def test_reduce_keeps_open_price_and_books_realized():
    led, _, fill = make()
    fill("EURUSD", Side.BUY, 10_000, "1.1000")
    (deal,) = fill("EURUSD", Side.SELL, 4_000, "1.1010")
    assert deal.realized_pnl == D("4.00") and deal.position_id == "p1"
    assert led.positions["EURUSD"].open_price == D("1.1000")
    assert led.positions["EURUSD"].quantity == 6_000
    assert led.balance == D("10004.00")


def test_close_makes_closed_record_with_max_quantity_and_avg_close():
    led, _, fill = make()
    fill("EURUSD", Side.SELL, 10_000, "1.2000", ts=T0)
    fill("EURUSD", Side.BUY, 4_000, "1.1990", ts=T0)
    fill("EURUSD", Side.BUY, 6_000, "1.1980", ts=T1)
    assert "EURUSD" not in led.positions
    (rec,) = led.closed
    assert rec.side is PositionSide.SHORT and rec.quantity == 10_000
    assert rec.close_price == D("1.1984")
    assert rec.realized_pnl == D("4.00") + D("12.00")
    assert rec.closed_at == T1 and rec.opened_at == T0
    ev = rec.to_event()
    assert ev.close_price == 1.1984 and ev.realized_pnl == 16.0


def test_flip_is_two_deals_old_id_closed_new_opened():
    led, _, fill = make()
    fill("EURUSD", Side.BUY, 10_000, "1.1000")
    d1, d2 = fill("EURUSD", Side.SELL, 25_000, "1.1010", commission_per_million=D(20))
    assert (d1.position_id, d1.quantity, d1.realized_pnl) == ("p1", 10_000, D("10.00"))
    assert (d2.position_id, d2.quantity, d2.realized_pnl) == ("p2", 15_000, 0)
    assert d1.commission == D("0.22") and d2.commission == D("0.33")
    pos = led.positions["EURUSD"]
    assert (pos.position_id, pos.side, pos.quantity, pos.open_price) == (
        "p2", PositionSide.SHORT, 15_000, D("1.1010"))
    assert [c.position_id for c in led.closed] == ["p1"]


def test_a_given_commission_is_split_over_a_flip_by_quantity():
    led, _, fill = make()
    fill("EURUSD", Side.BUY, 10_000, "1.1", commission=D("0.22"))
    d1, d2 = fill("EURUSD", Side.SELL, 25_000, "1.1", commission=D("0.55"))
    # 10,000 of 25,000 closed: 0.22 of 0.55 (the venue's per-deal split), the rest opens
    assert (d1.commission, d2.commission) == (D("0.22"), D("0.33"))
    assert led.balance == D(10_000) - D("0.77") and led.commission_paid == D("0.77")


@pytest.mark.parametrize(
    "qty, price, cpm, expected",
    [
        (1_000, "1.25", 20, D("0.02")),   # 0.025 -> half to even 0.02
        (3_000, "1.25", 20, D("0.08")),   # 0.075 -> 0.08
        (10_000, "1.1002", 20, D("0.22")),
    ],
)
def test_commission_per_million_rounds_half_even(qty, price, cpm, expected):
    _, _, fill = make()
    (deal,) = fill("EURUSD", Side.BUY, qty, price, commission_per_million=D(cpm))
    assert deal.commission == expected


def test_realized_rounds_half_even():
    _, _, fill = make()
    fill("EURUSD", Side.BUY, 1, "1.00000")
    (deal,) = fill("EURUSD", Side.SELL, 1, "1.00005")  # 0.00005 -> 0.00
    assert deal.realized_pnl == D("0.00")
    _, _, fill = make()
    fill("EURUSD", Side.BUY, 3, "1.000")
    (deal,) = fill("EURUSD", Side.SELL, 3, "1.005")  # 0.015 -> 0.02
    assert deal.realized_pnl == D("0.02")


def test_usdjpy_converted_at_the_mid_of_the_moment():
    led, quotes, fill = make()
    quotes["USDJPY"] = q("USDJPY", 150.00, 150.02)
    fill("USDJPY", Side.BUY, 10_000, "150.02", commission_per_million=D(20))
    quotes["USDJPY"] = q("USDJPY", 151.00, 151.02)
    (deal,) = fill("USDJPY", Side.SELL, 10_000, "151.00")
    # 0.98 JPY x 10,000 = 9,800 JPY / 151.01 = 64.896...
    assert deal.realized_pnl == D("64.90")
    assert led.rate("USDJPY") == 1 / D("151.01")
    assert led.deals[0].commission == D("0.20")  # 1,500,200 JPY x 20 / 1e6 = 30.004 JPY / 150.01


def test_cross_rate_uses_the_linking_pair_then_fixed_rate():
    led, quotes, _ = make()
    quotes["GBPUSD"] = q("GBPUSD", 1.25, 1.27)
    assert led.rate("EURGBP") == D("1.26")
    assert led.rate("EURUSD") == 1
    assert led.rate("XAUCHF") == D("1.1")
    with pytest.raises(UsageError, match="XAUSEK"):
        led.rate("XAUSEK")
    led2, _, _ = make()
    with pytest.raises(UsageError, match="GBPUSD"):
        led2.rate("EURGBP")


def test_marks_long_at_bid_short_at_ask_and_account_figures():
    led, quotes, fill = make()
    fill("EURUSD", Side.BUY, 30_000, "1.1000")
    quotes["EURUSD"] = q("EURUSD", 1.1010, 1.1012)
    assert led.unrealized() == D("30.0000")
    assert led.equity() == D("10030.0000")
    assert led.margin() == D("1.1010") * 30_000 / 30
    assert led.margin_level() == led.equity() / led.margin() * 100
    pos_ev = led.portfolio(T0).positions[0]
    assert pos_ev.current_price == 1.1010 and pos_ev.unrealized_pnl == 30.0
    fill("EURUSD", Side.SELL, 60_000, "1.1010")
    assert led.current_price(led.positions["EURUSD"]) == D("1.1012")
    m = led.metrics(T0)
    assert m.unrealized_pnl == pytest.approx(-6.0) and m.realized_pnl == 30.0


def test_no_margin_means_no_margin_level():
    led, _, _ = make()
    assert led.margin_level() is None and led.metrics(T0).margin_level is None


fills = st.lists(
    st.tuples(
        st.sampled_from([Side.BUY, Side.SELL]),
        st.integers(1, 50).map(lambda n: n * 1000),
        st.integers(9_000, 11_000).map(lambda n: D(n) / 10_000),
        st.sampled_from([0, 7, 20]),
    ),
    min_size=1, max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(fills, st.integers(9_000, 11_000))
def test_random_fill_sequences_keep_the_books_straight(seq, mark):
    led, quotes, fill = make()
    net = D(0)
    for side, qty, price, cpm in seq:
        before = led.positions.get("EURUSD")
        before_signed = before.signed_quantity if before else D(0)
        deals = fill("EURUSD", side, qty, price, commission_per_million=D(cpm))
        net += side.sign * qty
        flipped = before_signed * net < 0
        assert len(deals) == (2 if flipped else 1)
        assert sum(d.quantity for d in deals) == qty
        for d in deals:
            assert d.commission == d.commission.quantize(D("0.01"))
            assert d.realized_pnl == d.realized_pnl.quantize(D("0.01"))
    pos = led.positions.get("EURUSD")
    assert (pos.signed_quantity if pos else D(0)) == net
    assert led.balance == 10_000 + sum(d.realized_pnl - d.commission for d in led.deals)
    assert led.realized_pnl == sum(d.realized_pnl for d in led.deals)
    assert sum(c.realized_pnl for c in led.closed) + (pos.realized_pnl if pos else 0) == (
        led.realized_pnl)
    quotes["EURUSD"] = q("EURUSD", mark / 10_000, (mark + 2) / 10_000)
    assert led.equity() == led.balance + led.unrealized()
