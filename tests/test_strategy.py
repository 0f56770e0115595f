"""The strategy base class: parameters, intent helpers, failure isolation."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from engine import intents as it
from engine.book import Book
from engine.enums import OrderType, Side
from engine.errors import ConfigError, UsageError
from engine.events import Quote
from engine.instruments import Instrument
from engine.kernel import Kernel
from engine.clock import VirtualClock
from risk import Denied, RiskGate, RiskLimits
from strategies import Strategy
from strategies.sma_cross import SmaCross

T0 = datetime(2024, 1, 2, 9, 0, tzinfo=timezone.utc)
EURUSD = Instrument("EURUSD", "USD", lot_step=1000, price_precision=5, leverage=30, base_currency="EUR")


def q(bid: float, ask: float, ts: datetime = T0, symbol: str = "EURUSD") -> Quote:
    return Quote(symbol, bid, ask, ts)


class Recorder(Strategy):
    """Trades on demand and records what it hears."""

    size: float = 10_000

    def on_start(self):
        self.heard = []
        self.subscribe(self.symbols)

    def on_quote(self, quote):
        self.heard.append(("quote", quote.bid))

    def on_reject(self, rejection):
        self.heard.append(("reject", rejection.reason))

    def on_timer(self, name, now):
        self.heard.append(("timer", name, now))


class Boom(Strategy):
    def on_start(self):
        self.subscribe(self.symbols)

    def on_quote(self, quote):
        self.buy(quote.symbol, 1000, price=quote.bid - 0.001)
        if len(self.working_orders()) >= 1:
            raise RuntimeError("bug in the strategy")


def make_kernel(*strategies, limits=RiskLimits()):
    quotes: dict = {}
    clock = VirtualClock(T0)
    book = Book("acc", "USD", 100_000, {"EURUSD": EURUSD}, quotes)
    gate = RiskGate(limits, book, "acc")
    kernel = Kernel(account_id="acc", book=book, gate=gate, strategies=strategies,
                    clock=clock, quotes=quotes, run_tag="t")
    return kernel, clock


# -- parameters ----------------------------------------------------------------

def test_params_come_from_annotations_with_defaults():
    s = SmaCross(symbols=["EURUSD"], fast=5)
    assert (s.fast, s.slow, s.quantity) == (5, 50, 10_000)
    assert s.name == "smacross"


@pytest.mark.parametrize(
    "params, key, words",
    [
        ({"fsat": 5}, "sma.params.fsat", "unknown"),
        ({"fast": "ten"}, "sma.params.fast", "int"),
        ({"fast": 60, "slow": 50}, "sma.params", "fast < slow"),
    ],
)
def test_bad_params_name_the_key(params, key, words):
    with pytest.raises(ConfigError) as err:
        SmaCross(name="sma", symbols=["EURUSD"], **params)
    assert err.value.key == key
    assert words in str(err.value)


def test_reserved_parameter_names_are_refused():
    with pytest.raises(UsageError, match="reserved"):
        class Bad(Strategy):  # noqa: F841
            symbols: list = []


def test_a_strategy_has_no_context_before_it_runs():
    with pytest.raises(UsageError, match="not running"):
        SmaCross(symbols=["EURUSD"]).buy("EURUSD", 1000)


# -- intents -------------------------------------------------------------------

def test_helpers_round_to_the_instrument_and_number_client_order_ids():
    s = Recorder(name="rec", symbols=["EURUSD"])
    kernel, _ = make_kernel(s)
    kernel.start()
    kernel.on_quote(q(1.1, 1.1002))
    a = s.buy("EURUSD", 12_400, price=1.0999949)
    b = s.sell("EURUSD", 1_000, stop_price=1.09)
    c = s.buy("EURUSD", 1_000, price=1.1, stop_price=1.1001)
    assert (a.quantity, a.price, a.type) == (12_000, 1.09999, OrderType.LIMIT)
    assert (b.side, b.type) == (Side.SELL, OrderType.STOP)
    assert c.type is OrderType.STOP_LIMIT
    assert [a.client_order_id, b.client_order_id] == ["rec-t-000001", "rec-t-000002"]
    out = kernel._take()
    assert out == [a, b, c]
    assert {o.client_order_id for o in s.working_orders()} == {a.client_order_id, b.client_order_id,
                                                             c.client_order_id}


def test_a_denied_intent_reaches_on_reject_and_not_the_venue():
    s = Recorder(name="rec", symbols=["EURUSD"])
    kernel, _ = make_kernel(s, limits=RiskLimits(max_order_qty=5_000))
    kernel.start()
    kernel.on_quote(q(1.1, 1.1002))
    s.buy("EURUSD", 10_000)
    assert not kernel._take()
    assert ("reject", "MAX_ORDER_QTY") in s.heard
    assert kernel.denials == 1


def test_a_strategy_that_raises_is_stopped_and_its_orders_cancelled_others_go_on():
    good = Recorder(name="good", symbols=["EURUSD"])
    bad = Boom(name="bad", symbols=["EURUSD"])
    kernel, _ = make_kernel(bad, good)
    kernel.start()
    out = kernel.on_quote(q(1.1, 1.1002))
    # the order was approved before the hook raised; then a cancel for it follows
    assert [type(i) for i in out] == [it.CreateOrder, it.CancelOrder]
    assert out[1].client_order_id == out[0].client_order_id
    assert [f.strategy for f in kernel.failures] == ["bad"]
    assert "bug in the strategy" in kernel.failures[0].error
    kernel.on_quote(q(1.1001, 1.1003))
    assert good.heard == [("quote", 1.1), ("quote", 1.1001)]
    assert kernel.on_quote(q(1.1002, 1.1004)) == ()  # the stopped strategy emits nothing more


def test_timers_fire_on_the_clock_in_order():
    s = Recorder(name="rec", symbols=["EURUSD"])
    kernel, clock = make_kernel(s)
    kernel.start()
    s.set_timer("beat", 2.0)
    s.set_timer("once", timedelta(seconds=3), repeat=False)
    kernel.run_timers(T0 + timedelta(seconds=5), advance=clock.advance_to)
    fired = [(h[1], (h[2] - T0).total_seconds()) for h in s.heard if h[0] == "timer"]
    assert fired == [("beat", 2.0), ("once", 3.0), ("beat", 4.0)]
    s.cancel_timer("beat")
    kernel.run_timers(T0 + timedelta(seconds=60), advance=clock.advance_to)
    assert len([h for h in s.heard if h[0] == "timer"]) == 3


def test_subscriptions_are_derived_from_what_strategies_asked_for():
    class Deep(Strategy):
        def on_start(self):
            self.subscribe(self.symbols, depth=5, portfolio=True, metrics=True)

    kernel, _ = make_kernel(Deep(symbols=["EURUSD"]))
    kernel.start()
    subs = kernel.subscriptions()
    assert it.DepthSubscribe("EURUSD", 5) in subs
    assert it.MetricsSubscribe("acc") in subs
    (sub,) = [s for s in subs if isinstance(s, it.Subscribe)]
    assert sub.symbols == ("EURUSD",) and set(sub.events) == {"quoteEvent", "executionEvent", "portfolioEvent"}


def test_a_risk_denial_is_a_value_with_a_reason():
    s = Recorder(name="rec", symbols=["EURUSD"])
    kernel, _ = make_kernel(s, limits=RiskLimits(max_order_qty=5_000))
    kernel.start()
    kernel.on_quote(q(1.1, 1.1002))
    intent = s.buy("EURUSD", 10_000)
    decision = kernel.gate.check(intent, T0)
    assert isinstance(decision, Denied) and decision.reason == "MAX_ORDER_QTY"
