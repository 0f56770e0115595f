"""The token bucket: never more than burst + rate x window, and never stuck."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.instruments import dec
from risk.throttle import US_PER_S, TokenBucket

rates = st.one_of(
    st.integers(1, 2000).map(lambda k: k / 100),  # 0.01 .. 20 a second, as YAML writes them
    st.integers(1, 1000),
)


@settings(max_examples=300, deadline=None)
@given(
    rate=rates,
    burst=st.none() | st.integers(1, 20),
    gaps=st.lists(st.one_of(st.just(0), st.integers(0, 50_000), st.integers(0, 3 * US_PER_S)),
                  min_size=1, max_size=150),
)
def test_never_more_than_burst_plus_rate_times_window(rate, burst, gaps):
    bucket = TokenBucket(rate, burst)
    now, taken = 10**15, []
    for gap in gaps:
        now += gap
        if bucket.try_take(now):
            taken.append(now)
    exact = Fraction(dec(rate))
    size = bucket.burst
    for i in range(len(taken)):
        for j in range(i, len(taken)):
            window_s = Fraction(taken[j] - taken[i], US_PER_S)
            assert j - i + 1 <= size + exact * window_s, (i, j, taken)


@settings(max_examples=200, deadline=None)
@given(rate=rates, burst=st.none() | st.integers(1, 20), n=st.integers(1, 60))
def test_requests_spaced_at_the_rate_all_pass(rate, burst, n):
    bucket = TokenBucket(rate, burst)
    step = -(-US_PER_S * Fraction(dec(rate)).denominator // Fraction(dec(rate)).numerator)  # ceil(1/rate) in µs
    assert all(bucket.try_take(10**12 + i * step) for i in range(n))


def test_burst_at_one_instant_then_refill():
    bucket = TokenBucket(2.0, burst=3)
    assert [bucket.try_take(0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_us() == 500_000
    assert not bucket.try_take(499_999)
    assert bucket.try_take(500_000)


def test_default_burst_is_ceil_of_rate():
    assert TokenBucket(0.2).burst == 1
    assert TokenBucket(2.5).burst == 3


def test_decimal_rate_is_exact():
    # 0.1/s is one request every 10 s exactly, however long it runs
    bucket = TokenBucket(0.1)
    t = 0
    for _ in range(1000):
        assert bucket.try_take(t)
        assert not bucket.try_take(t + 10 * US_PER_S - 1)
        t += 10 * US_PER_S


def test_time_running_backwards_adds_nothing():
    bucket = TokenBucket(1.0, burst=1)
    assert bucket.try_take(5 * US_PER_S)
    assert not bucket.try_take(0)
    assert not bucket.try_take(5 * US_PER_S + 999_999)
    assert bucket.try_take(6 * US_PER_S)


@pytest.mark.parametrize("rate, burst", [(0, None), (-1, None), (float("inf"), None), (1.0, 0)])
def test_bad_settings(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)
