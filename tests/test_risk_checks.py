"""Each check of the risk gate, once denying and once passing, through the gate itself."""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.enums import OrderType, Side
from engine.intents import AmendOrder, ClosePosition, CreateOrder
from risk import Approved, DenialReason, Denied
from risk.checks import check_max_position, reduces, symbol_exposure
from tests.risk_fakes import ACCOUNT, T0, make_gate

BUY, SELL = Side.BUY, Side.SELL
MKT, LMT, STP, STL = OrderType.MARKET, OrderType.LIMIT, OrderType.STOP, OrderType.STOP_LIMIT
R = DenialReason


def order(side=BUY, qty=10_000, symbol="EURUSD", type=MKT, price=None, stop=None):
    return CreateOrder(ACCOUNT, symbol, side, qty, type, price=price, stop_price=stop)


def held(symbol, qty):
    return lambda v: v.hold(symbol, qty)


def working(symbol, side, qty, **kw):
    return lambda v: v.work(symbol, side, qty, **kw)


def both(*setups):
    def run(v):
        for s in setups:
            s(v)
    return run


def quote_age(symbol, ms):
    return lambda v: v.age_quote(symbol, ms)


def no_quote(symbol):
    return lambda v: v.quotes.pop(symbol)


# (id, limits, setup, intent, expected reason or None for approved, message fragment)
CASES = [
    # instrument known
    ("unknown-instrument", {}, None, order(symbol="XAUUSD"), R.UNKNOWN_INSTRUMENT, "XAUUSD"),
    ("known-instrument", {}, None, order(symbol="GBPUSD"), None, ""),
    # quantity > 0
    ("zero-qty", {}, None, order(qty=0), R.INVALID_QUANTITY, "quantity 0"),
    ("negative-qty", {}, None, order(qty=-1000), R.INVALID_QUANTITY, "-1000"),
    ("nan-qty", {}, None, order(qty=float("nan")), R.INVALID_QUANTITY, "nan"),
    ("positive-qty", {}, None, order(qty=1000), None, ""),
    # lot step
    ("off-lot-step", {}, None, order(qty=1500), R.LOT_STEP, "quantity 1500 is not a multiple of lot_step 1000"),
    ("on-lot-step", {}, None, order(qty=2000), None, ""),
    # prices the type needs
    ("limit-without-price", {}, None, order(type=LMT), R.INVALID_PRICE, "needs price"),
    ("stop-limit-without-stop", {}, None, order(type=STL, price=1.09), R.INVALID_PRICE, "needs stop_price"),
    ("negative-price", {}, None, order(type=LMT, price=-1.0), R.INVALID_PRICE, "price -1.0"),
    ("stop-with-stop-price", {}, None, order(type=STP, stop=1.09), None, ""),
    # max order qty
    ("max-order-qty", {"max_order_qty": 100_000}, None, order(qty=150_000), R.MAX_ORDER_QTY,
     "quantity 150000 > max_order_qty 100000"),
    ("max-order-qty-at-limit", {"max_order_qty": 100_000}, None, order(qty=100_000), None, ""),
    # max order notional: limit price, else ask for BUY / bid for SELL, times the rate
    ("notional-buy-at-ask", {"max_order_notional": 108_410}, None, order(qty=100_000), R.MAX_ORDER_NOTIONAL,
     "notional 108420.00"),
    ("notional-sell-at-bid", {"max_order_notional": 108_410}, None, order(SELL, 100_000), None, ""),
    ("notional-limit-price", {"max_order_notional": 100_000}, None,
     order(qty=100_000, type=LMT, price=1.0001), R.MAX_ORDER_NOTIONAL, "price 1.0001"),
    ("notional-limit-price-ok", {"max_order_notional": 100_000}, None,
     order(qty=100_000, type=LMT, price=0.99), None, ""),
    ("notional-converted", {"max_order_notional": 99_000}, None, order(qty=100_000, symbol="USDJPY"),
     R.MAX_ORDER_NOTIONAL, "100006.67"),
    ("notional-converted-ok", {"max_order_notional": 100_010}, None, order(qty=100_000, symbol="USDJPY"), None, ""),
    ("notional-no-price", {"max_order_notional": 1e9}, no_quote("EURUSD"),
     order(type=LMT, price=None), R.INVALID_PRICE, ""),
    # max position, working orders of the order's side counted as filled
    ("position-with-working", {"max_position": 200_000},
     both(held("EURUSD", 150_000), working("EURUSD", BUY, 50_000, price=1.08)),
     order(qty=10_000), R.MAX_POSITION, "position would reach 210000"),
    ("position-at-limit", {"max_position": 200_000},
     both(held("EURUSD", 150_000), working("EURUSD", BUY, 40_000, price=1.08)), order(qty=10_000), None, ""),
    ("position-short-side", {"max_position": 200_000},
     both(held("EURUSD", -150_000), working("EURUSD", SELL, 50_000, price=1.09)),
     order(SELL, 1000), R.MAX_POSITION, "-201000"),
    ("position-reducing-passes", {"max_position": 200_000}, held("EURUSD", 500_000), order(SELL, 100_000), None, ""),
    ("position-other-side-ignored", {"max_position": 200_000},
     both(held("EURUSD", 150_000), working("EURUSD", SELL, 500_000, price=1.09)), order(qty=50_000), None, ""),
    # max gross exposure: sum of |worst-case position| x mid x rate
    ("gross", {"max_gross_exposure": 300_000},
     both(held("EURUSD", 200_000), held("GBPUSD", -50_000)), order(qty=30_000),
     R.MAX_GROSS_EXPOSURE, "gross exposure would reach"),
    ("gross-ok", {"max_gross_exposure": 300_000},
     both(held("EURUSD", 200_000), held("GBPUSD", -50_000)), order(qty=1000), None, ""),
    ("gross-counts-working", {"max_gross_exposure": 300_000},
     both(held("EURUSD", 200_000), working("GBPUSD", SELL, 65_000, price=1.3)), order(SELL, 1000, "USDJPY"),
     R.MAX_GROSS_EXPOSURE, ""),
    ("gross-reducing-passes", {"max_gross_exposure": 100_000}, held("EURUSD", 200_000), order(SELL, 50_000), None, ""),
    ("gross-unvaluable", {"max_gross_exposure": 1e9}, both(held("GBPUSD", 1000), no_quote("GBPUSD")),
     order(qty=1000), R.NO_FRESH_QUOTE, "no quote for GBPUSD"),
    # max open orders
    ("open-orders", {"max_open_orders": 2},
     both(working("EURUSD", BUY, 1000, price=1.0), working("GBPUSD", SELL, 1000, price=2.0)),
     order(), R.MAX_OPEN_ORDERS, "2 working orders already"),
    ("open-orders-ok", {"max_open_orders": 2}, working("EURUSD", BUY, 1000, price=1.0), order(), None, ""),
    # price collar vs the fresh mid (1.0841)
    ("collar-limit", {"price_collar_pct": 1.0}, None, order(type=LMT, price=1.10), R.PRICE_COLLAR,
     "price 1.1 is 1.47% from mid 1.0841"),
    ("collar-limit-ok", {"price_collar_pct": 1.0}, None, order(type=LMT, price=1.09), None, ""),
    ("collar-stop", {"price_collar_pct": 1.0}, None, order(SELL, type=STP, stop=1.05), R.PRICE_COLLAR, "stop_price"),
    ("collar-stop-limit-stop", {"price_collar_pct": 1.0}, None, order(type=STL, price=1.085, stop=1.2),
     R.PRICE_COLLAR, "stop_price 1.2"),
    ("collar-stop-ok", {"price_collar_pct": 1.0}, None, order(SELL, type=STP, stop=1.08), None, ""),
    ("collar-stale-quote", {"price_collar_pct": 1.0}, quote_age("EURUSD", 20_000),
     order(type=LMT, price=1.084), R.NO_FRESH_QUOTE, "price_collar_pct needs a fresh quote"),
    ("collar-market-unaffected", {"price_collar_pct": 0.001}, None, order(), None, ""),
    # a MARKET order needs a fresh quote (quote_max_age_ms, default 10 s)
    ("market-old-quote", {}, quote_age("EURUSD", 10_001), order(), R.NO_FRESH_QUOTE,
     "last one 10001 ms old > quote_max_age_ms 10000"),
    ("market-no-quote", {}, no_quote("EURUSD"), order(), R.NO_FRESH_QUOTE, "none yet"),
    ("market-fresh-quote", {}, quote_age("EURUSD", 10_000), order(), None, ""),
    ("market-custom-age", {"quote_max_age_ms": 100}, quote_age("EURUSD", 200), order(), R.NO_FRESH_QUOTE, ""),
    ("limit-old-quote-ok", {}, quote_age("EURUSD", 60_000), order(type=LMT, price=1.08), None, ""),
    # stale symbol: blocked for new risk, reducing orders and other symbols trade on
    ("stale-symbol", {"stale_quote_ms": 2000}, quote_age("EURUSD", 3000), order(type=LMT, price=1.08),
     R.STALE_SYMBOL, "last quote for EURUSD 3000 ms ago > stale_quote_ms 2000"),
    ("stale-never-quoted", {"stale_quote_ms": 2000}, no_quote("EURUSD"), order(type=LMT, price=1.08),
     R.STALE_SYMBOL, "no quote for EURUSD yet"),
    ("stale-reducing-ok", {"stale_quote_ms": 2000}, both(quote_age("EURUSD", 3000), held("EURUSD", 50_000)),
     order(SELL, 20_000, type=LMT, price=1.09), None, ""),
    ("stale-other-symbol-ok", {"stale_quote_ms": 2000}, quote_age("EURUSD", 3000), order(symbol="GBPUSD"), None, ""),
    ("fresh-symbol-ok", {"stale_quote_ms": 2000}, quote_age("EURUSD", 1000), order(), None, ""),
]


