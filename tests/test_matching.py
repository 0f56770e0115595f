"""The matching engine against PROTOCOL sections 5.1-5.3, 6 and 7, rule by rule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from adapters.sim.matching import MatchingEngine, Reply, SyntheticDepth, VenueConfig
from engine import intents as it
from engine.enums import ErrorCode, OrderStatus, OrderType, PositionSide, Reason, Side, TimeInForce
from engine.events import Depth, Error, Execution, Portfolio, Quote
from engine.instruments import Instrument

T0 = datetime(2024, 1, 2, 12, tzinfo=timezone.utc)
BUY, SELL = Side.BUY, Side.SELL
MKT, LMT, STP, STL = OrderType.MARKET, OrderType.LIMIT, OrderType.STOP, OrderType.STOP_LIMIT
INSTRUMENTS = {
    "EURUSD": Instrument("EURUSD", "USD", lot_step=1000, leverage=30, base_currency="EUR"),
    "GBPUSD": Instrument("GBPUSD", "USD", lot_step=1000, leverage=30, base_currency="GBP"),
    "BTCUSDT": Instrument("BTCUSDT", "USD", lot_step="0.0001", price_precision=2, leverage=10),
}


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def quote(bid, ask, ms=0.0, sym="EURUSD", **sizes) -> Quote:
    return Quote(symbol=sym, bid=bid, ask=ask, ts=at(ms), **sizes)


def venue(balance=100_000, *, accounts=("A",), **cfg) -> MatchingEngine:
    eng = MatchingEngine(INSTRUMENTS, VenueConfig(**cfg))
    for acc in accounts:
        eng.open_account(acc, "USD", balance)
    eng.on_market(quote(1.1000, 1.1002))
    eng.on_market(quote(1.2500, 1.2502, sym="GBPUSD"))
    return eng


def order(side=BUY, qty=10_000, type=MKT, acc="A", sym="EURUSD", **kw) -> it.CreateOrder:
    return it.CreateOrder(acc, sym, side, qty, type, **kw)


def flow(replies) -> list[str]:
    """Each reply as a short word: the execution status, P (portfolio) or the error code."""
    out = []
    for r in replies:
        e = r.event
        if isinstance(e, Execution):
            out.append(e.status.value + (f":{e.reason.value}" if e.reason else ""))
        elif isinstance(e, Portfolio):
            out.append("P")
        elif isinstance(e, Error):
            out.append(f"E:{e.code.value}")
        else:
            out.append(type(e).__name__)
    return out


def execs(replies) -> list[Execution]:
    return [r.event for r in replies if isinstance(r.event, Execution)]


def fills(replies) -> list[tuple[float, float]]:
    return [(e.last_quantity, e.last_price) for e in execs(replies) if e.last_quantity]


def error(replies) -> Error:
    (r,) = replies
    assert isinstance(r.event, Error), r
    return r.event


# ------------------------------------------------------------------ market orders


def test_market_buy_fills_at_ask_new_first_then_portfolio():
    eng = venue()
    replies = eng.submit(order(BUY, client_order_id="c1"), origin="conn")
    assert flow(replies) == ["NEW", "FILLED", "P"]
    assert all(r.to == "conn" for r in replies)
    new, filled = execs(replies)
    assert (new.client_order_id, new.position_id, new.last_quantity, new.commission) == (
        "c1", None, None, 0.0)
    assert (new.filled_quantity, new.remaining_quantity, new.time_in_force) == (
        0.0, 10_000.0, TimeInForce.IOC)
    assert (filled.last_quantity, filled.last_price, filled.average_price) == (10_000, 1.1002, 1.1002)
    assert (filled.filled_quantity, filled.remaining_quantity, filled.reason) == (10_000, 0, None)
    assert filled.position_id == "p-1" and new.exec_id != filled.exec_id
    (pos,) = replies[2].event.positions
    assert (pos.side, pos.open_price, pos.current_price, pos.unrealized_pnl) == (
        PositionSide.LONG, 1.1002, 1.1, pytest.approx(-2.0))


def test_market_sell_fills_at_bid():
    eng = venue()
    assert fills(eng.submit(order(SELL))) == [(10_000, 1.1000)]


def test_commission_per_million_of_notional_on_fills_only():
    eng = venue(commission_per_million=20)
    replies = eng.submit(order(BUY))
    assert [e.commission for e in execs(replies)] == [0.0, 0.22]  # 11,002 x 20 / 1e6
    assert replies[-1].event.balance == 100_000 - 0.22


def test_top_of_book_size_limits_the_fill_rest_cancelled_ioc():
    eng = venue()
    eng.on_market(quote(1.1000, 1.1002, ms=1, ask_size=3000))
    replies = eng.submit(order(BUY, 10_000))
    assert flow(replies) == ["NEW", "PARTIALLY_FILLED", "CANCELLED:IOC", "P"]
    cancelled = execs(replies)[-1]
    assert (cancelled.filled_quantity, cancelled.remaining_quantity, cancelled.commission) == (
        3000, 7000, 0.0)


def test_depth_walk_one_fill_per_level_remainder_cancelled_ioc():
    eng = venue()
    eng.on_market(Depth("BTCUSDT", bids=((59_999.0, 1.0),),
                        asks=((60_000.0, 0.5), (60_001.0, 0.3), (60_002.5, 1.0)), ts=at(1)))
    replies = eng.submit(order(BUY, 2.0, sym="BTCUSDT"))
    assert fills(replies) == [(0.5, 60_000.0), (0.3, 60_001.0), (1.0, 60_002.5)]
    assert flow(replies) == ["NEW", "PARTIALLY_FILLED", "PARTIALLY_FILLED", "PARTIALLY_FILLED",
                             "CANCELLED:IOC", "P"]
    last = execs(replies)[-2]
    assert last.average_price == pytest.approx((0.5 * 60_000 + 0.3 * 60_001 + 60_002.5) / 1.8)
    assert execs(replies)[-1].remaining_quantity == pytest.approx(0.2)


def test_synthetic_depth_from_quotes_when_configured():
    eng = venue(synthetic_depth=SyntheticDepth(levels=3, size=4000, spacing_ticks=2))
    replies = eng.submit(order(BUY, 10_000))
    assert fills(replies) == [(4000, 1.1002), (4000, 1.10022), (2000, 1.10024)]  # 2 ticks of 1e-5


@pytest.mark.parametrize("size, expected", [
    (None, ["NEW", "FILLED", "P"]),
    (9000, ["NEW", "CANCELLED:FOK"]),
])
def test_fok_fills_whole_or_is_cancelled(size, expected):
    eng = venue()
    eng.on_market(quote(1.1000, 1.1002, ms=1, ask_size=size))
    replies = eng.submit(order(BUY, 10_000, time_in_force=TimeInForce.FOK))
    assert flow(replies) == expected


def test_flip_by_market_order_reports_new_position_and_books_two_deals():
    eng = venue(commission_per_million=20)
    eng.submit(order(BUY, 10_000))
    eng.on_market(quote(1.1010, 1.1012, ms=1))
    replies = eng.submit(order(SELL, 25_000))
    filled = execs(replies)[-1]
    assert (filled.position_id, filled.commission) == ("p-2", pytest.approx(0.22 + 0.33))
    deals = eng.deal_history(it.DealHistoryQuery("A")).deals
    assert [(d.position_id, d.quantity, d.realized_pnl) for d in deals] == [
        ("p-1", 10_000, 0), ("p-1", 10_000, 8.0), ("p-2", 15_000, 0)]
    (closed,) = eng.position_history(it.PositionHistoryQuery("A")).positions
    assert (closed.position_id, closed.close_price, closed.realized_pnl) == ("p-1", 1.101, 8.0)
    (pos,) = replies[-1].event.positions
    assert (pos.position_id, pos.side, pos.quantity) == ("p-2", PositionSide.SHORT, 15_000)


# ------------------------------------------------------------------ limit and stop orders


def test_limit_marketable_on_arrival_fills_at_the_ask():
    eng = venue()
    assert fills(eng.submit(order(BUY, type=LMT, price=1.1010))) == [(10_000, 1.1002)]


def test_resting_limit_fills_whole_at_its_price_when_crossed():
    eng = venue()
    replies = eng.submit(order(BUY, type=LMT, price=1.0990))
    assert flow(replies) == ["NEW"]
    assert eng.on_market(quote(1.0990, 1.0992, ms=1)) == ()  # not crossed: ask > limit
    replies = eng.on_market(quote(1.0980, 1.0985, ms=2, ask_size=1000))  # gapped through
    assert flow(replies) == ["FILLED", "P"]
    assert fills(replies) == [(10_000, 1.0990)]
    assert execs(replies)[0].ts == at(2)


def test_sell_limit_rests_then_fills_when_bid_reaches_it():
    eng = venue()
    eng.submit(order(SELL, type=LMT, price=1.1010))
    assert fills(eng.on_market(quote(1.1010, 1.1012, ms=1))) == [(10_000, 1.1010)]


@pytest.mark.parametrize("tif, expected", [
    (TimeInForce.IOC, ["NEW", "CANCELLED:IOC"]),
    (TimeInForce.FOK, ["NEW", "CANCELLED:FOK"]),
    (TimeInForce.GTC, ["NEW"]),
    (TimeInForce.DAY, ["NEW"]),
])
def test_limit_not_marketable_by_time_in_force(tif, expected):
    eng = venue()
    assert flow(eng.submit(order(BUY, type=LMT, price=1.09, time_in_force=tif))) == expected


def test_marketable_gtc_limit_walks_depth_to_its_price_and_rests_the_rest():
    eng = venue()
    eng.on_market(Depth("BTCUSDT", bids=((59_999.0, 1.0),),
                        asks=((60_000.0, 0.5), (60_001.0, 0.3), (60_010.0, 9.0)), ts=at(1)))
    replies = eng.submit(order(BUY, 1.0, type=LMT, price=60_001.0, sym="BTCUSDT"))
    assert flow(replies) == ["NEW", "PARTIALLY_FILLED", "PARTIALLY_FILLED", "P"]
    assert fills(replies) == [(0.5, 60_000.0), (0.3, 60_001.0)]
    later = eng.on_market(Depth("BTCUSDT", bids=((59_000.0, 1.0),), asks=((59_500.0, 0.01),),
                                ts=at(2)))
    assert fills(later) == [(pytest.approx(0.2), 60_001.0)]


@pytest.mark.parametrize("side, stop, quotes, fill", [
    (BUY, 1.1010, [(1.1007, 1.1009), (1.1009, 1.1011)], (10_000, 1.1011)),  # ask >= stop
    (SELL, 1.0990, [(1.0991, 1.0993), (1.0989, 1.0991)], (10_000, 1.0989)),  # bid <= stop
])
def test_stop_triggers_then_fills_as_market(side, stop, quotes, fill):
    eng = venue()
    assert flow(eng.submit(order(side, type=STP, stop_price=stop))) == ["NEW"]
    (bid, ask), (bid2, ask2) = quotes
    assert eng.on_market(quote(bid, ask, ms=1)) == ()
    assert fills(eng.on_market(quote(bid2, ask2, ms=2))) == [fill]


def test_stop_limit_becomes_limit_on_trigger():
    eng = venue()
    eng.submit(order(BUY, type=STL, stop_price=1.1010, price=1.1011))
    assert eng.on_market(quote(1.1010, 1.1013, ms=1)) == ()  # triggered, not marketable
    replies = eng.on_market(quote(1.1009, 1.1011, ms=2))
    assert fills(replies) == [(10_000, 1.1011)]
    assert execs(replies)[0].type is STL


def test_day_order_expires_at_midnight_utc_gtc_does_not():
    eng = venue()
    day = execs(eng.submit(order(BUY, type=LMT, price=1.09, time_in_force=TimeInForce.DAY)))[0]
    eng.submit(order(BUY, type=LMT, price=1.09))
    midnight = datetime(2024, 1, 3, tzinfo=timezone.utc)
    assert eng.on_market(Quote("GBPUSD", 1.25, 1.2502, midnight - timedelta(microseconds=1))) == ()
    replies = eng.on_market(Quote("GBPUSD", 1.25, 1.2502, midnight))
    assert flow(replies) == ["EXPIRED:DAY"]
    (expired,) = execs(replies)
    assert (expired.order_id, expired.remaining_quantity) == (day.order_id, 10_000)
    statuses = [o.status for o in eng.order_history(it.OrderHistoryQuery("A")).orders]
    assert statuses == [OrderStatus.EXPIRED, OrderStatus.NEW]


# ------------------------------------------------------------------ positions: SL/TP, close, amend


@pytest.mark.parametrize("side, level, near, hit, cause", [
    (BUY, dict(stop_loss=1.0990), (1.0991, 1.0993), (1.0990, 1.0992), Reason.STOP_LOSS),
    (BUY, dict(take_profit=1.1010), (1.1009, 1.1011), (1.1010, 1.1012), Reason.TAKE_PROFIT),
    (SELL, dict(stop_loss=1.1010), (1.1007, 1.1009), (1.1008, 1.1010), Reason.STOP_LOSS),
    (SELL, dict(take_profit=1.0990), (1.0989, 1.0991), (1.0988, 1.0990), Reason.TAKE_PROFIT),
])
def test_position_sl_tp_close_as_server_market_order(side, level, near, hit, cause):
    """A LONG's levels trigger on the bid, a SHORT's on the ask."""
    eng = venue()
    opened = eng.submit(order(side, client_order_id="c1", **level), origin="conn")
    (pos,) = opened[-1].event.positions
    assert (pos.stop_loss, pos.take_profit) == (level.get("stop_loss"), level.get("take_profit"))
    assert eng.on_market(quote(*near, ms=1)) == ()
    replies = eng.on_market(quote(*hit, ms=2))
    assert flow(replies) == [f"NEW:{cause}", f"FILLED:{cause}", "P"]
    new, filled = execs(replies)
    assert new.position_id == pos.position_id and new.client_order_id is None
    price = hit[0] if side is BUY else hit[1]
    assert (filled.side, filled.last_price) == (side.opposite, price)
    assert all(r.to is None for r in replies)
    assert replies[-1].event.positions == ()


@pytest.mark.parametrize("kw", [
    dict(side=BUY, stop_loss=1.1000),  # a BUY's stop-loss must be below its bid
    dict(side=BUY, take_profit=1.0990),
    dict(side=SELL, stop_loss=1.1001),
    dict(side=SELL, take_profit=1.1002),
    dict(side=BUY, type=LMT, price=1.09, stop_loss=1.0901),
])
def test_sl_tp_on_the_wrong_side_is_invalid(kw):
    eng = venue()
    assert error(eng.submit(order(**kw))).code is ErrorCode.INVALID_ORDER


def test_close_position_full_and_partial():
    eng = venue()
    eng.submit(order(BUY, 30_000))
    replies = eng.submit(it.ClosePosition("A", "p-1", 10_000), origin="conn")
    assert flow(replies) == ["NEW:CLOSE_POSITION", "FILLED:CLOSE_POSITION", "P"]
    new, filled = execs(replies)
    assert (new.position_id, new.client_order_id, new.side, new.type) == ("p-1", None, SELL, MKT)
    assert (filled.last_quantity, filled.last_price) == (10_000, 1.1000)
    assert all(r.to == "conn" for r in replies)
    assert replies[-1].event.positions[0].quantity == 20_000
    replies = eng.submit(it.ClosePosition("A", "p-1"))
    assert execs(replies)[-1].last_quantity == 20_000 and replies[-1].event.positions == ()


@pytest.mark.parametrize("req, code", [
    (it.ClosePosition("A", "p-9"), ErrorCode.UNKNOWN_POSITION),
    (it.ClosePosition("A", "p-1", 20_000), ErrorCode.INVALID_ORDER),
    (it.ClosePosition("A", "p-1", 1500), ErrorCode.INVALID_ORDER),
    (it.ClosePosition("B", "p-1"), ErrorCode.UNKNOWN_POSITION),  # another account's position
    (it.AmendPosition("B", "p-1", stop_loss=1.09), ErrorCode.UNKNOWN_POSITION),
    (it.AmendPosition("A", "p-1", stop_loss=1.1000), ErrorCode.NOT_AMENDABLE),  # bid <= SL now
    (it.AmendPosition("A", "p-1", take_profit=1.0999), ErrorCode.NOT_AMENDABLE),
])
def test_position_request_errors(req, code):
    eng = venue(accounts=("A", "B"))
    eng.submit(order(BUY))
    e = error(eng.submit(req))
    assert e.code is code and e.request_type in ("closePosition", "amendPosition")


def test_amend_position_replies_portfolio_keep_and_null():
    eng = venue()
    eng.submit(order(BUY, stop_loss=1.09, take_profit=1.12))
    replies = eng.submit(it.AmendPosition("A", "p-1", stop_loss=1.095), origin="conn")
    assert flow(replies) == ["P"] and replies[0].to == "conn"
    pos = replies[0].event.positions[0]
    assert (pos.stop_loss, pos.take_profit) == (1.095, 1.12)
    pos = eng.submit(it.AmendPosition("A", "p-1", take_profit=None))[0].event.positions[0]
    assert (pos.stop_loss, pos.take_profit) == (1.095, None)
    assert eng.on_market(quote(1.0951, 1.0953, ms=1)) == ()
    assert flow(eng.on_market(quote(1.0950, 1.0952, ms=2)))[0] == "NEW:STOP_LOSS"


# ------------------------------------------------------------------ cancel and amend orders


@pytest.mark.parametrize("by", ["order_id", "client_order_id"])
def test_cancel_working_order(by):
    eng = venue()
    eng.submit(order(BUY, type=LMT, price=1.09, client_order_id="c1"))
    key = {"order_id": "o-1"} if by == "order_id" else {"client_order_id": "c1"}
    replies = eng.submit(it.CancelOrder("A", **key), origin="other-conn")
    assert flow(replies) == ["CANCELLED:CLIENT"] and replies[0].to == "other-conn"
    assert execs(replies)[0].remaining_quantity == 10_000
    assert eng.on_market(quote(1.08, 1.0802, ms=1)) == ()  # no longer rests


@pytest.mark.parametrize("req", [
    it.CancelOrder("A", order_id="o-9"),
    it.CancelOrder("A", client_order_id="nope"),
    it.CancelOrder("A", order_id="o-1"),  # filled: not working
    it.CancelOrder("B", order_id="o-2"),  # another account's working order
])
def test_cancel_unknown_order(req):
    eng = venue(accounts=("A", "B"))
    eng.submit(order(BUY))
    eng.submit(order(BUY, type=LMT, price=1.09))
    e = error(eng.submit(req))
    assert (e.code, e.request_type) == (ErrorCode.UNKNOWN_ORDER, "cancelOrder")


def test_amend_order_then_fills_when_it_became_marketable():
    eng = venue()
    eng.submit(order(BUY, type=LMT, price=1.09))
    replies = eng.submit(it.AmendOrder("A", "o-1", quantity=20_000))
    assert flow(replies) == ["AMENDED"]
    assert (execs(replies)[0].quantity, execs(replies)[0].remaining_quantity) == (20_000, 20_000)
    replies = eng.submit(it.AmendOrder("A", "o-1", price=1.1005))
    assert flow(replies) == ["AMENDED", "FILLED", "P"]
    assert execs(replies)[0].price == 1.1005
    assert fills(replies) == [(20_000, 1.1002)]


@pytest.mark.parametrize("req, code", [
    (it.AmendOrder("A", "o-9", price=1.0), ErrorCode.UNKNOWN_ORDER),
    (it.AmendOrder("B", "o-2", price=1.0), ErrorCode.UNKNOWN_ORDER),  # another account's
    (it.AmendOrder("A", "o-1", price=1.0), ErrorCode.NOT_AMENDABLE),  # filled
    (it.AmendOrder("A", "o-2", quantity=1500), ErrorCode.NOT_AMENDABLE),  # off the lot step
    (it.AmendOrder("A", "o-2", quantity=0), ErrorCode.NOT_AMENDABLE),
    (it.AmendOrder("A", "o-2", price=-1.0), ErrorCode.NOT_AMENDABLE),
    (it.AmendOrder("A", "o-2", stop_price=1.2), ErrorCode.NOT_AMENDABLE),  # a LIMIT has none
    (it.AmendOrder("A", "o-3", price=1.2), ErrorCode.NOT_AMENDABLE),  # a STOP has no price
])
def test_amend_order_errors(req, code):
    eng = venue(accounts=("A", "B"))
    eng.submit(order(BUY))
    eng.submit(order(BUY, type=LMT, price=1.09))
    eng.submit(order(BUY, type=STP, stop_price=1.2))
    e = error(eng.submit(req))
    assert (e.code, e.request_type) == (code, "amendOrder")


def test_amend_quantity_not_above_filled_is_not_amendable():
    eng = venue()
    eng.on_market(Depth("BTCUSDT", bids=((59_999.0, 1.0),), asks=((60_000.0, 0.5),), ts=at(1)))
    eng.submit(order(BUY, 1.0, type=LMT, price=60_000.0, sym="BTCUSDT"))
    assert error(eng.submit(it.AmendOrder("A", "o-1", quantity=0.5))).code is ErrorCode.NOT_AMENDABLE
    replies = eng.submit(it.AmendOrder("A", "o-1", quantity=0.6))  # still marketable: fills
    assert flow(replies) == ["AMENDED", "FILLED", "P"]
    assert fills(replies) == [(pytest.approx(0.1), 60_000.0)]


# ------------------------------------------------------------------ create errors and their order


@pytest.mark.parametrize("kw", [
    dict(qty=0), dict(qty=-1000), dict(qty=1500),
    dict(type=LMT), dict(type=STP), dict(type=STL, price=1.1), dict(type=STL, stop_price=1.1),
    dict(type=LMT, price=0.0), dict(type=STP, stop_price=-1.0),
    dict(time_in_force=TimeInForce.GTC), dict(time_in_force=TimeInForce.DAY),
    dict(stop_loss=0.0),
])
def test_invalid_order(kw):
    eng = venue()
    e = error(eng.submit(order(client_order_id="c1", **kw), origin="conn"))
    assert (e.code, e.client_order_id, e.request_type) == (
        ErrorCode.INVALID_ORDER, "c1", "createOrder")
    assert eng.order_history(it.OrderHistoryQuery("A")).orders == ()


def test_duplicate_client_order_id_and_rejects_do_not_use_it_up():
    eng = venue()
    assert error(eng.submit(order(qty=1, client_order_id="c1"))).code is ErrorCode.INVALID_ORDER
    assert flow(eng.submit(order(client_order_id="c1")))[0] == "NEW"
    e = error(eng.submit(order(client_order_id="c1")))
    assert (e.code, e.client_order_id) == (ErrorCode.DUPLICATE_CLIENT_ORDER_ID, "c1")


@pytest.mark.parametrize("kw, code", [
    # duplicate before unknown symbol, unknown symbol before invalid, invalid before margin
    (dict(client_order_id="dup", sym="XXXYYY", qty=1), ErrorCode.DUPLICATE_CLIENT_ORDER_ID),
    (dict(sym="XXXYYY", qty=1), ErrorCode.UNKNOWN_SYMBOL),
    (dict(qty=1_000_000_001), ErrorCode.INVALID_ORDER),
    (dict(qty=10_000_000), ErrorCode.INSUFFICIENT_MARGIN),
    (dict(acc="Z"), ErrorCode.FORBIDDEN),
])
def test_create_checks_run_in_protocol_order(kw, code):
    eng = venue()
    eng.submit(order(client_order_id="dup"))
    assert error(eng.submit(order(**kw))).code is code


def test_margin_checked_on_arrival_reducing_orders_always_pass():
    eng = venue(balance=1_000)
    assert flow(eng.submit(order(BUY, 27_000)))[:2] == ["NEW", "FILLED"]  # 990 of margin
    assert error(eng.submit(order(BUY, 1000))).code is ErrorCode.INSUFFICIENT_MARGIN
    assert flow(eng.submit(order(SELL, 27_000)))[:2] == ["NEW", "FILLED"]


def test_margin_failing_at_a_later_fill_cancels_the_order():
    eng = venue(balance=1_000)
    eng.submit(order(BUY, 20_000, type=LMT, price=1.09))  # 727 of margin: passes on arrival
    eng.submit(order(BUY, 20_000, sym="GBPUSD", type=LMT, price=1.24))  # 827: passes too
    eng.on_market(quote(1.2400, 1.2400, ms=1, sym="GBPUSD"))
    replies = eng.on_market(quote(1.0890, 1.0900, ms=2))
    assert flow(replies) == ["CANCELLED:INSUFFICIENT_MARGIN"]


# ------------------------------------------------------------------ time, latency and the clock


def test_latency_request_taken_at_first_event_at_or_after_arrival():
    eng = venue(latency_ms=5)
    assert eng.submit(order(BUY), origin="conn") == ()
    assert eng.in_flight == 1
    assert eng.on_market(quote(1.25, 1.2502, ms=4.999, sym="GBPUSD")) == ()
    replies = eng.on_market(quote(1.25, 1.2502, ms=5, sym="GBPUSD"))  # of another symbol
    assert flow(replies) == ["NEW"] and execs(replies)[0].ts == at(5)
    replies = eng.on_market(quote(1.1003, 1.1005, ms=6))  # first quote of its symbol
    assert fills(replies) == [(10_000, 1.1005)] and replies[0].to == "conn"


def test_latency_market_fills_at_the_quote_that_takes_it():
    eng = venue(latency_ms=5)
    eng.submit(order(SELL), sent_at=at(10))
    assert eng.on_market(quote(1.1001, 1.1003, ms=14)) == ()
    replies = eng.on_market(quote(1.1004, 1.1006, ms=15))
    assert flow(replies) == ["NEW", "FILLED", "P"] and fills(replies) == [(10_000, 1.1004)]


def test_latency_applies_to_cancel_too():
    eng = venue(latency_ms=5)
    eng.submit(order(BUY, type=LMT, price=1.09))
    eng.submit(it.CancelOrder("A", order_id="o-1"), sent_at=at(1))
    assert flow(eng.on_market(quote(1.1, 1.1002, ms=5))) == ["NEW"]
    assert flow(eng.on_market(quote(1.1, 1.1002, ms=6))) == ["CANCELLED:CLIENT"]


def test_order_in_flight_at_feed_end_stays_unfilled():
    eng = venue(latency_ms=5)
    eng.submit(order(BUY))
    assert eng.in_flight == 1
    assert eng.order_history(it.OrderHistoryQuery("A")).orders == ()
    assert eng.portfolio("A").positions == ()


def test_clock_is_the_largest_ts_across_symbols():
    eng = venue()
    eng.on_market(quote(1.25, 1.2502, ms=100, sym="GBPUSD"))
    eng.on_market(quote(1.1, 1.1002, ms=50))  # behind: delivered, clock stays
    assert eng.clock.now == at(100)
    assert execs(eng.submit(order(BUY)))[0].ts == at(100)


def test_idle_quotes_do_nothing_and_share_one_empty_reply():
    eng = venue()
    eng.submit(order(BUY))  # a position without SL/TP: nothing to watch
    a = eng.on_market(quote(1.0, 1.0002, ms=1))
    b = eng.on_market(quote(1.2, 1.2002, ms=2))
    assert a == () and a is b
    assert eng.portfolio("A").positions[0].current_price == 1.2  # marks read the latest quote


# ------------------------------------------------------------------ stop-out


def test_stop_out_closes_largest_loss_first_until_above_level():
    eng = venue(balance=1_000, stop_out_level=80)
    eng.submit(order(BUY, 10_000))
    eng.submit(order(BUY, 10_000, sym="GBPUSD"))
    assert eng.on_market(quote(1.2200, 1.2202, ms=1, sym="GBPUSD")) == ()  # level 90%
    replies = eng.on_market(quote(1.0550, 1.0552, ms=2))  # level 32%
    assert flow(replies) == ["NEW:STOP_OUT", "FILLED:STOP_OUT", "P"] * 2
    assert [(e.symbol, e.last_price) for e in execs(replies) if e.last_quantity] == [
        ("EURUSD", 1.0550), ("GBPUSD", 1.2200)]
    assert eng.portfolio("A").balance == pytest.approx(1_000 - 452 - 302)


def test_stop_out_is_off_by_default():
    eng = venue(balance=1_000)
    eng.submit(order(BUY, 10_000))
    assert eng.on_market(quote(1.0, 1.0002, ms=1)) == ()


# ------------------------------------------------------------------ history and determinism


def test_history_queries_window_symbol_and_limit():
    eng = venue()
    for i in range(3):
        eng.on_market(quote(1.1, 1.1002, ms=1000 * (i + 1)))
        eng.submit(order(BUY if i % 2 == 0 else SELL))
    eng.on_market(quote(1.25, 1.2502, ms=5000, sym="GBPUSD"))
    eng.submit(order(BUY, sym="GBPUSD"))
    q = it.OrderHistoryQuery("A", symbol="EURUSD", from_=at(2000), to=at(4000))
    orders = eng.order_history(q).orders
    assert [o.order_id for o in orders] == ["o-2", "o-3"]
    assert orders[0].commission == 0.0 and orders[0].last_quantity == 10_000
    assert [o.order_id for o in eng.order_history(it.OrderHistoryQuery("A", limit=2)).orders] == [
        "o-3", "o-4"]
    assert [d.symbol for d in eng.deal_history(it.DealHistoryQuery("A", limit=1)).deals] == [
        "GBPUSD"]
    assert len(eng.position_history(it.PositionHistoryQuery("A")).positions) == 1


def _script(eng: MatchingEngine) -> list[Reply]:
    out = list(eng.submit(order(BUY, stop_loss=1.0950, client_order_id="a")))
    out += eng.submit(order(SELL, 20_000, type=LMT, price=1.1010, time_in_force=TimeInForce.DAY))
    out += eng.submit(order(BUY, 5000, type=STP, stop_price=1.1020))
    out += eng.submit(order(BUY, 10_000, sym="GBPUSD", stop_loss=1.2490))
    out += eng.submit(it.CancelOrder("A", order_id="o-99"))
    gbp = [1.2500, 1.2495, 1.2489, 1.2500, 1.2500, 1.2500]
    for i, (bid, ask) in enumerate([(1.1005, 1.1007), (1.1010, 1.1012), (1.1021, 1.1023),
                                    (1.0950, 1.0952), (1.0940, 1.0942), (1.0930, 1.0932)]):
        out += eng.on_market(quote(bid, ask, ms=10 * (i + 1)))
        out += eng.on_market(quote(gbp[i], gbp[i] + 0.0002, ms=10 * (i + 1) + 5, sym="GBPUSD"))
        if i == 2:
            out += eng.submit(it.AmendPosition("A", "p-3", take_profit=1.0945))
    return out


def test_same_inputs_same_outputs():
    a = _script(venue(latency_ms=3, commission_per_million=25, stop_out_level=50))
    b = _script(venue(latency_ms=3, commission_per_million=25, stop_out_level=50))
    assert len(a) > 10 and a == b
    assert len({e.exec_id for e in execs(a)}) == len(execs(a))


def test_money_adds_up_after_a_busy_script():
    eng = venue(commission_per_million=25)
    _script(eng)
    deals = eng.deal_history(it.DealHistoryQuery("A", limit=1000)).deals
    assert eng.portfolio("A").balance == pytest.approx(
        100_000 + sum(d.realized_pnl - d.commission for d in deals))
    orders = eng.order_history(it.OrderHistoryQuery("A")).orders
    by_order = {}
    for d in deals:
        by_order[d.order_id] = by_order.get(d.order_id, 0) + d.commission
    for o in orders:
        assert o.commission == pytest.approx(by_order.get(o.order_id, 0))
        assert o.remaining_quantity == o.quantity - o.filled_quantity
    assert D(0) <= D(len(deals))


# ------------------------------------------------------------------ properties over random runs

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_prices = st.integers(10_900, 11_100).map(lambda n: n / 10_000)
_quote_step = st.tuples(
    st.just("quote"), _prices, st.integers(1, 5), st.sampled_from([None, 5000.0]))
_order_step = st.tuples(
    st.just("order"), st.sampled_from([BUY, SELL]), st.integers(1, 30),
    st.sampled_from([MKT, LMT, STP, STL]), _prices,
    st.sampled_from([None, TimeInForce.IOC, TimeInForce.FOK, TimeInForce.DAY]),
    st.sampled_from([None, 0.01, -0.01]),
)
_steps = st.lists(
    st.one_of(
        _quote_step, _quote_step, _quote_step, _order_step, _order_step, _order_step,
        st.tuples(st.just("cancel"), st.integers(1, 8)),
        st.tuples(st.just("amend"), st.integers(1, 8), st.integers(1, 30), _prices),
        st.tuples(st.just("close"), st.integers(1, 4)),
    ),
    max_size=50,
)


def _run(steps, latency) -> list[Reply]:
    eng = venue(latency_ms=latency, commission_per_million=17, stop_out_level=30)
    out: list[Reply] = []
    ms = 0
    for step in steps:
        kind = step[0]
        if kind == "quote":
            _, bid, spread, size = step
            ms += 1
            out += eng.on_market(quote(bid, round(bid + spread / 10_000, 4), ms=ms, ask_size=size,
                                       bid_size=size))
        elif kind == "order":
            _, side, lots, type_, px, tif, sl = step
            stop_loss = None if sl is None else round(px - side.sign * abs(sl), 4)
            out += eng.submit(order(side, lots * 1000, type=type_, price=px, stop_price=px,
                                    time_in_force=tif, stop_loss=stop_loss))
        elif kind == "cancel":
            out += eng.submit(it.CancelOrder("A", order_id=f"o-{step[1]}"))
        elif kind == "amend":
            out += eng.submit(it.AmendOrder("A", f"o-{step[1]}", quantity=step[2] * 1000,
                                            price=step[3]))
        else:
            out += eng.submit(it.ClosePosition("A", f"p-{step[1]}"))
    out += eng.on_market(quote(1.1, 1.1002, ms=ms + 100))
    return out, eng


@settings(max_examples=150, deadline=None)
@given(_steps, st.sampled_from([0, 2]))
def test_random_runs_keep_protocol_invariants_and_are_deterministic(steps, latency):
    out, eng = _run(steps, latency)
    again, _ = _run(steps, latency)
    assert out == again
    seen_exec, state = set(), {}
    for e in execs(out):
        assert e.exec_id not in seen_exec
        seen_exec.add(e.exec_id)
        assert e.remaining_quantity == pytest.approx(e.quantity - e.filled_quantity)
        prev = state.get(e.order_id)
        if prev is None:
            assert e.status is OrderStatus.NEW
            filled = 0.0
        else:
            assert not prev.status.is_final, (prev.status, e.status)
            filled = prev.filled_quantity
        if e.last_quantity:
            assert e.status in (OrderStatus.FILLED, OrderStatus.PARTIALLY_FILLED)
            assert e.filled_quantity == pytest.approx(filled + e.last_quantity)
            assert e.position_id is not None
        else:
            assert e.commission == 0 and e.filled_quantity == filled
        if e.status in (OrderStatus.CANCELLED, OrderStatus.EXPIRED):
            assert e.reason is not None
        state[e.order_id] = e
    deals = eng.deal_history(it.DealHistoryQuery("A", limit=1000)).deals
    pf = eng.portfolio("A")
    assert pf.balance == pytest.approx(100_000 + sum(d.realized_pnl - d.commission for d in deals))
    net = sum(d.quantity * d.side.sign for d in deals if d.symbol == "EURUSD")
    signed = sum(p.quantity * (1 if p.side is PositionSide.LONG else -1)
                 for p in pf.positions if p.symbol == "EURUSD")
    assert signed == pytest.approx(net)
    assert all(o.commission == pytest.approx(sum(d.commission for d in deals
                                                 if d.order_id == o.order_id))
               for o in eng.order_history(it.OrderHistoryQuery("A", limit=1000)).orders)


def test_limit_on_a_pair_with_no_converting_quote_yet_rests_and_fills_later():
    instruments = {**INSTRUMENTS, "USDJPY": Instrument("USDJPY", "JPY", lot_step=1000, price_precision=3,
                                                      leverage=30, base_currency="USD")}
    eng = MatchingEngine(instruments, VenueConfig())
    eng.open_account("A", "USD", 100_000)
    replies = eng.submit(order(BUY, 10_000, LMT, sym="USDJPY", price=150.0))
    assert flow(replies) == ["NEW"]  # margin decided at the fill, when a quote converts it
    replies = eng.on_market(quote(149.9, 149.95, sym="USDJPY"))
    assert flow(replies) == ["FILLED", "P"]
