"""Hypothesis strategies for wire values: every event payload and every intent.

Named ``gen`` (not ``strategies``) so it never shadows the trading
``strategies`` package. The values are well-formed for the codec (types and
constraints of ``engine.events`` / ``engine.codec``), not necessarily
consistent as trading facts: an ``Execution`` may say FILLED with nothing
filled. Tests that need consistent facts build on the field strategies here.

``EVENTS`` maps each payload class to its strategy and ``INTENTS`` each intent
class to its; ``events()`` / ``intents()`` draw from all of them.
"""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import strategies as st

from engine import events as ev
from engine import intents as it
from engine.enums import (
    ErrorCode,
    EventKind,
    OrderStatus,
    OrderType,
    PositionSide,
    Reason,
    Side,
    TimeInForce,
)

# --------------------------------------------------------------------------
# Fields

_finite = dict(allow_nan=False, allow_infinity=False)

prices = st.floats(min_value=0.0, exclude_min=True, **_finite)
"""A finite float > 0 (what ``events.Price`` accepts)."""
quantities = prices
non_neg = st.floats(min_value=0.0, **_finite)
money = st.floats(**_finite)
"""Any finite float: balances, P&L, and the numbers of a request (whose sign
the venue judges later, as INVALID_ORDER, not the codec)."""

times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(timezone.utc)
)
"""Aware UTC datetimes with any microseconds (the wire's 6 fractional digits)."""

texts = st.text(max_size=20)
ids = st.text(min_size=1, max_size=64)
"""An id as the wire bounds it (1..64 chars): clientOrderId, request ``id``."""
symbols = st.sampled_from(["EURUSD", "GBPUSD", "USDJPY", "BTCUSDT"]) | st.text(min_size=1, max_size=12)
request_ids = st.none() | st.text(max_size=64)


def _opt(strategy):
    return st.none() | strategy


def _tuples(strategy, max_size: int = 4):
    return st.lists(strategy, max_size=max_size).map(tuple)


# --------------------------------------------------------------------------
# Events (server -> client payloads)

quotes = st.builds(
    ev.Quote,
    symbol=symbols, bid=prices, ask=prices, ts=times,
    bid_size=_opt(quantities), ask_size=_opt(quantities),
)

levels = st.tuples(prices, quantities)
depths = st.builds(ev.Depth, symbol=symbols, bids=_tuples(levels), asks=_tuples(levels), ts=times)

executions = st.builds(
    ev.Execution,
    account_id=ids, order_id=ids, client_order_id=_opt(ids), exec_id=ids, symbol=symbols,
    side=st.sampled_from(Side), type=st.sampled_from(OrderType),
    status=st.sampled_from(OrderStatus),
    quantity=quantities, filled_quantity=non_neg, remaining_quantity=non_neg,
    price=_opt(prices), stop_price=_opt(prices),
    last_quantity=_opt(non_neg), last_price=_opt(prices), average_price=_opt(prices),
    commission=money, position_id=_opt(ids), reason=_opt(st.sampled_from(Reason)), ts=times,
    time_in_force=_opt(st.sampled_from(TimeInForce)),
    stop_loss=_opt(prices), take_profit=_opt(prices),
)

positions = st.builds(
    ev.Position,
    position_id=ids, symbol=symbols, side=st.sampled_from(PositionSide), quantity=quantities,
    open_price=prices, current_price=prices, unrealized_pnl=money,
    stop_loss=_opt(prices), take_profit=_opt(prices), opened_at=times,
)

closed_positions = st.builds(
    ev.ClosedPosition,
    position_id=ids, symbol=symbols, side=st.sampled_from(PositionSide), quantity=quantities,
    open_price=prices, opened_at=times, closed_at=times, close_price=prices, realized_pnl=money,
    stop_loss=_opt(prices), take_profit=_opt(prices),
    current_price=_opt(prices), unrealized_pnl=_opt(money),
)

portfolios = st.builds(
    ev.Portfolio,
    account_id=ids, currency=st.sampled_from(["USD", "EUR", "USDT"]), balance=money,
    positions=_tuples(positions, 3), ts=times,
)

metrics = st.builds(
    ev.Metrics,
    account_id=ids, currency=st.sampled_from(["USD", "EUR"]), balance=money, equity=money,
    margin=money, free_margin=money, margin_level=_opt(money),
    unrealized_pnl=money, realized_pnl=money, ts=times,
)

_subscription_fields = dict(
    symbols=_opt(_tuples(symbols)), events=_opt(_tuples(st.sampled_from(EventKind))),
    symbol=_opt(symbols), depth=_opt(st.integers(1, 50)), account_id=_opt(ids),
)
subscribeds = st.builds(ev.Subscribed, **_subscription_fields)
unsubscribeds = st.builds(ev.Unsubscribed, **_subscription_fields)

