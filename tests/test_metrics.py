"""The performance maths against figures worked out by hand."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from engine import metrics as m

T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# --------------------------------------------------------------------------
# Drawdown


def test_max_drawdown_of_a_known_curve():
    # peaks 100 110 110 110 120 120 130; falls 0 0 11 5 0 30 0
    dd = m.max_drawdown([100, 110, 99, 105, 120, 90, 130])
    assert dd.amount == 30
    assert dd.pct == pytest.approx(25.0)  # 30 / 120
    assert (dd.peak_index, dd.trough_index) == (4, 5)


def test_drawdown_pct_may_come_from_another_fall_than_the_amount():
    # 10 -> 5 is -50 % (5 units); 100 -> 90 is -10 % (10 units)
    dd = m.max_drawdown([10, 5, 100, 90])
    assert dd.amount == 10
    assert dd.pct == pytest.approx(50.0)
    assert (dd.peak_index, dd.trough_index) == (2, 3)


@pytest.mark.parametrize("curve", [[], [100.0], [100, 100, 100], [1, 2, 3]])
def test_a_curve_that_never_falls_has_no_drawdown(curve):
    assert m.max_drawdown(curve) == m.Drawdown(0.0, 0.0, None, None)


def test_drawdown_series_is_distance_below_running_peak():
    assert m.drawdown_series([100, 110, 99, 120]).tolist() == [0, 0, -11, 0]
    assert m.drawdown_series([]).size == 0


# --------------------------------------------------------------------------
# Sharpe / Sortino

RETURNS = [0.01, -0.02, 0.03, 0.0]
# mean 0.005; sample std sqrt((25+625+625+25)e-6 / 3) = 0.0208167
# downside deviation sqrt(0.02**2 / 4) = 0.01


def test_sharpe_of_a_known_series():
    assert m.sharpe(RETURNS) == pytest.approx(0.005 / math.sqrt(1.3e-3 / 3))
    assert m.sharpe(RETURNS) == pytest.approx(0.240192, abs=1e-6)


def test_sharpe_is_annualized_by_sqrt_of_periods():
    assert m.sharpe(RETURNS, periods=4) == pytest.approx(2 * m.sharpe(RETURNS))
    assert m.sharpe(RETURNS, periods=8760) == pytest.approx(0.240192 * math.sqrt(8760), rel=1e-5)


def test_sortino_of_a_known_series():
    assert m.sortino(RETURNS) == pytest.approx(0.5)
    assert m.sortino(RETURNS, periods=9) == pytest.approx(1.5)


def test_losing_series_has_negative_ratios():
    r = [-0.01, -0.03]  # mean -0.02, std 0.0141421, downside sqrt(5e-4)
    assert m.sharpe(r) == pytest.approx(-0.02 / math.sqrt(2e-4))
    assert m.sortino(r) == pytest.approx(-0.02 / math.sqrt(5e-4))


@pytest.mark.parametrize("returns", [[], [0.01], [0.0, 0.0, 0.0], [0.01, 0.01, 0.01]])
def test_sharpe_is_none_when_undefined(returns):
    assert m.sharpe(returns, 8760) is None


@pytest.mark.parametrize("returns", [[], [-0.01], [0.0, 0.0], [0.01, 0.02, 0.0]])
def test_sortino_is_none_without_a_losing_period(returns):
    assert m.sortino(returns, 8760) is None


@given(st.lists(st.floats(-0.5, 0.5), max_size=50))
def test_ratios_are_finite_or_none(returns):
    for f in (m.sharpe, m.sortino):
        x = f(returns, 8760)
        assert x is None or math.isfinite(x)


# --------------------------------------------------------------------------
# Resampling and returns


def test_resample_takes_the_last_value_at_each_whole_hour():
    times = [at(0.5), at(0.75), at(2.1667), at(2.99)]
    grid = m.resample_last(times, [100, 101, 103, 104])
    # start 100; at 01:00 -> 101, 02:00 -> 101 (carried), 03:00 -> 104
    assert grid.tolist() == [100, 101, 101, 104]


def test_hourly_samples_on_the_hour_come_back_unchanged():
    values = [100, 102, 99, 105]
    assert m.resample_last([at(h) for h in range(4)], values).tolist() == values


def test_resample_sorts_out_of_order_samples():
    grid = m.resample_last([at(1.5), at(0.5)], [110, 100])
    assert grid.tolist() == [100, 100, 110]


def test_resample_on_a_custom_grid():
    times = [T0 + timedelta(minutes=x) for x in (0, 1, 2, 3)]
    grid = m.resample_last(times, [1, 2, 3, 4], period=timedelta(minutes=2))
    assert grid.tolist() == [1, 3, 4]


def test_resample_of_few_samples():
    assert m.resample_last([], []).size == 0
    assert m.resample_last([at(0)], [100]).tolist() == [100]
    assert m.resample_last([at(0.2)], [100]).tolist() == [100, 100]
    with pytest.raises(ValueError):
        m.resample_last([at(0)], [1, 2])


def test_naive_times_are_taken_as_utc():
    naive = [at(0.5).replace(tzinfo=None), at(1.5).replace(tzinfo=None)]
    aware = [at(0.5), at(1.5)]
    assert m.resample_last(naive, [1, 2]).tolist() == m.resample_last(aware, [1, 2]).tolist()


@given(
    st.lists(
        st.tuples(st.integers(0, 10 * 3600), st.floats(1.0, 1e6)), min_size=1, max_size=40
    )
)
def test_resampled_returns_compound_to_the_whole_change(samples):
    samples.sort(key=lambda s: s[0])
    # samples that all share one time have no change to compound
    assume(len(samples) == 1 or samples[-1][0] > samples[0][0])
    times = [T0 + timedelta(seconds=s) for s, _ in samples]
    values = [v for _, v in samples]
    grid = m.resample_last(times, values)
    assert grid[0] == values[0] and grid[-1] == values[-1]
    growth = float(np.prod(1.0 + m.simple_returns(grid)))
    assert growth == pytest.approx(values[-1] / values[0], rel=1e-9)


def test_simple_returns():
    assert m.simple_returns([100, 110, 99]).tolist() == pytest.approx([0.1, -0.1])
    assert m.simple_returns([0, 10, 5]).tolist() == pytest.approx([0.0, -0.5])
    assert m.simple_returns([100]).size == 0


def test_periods_per_year():
    assert m.periods_per_year(m.HOUR) == 8760
    assert m.periods_per_year(timedelta(days=1)) == 365
    with pytest.raises(ValueError):
        m.periods_per_year(timedelta(0))


# --------------------------------------------------------------------------
# Closed positions


def test_trade_stats_of_known_positions():
    s = m.trade_stats([10, -5, 0, 20, -15])
    assert (s.count, s.wins, s.losses) == (5, 2, 2)
    assert s.win_rate == pytest.approx(0.4)  # break-even counts in the denominator
    assert (s.gross_profit, s.gross_loss) == (30, 20)
    assert s.profit_factor == pytest.approx(1.5)
    assert (s.avg_win, s.avg_loss, s.expectancy) == (15, -10, 2)


def test_no_losses_means_no_profit_factor():
    s = m.trade_stats([5.0, 7.0])
    assert s.profit_factor is None
    assert s.win_rate == 1.0 and s.avg_loss is None and s.gross_loss == 0


def test_only_losses_give_zero_profit_factor():
    s = m.trade_stats([-5.0])
    assert s.profit_factor == 0.0 and s.win_rate == 0.0 and s.avg_win is None


def test_no_closed_positions():
    s = m.trade_stats([])
    assert s == m.TradeStats()
    assert s.count == 0 and s.win_rate is None and s.profit_factor is None


def test_finite():
    assert m.finite(None) is None
    assert m.finite(float("nan")) is None
    assert m.finite(float("-inf")) is None
    assert m.finite(np.float64(1.5)) == 1.5 and type(m.finite(np.float64(1.5))) is float