@pytest.mark.parametrize(
    "limits, setup, intent, reason, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_create_order_check(limits, setup, intent, reason, fragment):
    gate, view = make_gate(**limits)
    if setup is not None:
        setup(view)
    decision = gate.check(intent, T0)
    if reason is None:
        assert decision == Approved(intent), decision
    else:
        assert type(decision) is Denied, decision
        assert decision.reason is reason, decision
        assert decision.intent is intent
        assert fragment in decision.message


def test_order_rate_denies_over_burst_and_refills():
    gate, _ = make_gate(max_orders_per_s=2)
    sent = [gate.check(order(qty=1000 * (i + 1)), T0) for i in range(3)]
    assert [type(d) for d in sent] == [Approved, Approved, Denied]
    assert sent[2].reason is R.ORDER_RATE and "more than 2 orders/s (burst 2)" in sent[2].message
    assert type(gate.check(order(qty=9000), T0 + timedelta(milliseconds=500))) is Approved
    assert type(gate.check(order(qty=8000), T0 + timedelta(milliseconds=500))) is Denied


def test_order_rate_counts_only_approved_orders():
    gate, _ = make_gate(max_orders_per_s=1, max_order_qty=1000)
    assert gate.check(order(qty=5000), T0).reason is R.MAX_ORDER_QTY  # takes no token
    assert type(gate.check(order(qty=1000), T0)) is Approved


def test_amend_rate():
    gate, view = make_gate(max_amends_per_s=1, amend_burst=2)
    view.work("EURUSD", BUY, 10_000, price=1.08, order_id="o-1")
    ruled = [gate.check(AmendOrder(ACCOUNT, "o-1", price=1.0801 + i / 10_000), T0) for i in range(3)]
    assert [type(d) for d in ruled] == [Approved, Approved, Denied]
    assert ruled[2].reason is R.AMEND_RATE
    assert type(gate.check(AmendOrder(ACCOUNT, "o-1", price=1.079), T0 + timedelta(seconds=1))) is Approved
    # amendments and new orders have separate buckets
    assert type(gate.check(order(), T0 + timedelta(seconds=1))) is Approved


def test_duplicate_order_guard():
    gate, _ = make_gate(duplicate_window_ms=500)
    first = order(type=LMT, price=1.08)
    assert type(gate.check(first, T0)) is Approved
    again = gate.check(order(type=LMT, price=1.08), T0 + timedelta(milliseconds=100))
    assert again.reason is R.DUPLICATE_ORDER and "approved 100 ms ago" in again.message
    assert type(gate.check(order(type=LMT, price=1.0801), T0 + timedelta(milliseconds=100))) is Approved
    assert type(gate.check(order(SELL, type=LMT, price=1.08), T0 + timedelta(milliseconds=100))) is Approved
    assert type(gate.check(order(qty=20_000, type=LMT, price=1.08), T0 + timedelta(milliseconds=100))) is Approved
    assert type(gate.check(order(type=LMT, price=1.08), T0 + timedelta(milliseconds=600))) is Approved


def test_duplicate_guard_ignores_denied_orders():
    gate, _ = make_gate(duplicate_window_ms=500, max_orders_per_s=1)
    assert type(gate.check(order(), T0)) is Approved
    assert gate.check(order(qty=20_000), T0).reason is R.ORDER_RATE
    # the denied 20000 was never sent, so it is no duplicate a second later
    assert type(gate.check(order(qty=20_000), T0 + timedelta(seconds=1))) is Approved


# -- AmendOrder --------------------------------------------------------------
AMEND_CASES = [
    ("unknown-order", {}, AmendOrder(ACCOUNT, "o-404", price=1.08), R.UNKNOWN_ORDER, "o-404"),
    ("known-order", {}, AmendOrder(ACCOUNT, "o-1", price=1.0805), None, ""),
    ("collar", {"price_collar_pct": 1.0}, AmendOrder(ACCOUNT, "o-1", price=1.2), R.PRICE_COLLAR, "price 1.2"),
    ("collar-ok", {"price_collar_pct": 1.0}, AmendOrder(ACCOUNT, "o-1", price=1.083), None, ""),
    ("position-new-qty", {"max_position": 100_000}, AmendOrder(ACCOUNT, "o-1", quantity=130_000),
     R.MAX_POSITION, "position would reach 120000 (net 0, working BUY 30000, adding 90000)"),
    ("position-new-qty-ok", {"max_position": 100_000}, AmendOrder(ACCOUNT, "o-1", quantity=70_000), None, ""),
    ("qty-grows-over-max", {"max_order_qty": 50_000}, AmendOrder(ACCOUNT, "o-1", quantity=60_000),
     R.MAX_ORDER_QTY, "quantity 60000 > max_order_qty 50000"),
    ("qty-below-filled", {}, AmendOrder(ACCOUNT, "o-1", quantity=5000), R.INVALID_QUANTITY, "<= filled 10000"),
    ("qty-off-lot", {}, AmendOrder(ACCOUNT, "o-1", quantity=25_500), R.LOT_STEP, ""),
    ("stop-price-on-limit", {}, AmendOrder(ACCOUNT, "o-1", stop_price=1.07), R.INVALID_PRICE, "no stop_price"),
    ("notional-grows", {"max_order_notional": 50_000}, AmendOrder(ACCOUNT, "o-1", quantity=50_000),
     R.MAX_ORDER_NOTIONAL, ""),
    ("gross-grows", {"max_gross_exposure": 50_000}, AmendOrder(ACCOUNT, "o-1", quantity=60_000),
     R.MAX_GROSS_EXPOSURE, ""),
    ("shrink-passes-all", {"max_position": 1, "max_order_qty": 1, "max_gross_exposure": 1},
     AmendOrder(ACCOUNT, "o-1", quantity=20_000), None, ""),
]


@pytest.mark.parametrize("limits, intent, reason, fragment", [c[1:] for c in AMEND_CASES],
                         ids=[c[0] for c in AMEND_CASES])
def test_amend_order_check(limits, intent, reason, fragment):
    gate, view = make_gate(**limits)
    view.hold("EURUSD", 0)
    # a BUY LIMIT of 40000 with 10000 filled: 30000 working
    view.work("EURUSD", BUY, 30_000, price=1.08, quantity=40_000, order_id="o-1")
    decision = gate.check(intent, T0)
    if reason is None:
        assert decision == Approved(intent), decision
    else:
        assert decision.reason is reason, decision
        assert fragment in decision.message


# -- ClosePosition and AmendPosition -----------------------------------------
def test_close_position_checks():
    gate, view = make_gate(max_order_qty=1, max_orders_per_s=0.001)
    pid = view.hold("EURUSD", 50_000)
    assert gate.check(ClosePosition(ACCOUNT, "p-404"), T0).reason is R.UNKNOWN_POSITION
    assert gate.check(ClosePosition(ACCOUNT, pid, 60_000), T0).reason is R.INVALID_QUANTITY
    assert gate.check(ClosePosition(ACCOUNT, pid, 10_500), T0).reason is R.LOT_STEP
    # closing reduces risk: no qty limit, no rate limit
    for intent in (ClosePosition(ACCOUNT, pid, 20_000), ClosePosition(ACCOUNT, pid)):
        assert gate.check(intent, T0) == Approved(intent)


# -- the pure helpers ---------------------------------------------------------
@pytest.mark.parametrize("side, added, net, working, expected", [
    (SELL, 50_000, 100_000, 0, True),
    (SELL, 100_000, 100_000, 0, True),       # to flat
    (SELL, 150_000, 100_000, 0, False),      # flips
    (SELL, 50_000, 100_000, 80_000, False),  # flips once the working sell fills
    (BUY, 50_000, 100_000, 0, False),        # grows
    (BUY, 50_000, -100_000, 0, True),
    (BUY, 10_000, 0, 0, False),              # flat: anything is new risk
])
def test_reduces(side, added, net, working, expected):
    assert reduces(side, added, net, working) is expected


def test_symbol_exposure_takes_the_worse_side():
    assert symbol_exposure(100.0, 50.0, 0.0) == 150.0
    assert symbol_exposure(100.0, 0.0, 300.0) == 200.0
    assert symbol_exposure(-100.0, 0.0, 0.0) == 100.0
    assert symbol_exposure(0.0, 0.0, 0.0) == 0.0


def test_position_check_forgives_float_noise():
    # 0.1 + 0.2 style sums must not deny an order that lands exactly on the limit
    assert check_max_position(None, "X", BUY, 0.3, 0.1, 0.2, 0.6) is None
    assert check_max_position(None, "X", BUY, 0.31, 0.1, 0.2, 0.6) is not None
