"""The gate's states: ACTIVE / REDUCING / HALTED, the equity halts, the kill switch."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import risk
from engine.enums import OrderType, Side
from engine.errors import UsageError
from engine.intents import AmendOrder, AmendPosition, CancelOrder, ClosePosition, CreateOrder, Subscribe
from risk import Approved, DenialReason, Denied, RiskGate, RiskLimits, TradingState
from tests.risk_fakes import ACCOUNT, T0, FakeView, make_gate

BUY, SELL = Side.BUY, Side.SELL
R = DenialReason
S = TradingState


def buy(qty=10_000, symbol="EURUSD"):
    return CreateOrder(ACCOUNT, symbol, BUY, qty)


def sell(qty=10_000, symbol="EURUSD"):
    return CreateOrder(ACCOUNT, symbol, SELL, qty)


def test_public_contract():
    assert set(risk.__all__) == {
        "Approved", "Decision", "DenialReason", "Denied", "RiskGate", "RiskLimits", "RiskView",
        "TradingState", "WorkingOrderLike",
    }
    for name in risk.__all__:
        assert getattr(risk, name) is not None


def test_starts_active_and_approves_a_plain_order():
    gate, _ = make_gate()
    assert gate.state is S.ACTIVE
    assert gate.check(buy(), T0) == Approved(buy())


def test_a_non_trading_intent_is_a_usage_error():
    gate, _ = make_gate()
    with pytest.raises(UsageError, match="trading intents"):
        gate.check(Subscribe(("EURUSD",), ()), T0)


# -- REDUCING ----------------------------------------------------------------
def test_reducing_allows_a_reducing_order_and_denies_a_growing_one():
    gate, view = make_gate()
    view.hold("EURUSD", 100_000)
    gate.set_state(S.REDUCING, "feed stale")
    assert gate.state is S.REDUCING and gate.state_reason == "feed stale"
    assert type(gate.check(sell(50_000), T0)) is Approved
    assert type(gate.check(sell(100_000), T0)) is Approved  # to flat
    grow = gate.check(buy(10_000), T0)
    assert grow.reason is R.REDUCING_ONLY and "feed stale" in grow.message
    assert gate.check(sell(150_000), T0).reason is R.REDUCING_ONLY  # would flip
    assert gate.check(buy(10_000, "GBPUSD"), T0).reason is R.REDUCING_ONLY  # flat: new risk


def test_reducing_counts_working_orders_of_the_same_side():
    gate, view = make_gate()
    view.hold("EURUSD", 100_000)
    view.work("EURUSD", SELL, 80_000, price=1.09)
    gate.set_state(S.REDUCING, "book out of sync")
    assert gate.check(sell(50_000), T0).reason is R.REDUCING_ONLY
    assert type(gate.check(sell(20_000), T0)) is Approved


def test_reducing_amendments():
    gate, view = make_gate()
    view.hold("EURUSD", 100_000)
    view.work("EURUSD", SELL, 50_000, price=1.09, order_id="closing")
    view.work("EURUSD", BUY, 50_000, price=1.07, order_id="adding")
    gate.set_state(S.REDUCING, "disconnected")
    for intent in (AmendOrder(ACCOUNT, "adding", quantity=20_000),
                   AmendOrder(ACCOUNT, "closing", price=1.088)):
        assert gate.check(intent, T0) == Approved(intent)
    for intent in (AmendOrder(ACCOUNT, "adding", price=1.075),
                   AmendOrder(ACCOUNT, "closing", quantity=60_000)):
        assert gate.check(intent, T0).reason is R.REDUCING_ONLY


def test_reducing_passes_position_intents_and_cancels():
    gate, view = make_gate()
    pid = view.hold("EURUSD", 100_000)
    gate.set_state("REDUCING", "feed stale")
    for intent in (ClosePosition(ACCOUNT, pid), AmendPosition(ACCOUNT, pid, stop_loss=1.07),
                   CancelOrder(ACCOUNT, order_id="o-9")):
        assert type(gate.check(intent, T0)) is Approved
    gate.set_state(S.ACTIVE, "feed back")
    assert gate.state is S.ACTIVE and type(gate.check(buy(), T0)) is Approved


def test_reducing_orders_still_pass_the_active_checks():
    gate, view = make_gate(max_order_qty=50_000)
    view.hold("EURUSD", 100_000)
    gate.set_state(S.REDUCING, "feed stale")
    assert gate.check(sell(60_000), T0).reason is R.MAX_ORDER_QTY


# -- HALTED ------------------------------------------------------------------
def test_halted_denies_new_orders_but_passes_cancels_and_closes():
    gate, view = make_gate()
    pid = view.hold("EURUSD", 100_000)
    view.work("EURUSD", SELL, 10_000, price=1.09, order_id="o-1")
    gate.set_state(S.HALTED, "operator")
    assert gate.state is S.HALTED
    for intent in (buy(), sell(), AmendOrder(ACCOUNT, "o-1", quantity=5000),
                   AmendPosition(ACCOUNT, pid, stop_loss=1.0)):
        d = gate.check(intent, T0)
        assert d.reason is R.HALTED and d.message == "trading halted: operator"
    for intent in (CancelOrder(ACCOUNT, order_id="o-1"), CancelOrder(ACCOUNT, client_order_id="x"),
                   ClosePosition(ACCOUNT, pid)):
        assert gate.check(intent, T0) == Approved(intent)
    assert gate.check(ClosePosition(ACCOUNT, "p-404"), T0).reason is R.UNKNOWN_POSITION


def test_a_halt_is_lifted_only_by_reset():
    gate, _ = make_gate()
    gate.kill()
    gate.set_state(S.ACTIVE, "all clear?")
    assert gate.state is S.HALTED
    gate.reset()
    assert gate.state is S.ACTIVE and type(gate.check(buy(), T0)) is Approved


def test_kill_switch_in_limits_starts_halted():
    gate, _ = make_gate(kill_switch=True)
    assert gate.state is S.HALTED
    assert gate.check(buy(), T0).reason is R.KILL_SWITCH


def test_kill_halts_with_its_reason():
    gate, _ = make_gate()
    gate.kill("runaway strategy")
    d = gate.check(buy(), T0)
    assert d.reason is R.KILL_SWITCH and "runaway strategy" in d.message


# -- equity: daily loss and drawdown -----------------------------------------
def _flattenable(view: FakeView):
    view.hold("EURUSD", 100_000, "p-1")
    view.hold("GBPUSD", -20_000, "p-2")
    view.work("EURUSD", SELL, 10_000, price=1.09, order_id="o-1")
    view.work("GBPUSD", BUY, 10_000, price=1.25, order_id=None, client_order_id="c-2")


def test_daily_loss_halts_without_flatten_intents():
    gate, view = make_gate(daily_loss_limit=500)
    _flattenable(view)
    assert gate.update(T0) == []
    view.equity_value = 9_500.0  # exactly the limit: still trading
    assert gate.update(T0 + timedelta(minutes=1)) == [] and gate.state is S.ACTIVE
    view.equity_value = 9_499.0
    assert gate.update(T0 + timedelta(minutes=2)) == []
    assert gate.state is S.HALTED
    d = gate.check(buy(), T0)
    assert d.reason is R.DAILY_LOSS
    assert "daily loss 501.00 > daily_loss_limit 500.00" in d.message
    assert "at 00:00 UTC 10000.00" in d.message


def test_daily_loss_halts_with_flatten_intents_once():
    gate, view = make_gate(daily_loss_limit=500, flatten_on_halt=True)
    _flattenable(view)
    gate.update(T0)
    view.equity_value = 9_000.0
    out = gate.update(T0 + timedelta(minutes=1))
    assert out == [
        CancelOrder(ACCOUNT, order_id="o-1"),
        CancelOrder(ACCOUNT, client_order_id="c-2"),
        ClosePosition(ACCOUNT, "p-1"),
        ClosePosition(ACCOUNT, "p-2"),
    ]
    assert all(type(gate.check(i, T0)) is Approved for i in out)  # the gate lets them through
    assert gate.update(T0 + timedelta(minutes=2)) == []  # sticky: no second flatten


def test_drawdown_from_peak_halts():
    gate, view = make_gate(max_drawdown=500)
    gate.update(T0)
    view.equity_value = 11_000.0
    gate.update(T0 + timedelta(hours=1))
    view.equity_value = 10_600.0
    gate.update(T0 + timedelta(hours=2))
    assert gate.state is S.ACTIVE  # 400 below the peak
    view.equity_value = 10_400.0
    gate.update(T0 + timedelta(hours=3))
    d = gate.check(buy(), T0)
    assert d.reason is R.MAX_DRAWDOWN and "drawdown 600.00 > max_drawdown 500.00" in d.message
    assert "peak 11000.00" in d.message


def test_day_rollover_resets_the_daily_baseline():
    gate, view = make_gate(daily_loss_limit=500)
    gate.update(T0)  # 10000 at the start of 1 June
    view.equity_value = 9_600.0
    gate.update(T0 + timedelta(hours=11, minutes=59))  # 23:59: down 400
    assert gate.state is S.ACTIVE
    gate.update(T0 + timedelta(hours=12, seconds=5))  # 2 June 00:00:05: baseline 9600
    view.equity_value = 9_200.0  # 800 below 1 June's start, 400 below 2 June's
    gate.update(T0 + timedelta(hours=13))
    assert gate.state is S.ACTIVE
    view.equity_value = 9_099.0
    gate.update(T0 + timedelta(hours=14))
    assert gate.state is S.HALTED and gate.check(buy(), T0).reason is R.DAILY_LOSS


def test_reset_takes_the_baselines_afresh():
    gate, view = make_gate(daily_loss_limit=500, max_drawdown=800)
    gate.update(T0)
    view.equity_value = 9_000.0
    gate.update(T0 + timedelta(minutes=1))
    assert gate.state is S.HALTED
    gate.reset()
    gate.update(T0 + timedelta(minutes=2))
    assert gate.state is S.ACTIVE
    view.equity_value = 8_600.0
    gate.update(T0 + timedelta(minutes=3))
    assert gate.state is S.ACTIVE  # 400 below the new baseline


def test_update_without_equity_limits_reads_nothing():
    gate, view = make_gate(max_order_qty=1000)
    view.equity = None  # would raise if called
    assert gate.update(T0) == []


def test_statistics_count_denials_by_reason():
    gate, view = make_gate(max_order_qty=50_000)
    gate.check(buy(60_000), T0)
    gate.check(buy(70_000), T0)
    gate.check(buy(1500), T0)
    gate.check(buy(1000), T0)
    gate.check(CancelOrder(ACCOUNT, order_id="o"), T0)
    gate.set_state(S.REDUCING, "feed stale")
    assert gate.statistics() == {
        "state": "REDUCING", "state_reason": "feed stale", "approved": 2, "denied": 3,
        "denials": {"LOT_STEP": 1, "MAX_ORDER_QTY": 2},
    }


# -- the state machine, as hypothesis drives it ------------------------------
class GateMachine(RuleBasedStateMachine):
    """Whatever happens, cancels pass, HALTED holds until reset, and a halted
    gate lets no new order through."""

    def __init__(self):
        super().__init__()
        self.view = FakeView()
        self.view.hold("EURUSD", 50_000, "p-1")
        self.gate = RiskGate(RiskLimits(daily_loss_limit=300, max_drawdown=600), self.view, ACCOUNT)
        self.now = T0
        self.halted = False

    @rule(minutes=st.integers(0, 24 * 60), equity=st.floats(8_000, 12_000))
    def update(self, minutes, equity):
        self.now += timedelta(minutes=minutes)
        self.view.equity_value = equity
        self.gate.update(self.now)
        if self.gate.state is S.HALTED:
            self.halted = True

    @rule(state=st.sampled_from([S.ACTIVE, S.REDUCING]))
    def set_mode(self, state):
        self.gate.set_state(state, "kernel")

    @rule()
    def kill(self):
        self.gate.kill()
        self.halted = True

    @rule()
    def reset(self):
        self.gate.reset()
        self.halted = False

    @invariant()
    def halted_is_sticky(self):
        assert (self.gate.state is S.HALTED) == self.halted

    @staticmethod
    def _limit(side):
        return CreateOrder(ACCOUNT, "EURUSD", side, 10_000, OrderType.LIMIT, price=1.08)

    @invariant()
    def rulings(self):
        cancel = CancelOrder(ACCOUNT, order_id="o-1")
        assert type(self.gate.check(cancel, self.now)) is Approved
        assert type(self.gate.check(ClosePosition(ACCOUNT, "p-1"), self.now)) is Approved
        growing = self.gate.check(self._limit(BUY), self.now)
        assert (type(growing) is Approved) == (self.gate.state is S.ACTIVE)
        reducing = self.gate.check(self._limit(SELL), self.now)
        assert (type(reducing) is Denied) == (self.gate.state is S.HALTED)


TestGateMachine = GateMachine.TestCase
TestGateMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_market_and_limit_orders_share_the_fresh_quote_rule():
    gate, view = make_gate()
    view.age_quote("EURUSD", 30_000)
    assert gate.check(buy(), T0).reason is R.NO_FRESH_QUOTE
    limit = CreateOrder(ACCOUNT, "EURUSD", BUY, 1000, OrderType.LIMIT, price=1.08)
    assert type(gate.check(limit, T0)) is Approved