errors = st.builds(
    ev.Error,
    code=st.sampled_from(ErrorCode), message=texts, request_type=_opt(texts),
    client_order_id=_opt(ids), order_id=_opt(ids),
)

deals = st.builds(
    ev.Deal,
    deal_id=ids, order_id=ids, position_id=ids, symbol=symbols, side=st.sampled_from(Side),
    quantity=quantities, price=prices, commission=money, realized_pnl=money, ts=times,
)
order_histories = st.builds(ev.OrderHistory, account_id=ids, orders=_tuples(executions, 3))
position_histories = st.builds(
    ev.PositionHistory, account_id=ids, positions=_tuples(closed_positions, 3)
)
deal_histories = st.builds(ev.DealHistory, account_id=ids, deals=_tuples(deals, 3))

EVENTS = {
    ev.Quote: quotes,
    ev.Depth: depths,
    ev.Execution: executions,
    ev.Portfolio: portfolios,
    ev.Metrics: metrics,
    ev.Subscribed: subscribeds,
    ev.Unsubscribed: unsubscribeds,
    ev.Error: errors,
    ev.OrderHistory: order_histories,
    ev.PositionHistory: position_histories,
    ev.DealHistory: deal_histories,
}
"""Payload class -> strategy, for every server->client message type."""


def events() -> st.SearchStrategy:
    """Any server->client payload."""
    return st.one_of(*EVENTS.values())


# --------------------------------------------------------------------------
# Intents (client -> server commands)

event_kinds = _tuples(st.sampled_from(EventKind), 3)
subscribes = st.builds(it.Subscribe, symbols=_tuples(symbols), events=event_kinds)
unsubscribes = st.builds(it.Unsubscribe, symbols=_tuples(symbols), events=event_kinds)
depth_subscribes = st.builds(it.DepthSubscribe, symbol=symbols, depth=st.integers(1, 50))
depth_unsubscribes = st.builds(it.DepthUnsubscribe, symbol=symbols)
metrics_subscribes = st.builds(it.MetricsSubscribe, account_id=ids)

create_orders = st.builds(
    it.CreateOrder,
    account_id=ids, symbol=symbols, side=st.sampled_from(Side), quantity=money,
    type=st.sampled_from(OrderType), price=_opt(money), stop_price=_opt(money),
    time_in_force=_opt(st.sampled_from(TimeInForce)), client_order_id=_opt(ids),
    stop_loss=_opt(money), take_profit=_opt(money),
)

cancel_orders = st.one_of(
    st.builds(it.CancelOrder, account_id=ids, order_id=ids, client_order_id=_opt(ids)),
    st.builds(it.CancelOrder, account_id=ids, order_id=_opt(ids), client_order_id=ids),
)
"""A cancel names the order by ``orderId``, ``clientOrderId`` or both."""

amend_orders = st.builds(
    it.AmendOrder,
    account_id=ids, order_id=ids,
    quantity=_opt(money), price=_opt(money), stop_price=_opt(money),
).filter(lambda a: not (a.quantity is None and a.price is None and a.stop_price is None))
"""An amend changes at least one of quantity, price, stopPrice."""

close_positions = st.builds(
    it.ClosePosition, account_id=ids, position_id=ids, quantity=_opt(money)
)

_level_change = st.just(it.KEEP) | st.none() | money
amend_positions = st.builds(
    it.AmendPosition,
    account_id=ids, position_id=ids, stop_loss=_level_change, take_profit=_level_change,
)
"""Each level: KEEP (left out of the message), None (null: remove) or a price."""


def _history(cls):
    return st.builds(
        cls, account_id=ids, symbol=_opt(symbols), from_=_opt(times), to=_opt(times),
        limit=st.integers(1, 1000),
    )


INTENTS = {
    it.Subscribe: subscribes,
    it.Unsubscribe: unsubscribes,
    it.DepthSubscribe: depth_subscribes,
    it.DepthUnsubscribe: depth_unsubscribes,
    it.MetricsSubscribe: metrics_subscribes,
    it.CreateOrder: create_orders,
    it.CancelOrder: cancel_orders,
    it.AmendOrder: amend_orders,
    it.ClosePosition: close_positions,
    it.AmendPosition: amend_positions,
    it.OrderHistoryQuery: _history(it.OrderHistoryQuery),
    it.PositionHistoryQuery: _history(it.PositionHistoryQuery),
    it.DealHistoryQuery: _history(it.DealHistoryQuery),
}
"""Intent class -> strategy, for every client->server message type."""


def intents() -> st.SearchStrategy:
    """Any client->server intent."""
    return st.one_of(*INTENTS.values())


# --------------------------------------------------------------------------
# Raw JSON, for fuzzing decoders past the envelope

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(**_finite) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
"""Any JSON value (finite numbers only: the encoder cannot write NaN)."""
