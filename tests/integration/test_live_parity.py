"""The central promise: live against the paper-trading server = backtest.

A recorded feed (the first 400 quotes of HistData's EURUSD of 2020-01-01,
``tests/data/parity_eurusd_400.jsonl.gz``) is replayed by ``SimServer`` and
traded by ``LiveRuntime`` + ``TraderClient`` over a real WebSocket on
loopback; the same config is backtested. Both must make the same orders
(clientOrderIds, sides, quantities, types), fill them at the same prices in
the same order, and end with the same position and balance to the cent.

Timing. Live, a request is taken by the venue when it arrives, against the
latest quote the venue has; if the server published the next quote before
the client's order arrived, the fill price would differ. So the server runs
a lock-step replay (``market.replay.step: true``): the test releases one
event (``SimServer.step(1)``), then waits until the runtime has processed
that quote and nothing is in flight (inbox drained, no order the venue has
not answered, no request without a reply), and only then releases the next.
No sleep decides anything; the polls only look at state.

Freshness. The replayed quotes carry their 2020 ``ts`` while the live
kernel's clock is the wall clock, so every quote is ~6 years old to the
risk gate: a MARKET order is denied (STALE_QUOTE) unless
``risk.quote_max_age_ms`` exceeds that age. The configs here set it to 1e13
ms (~300 years); ``stale_quote_ms`` stays off for the same reason. In the
backtest the clock is the feed's, so the setting changes nothing there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import attrs
import pytest
import trio
from trio_websocket import open_websocket_url

from adapters.sim.market import replay_schedule
from adapters.sim.server import SimServer
from adapters.sim.simconfig import sim_config_from_dict
from adapters.trader_ws.client import TraderClient
from engine.backtest import Backtest
from engine.config import RunConfig, config_from_dict
from engine.errors import UsageError
from engine.instruments import to_cents
from engine.runtime import Inbox, LiveRuntime
from risk import TradingState
from tests.integration.test_sim_server import (
    ENV,
    PW_HASH,
    http,
    login,
    next_of,
    send,
    url,
)

ROOT = Path(__file__).resolve().parents[2]
FEED = ROOT / "tests/data/parity_eurusd_400.jsonl.gz"
SYMBOL = "EURUSD"
ACCOUNT = "A1"
BALANCE = 100_000
COMMISSION_PER_MILLION = 25
FRESH_FOREVER_MS = 1e13
"""quote_max_age_ms: the replayed quotes are from 2020, the live clock is now."""
SETTLE_S = 5.0
"""How long one step may take to settle before the test says what is stuck."""
POLL_S = 0.0002

SMA = {"class": "strategies.sma_cross:SmaCross", "symbols": [SYMBOL],
       "params": {"fast": 3, "slow": 8, "quantity": 10_000}}
QUOTER = {"class": "strategies.quoter:InventoryQuoter", "symbols": [SYMBOL],
          "params": {"quantity": 10_000, "half_spread_ticks": 2, "requote_ticks": 2,
                     "max_inventory": 30_000}}


def run_config(strategy: dict) -> RunConfig:
    """One config for both runs: ``backtest:`` is the backtest's venue, the
    sim config below mirrors it (latency 0, the same commission)."""
    return config_from_dict({
        "account": ACCOUNT, "currency": "USD", "balance": BALANCE,
        "strategies": [strategy],
        "risk": {"quote_max_age_ms": FRESH_FOREVER_MS},
        "backtest": {"feed": [str(FEED)], "latency_ms": 0,
                     "commission_per_million": COMMISSION_PER_MILLION},
    })


def sim_dict(*, step: bool = True, loop: bool = False) -> dict:
    return {
        "users": [{"username": "alice", "password_hash": PW_HASH, "accounts": [ACCOUNT]}],
        "accounts": [{"id": ACCOUNT, "currency": "USD", "balance": BALANCE}],
        "market": {"replay": {"feed": [str(FEED)], "loop": loop, "step": step}},
        "venue": {"latency_ms": 0, "commission_per_million": COMMISSION_PER_MILLION},
        "hub": {"rate_per_s": 100_000, "burst": 100_000},  # dozens of orders in well under a second
        "auth": {"secret_env": "SIM_TEST_SECRET"},
        "server": {"admin": True, "shutdown_grace_s": 0.5},
        "store": ":memory:",
    }


@asynccontextmanager
async def stepping_sim(**over):
    server = SimServer(sim_config_from_dict(sim_dict(**over)), ENV)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


async def until(done: Callable[[], bool], what: Callable[[], str], timeout: float = SETTLE_S) -> None:
    """Poll ``done`` (the state is across a socket: nothing to park on); on a
    timeout fail with ``what()``, the state that did not settle."""
    with trio.move_on_after(timeout):
        while not done():
            await trio.sleep(POLL_S)
        return
    pytest.fail(f"not settled within {timeout} s: {what()}")


# ----------------------------------------------------------------- the live run


def in_flight(rt: LiveRuntime, client: TraderClient) -> list[str]:
    """What the venue may not have taken yet, or the runtime not applied yet."""
    out = []
    if rt.inbox:
        out.append(f"inbox: {len(rt.inbox.events)} events, {len(rt.inbox.quotes)} quotes")
    if rt.outbox:
        out.append(f"outbox: {len(rt.outbox)}")
    for o in rt.book.working_orders():
        if o.is_pending or o.cancel_requested or o.amend_requested or o.type == "MARKET":
            out.append(f"order {o.key} {o.status} cancel={o.cancel_requested} amend={o.amend_requested}")
    pending = client.session.pending()
    if pending:
        out.append(f"{len(pending)} requests unanswered")
    return out


@attrs.frozen
class LiveRun:
    rt: LiveRuntime
    server: SimServer
    steps: int


async def run_live(config: RunConfig) -> LiveRun:
    """The config's strategies live against a lock-step replay of FEED,
    one event at a time, each settled before the next; then an orderly stop."""
    events = [e for _, e in replay_schedule(FEED, speed=None, loop=False)]
    async with stepping_sim() as server:
        inbox = Inbox()
        # run_tag "bt": the backtest's tag, so the clientOrderIds can be compared too
        rt = LiveRuntime(config, inbox, run_tag="bt", stop_deadline_s=2.0)
        client = TraderClient(f"ws://127.0.0.1:{server.port}/api/v1/ws", "alice", "pw",
                              ACCOUNT, inbox)
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run, client)
            await until(lambda: client.live and rt.gate.state is TradingState.ACTIVE and not rt.inbox,
                        lambda: f"link {client.status()}, gate {rt.gate.state}")
            assert server.market_events == 0  # nothing published before the runtime trades
            for k, event in enumerate(events, 1):
                server.step(1)
                await until(
                    lambda k=k, ts=event.ts: (rt.quotes_handled == k and rt.kernel.quotes[SYMBOL].ts == ts
                                              and not in_flight(rt, client)),
                    lambda k=k, ts=event.ts: f"step {k} ({ts}): quotes handled {rt.quotes_handled}, "
                                             f"{in_flight(rt, client)}")
            rt.request_stop()
            await until(lambda: rt.stopped, lambda: f"runtime still running: {rt.status()}")
            nursery.cancel_scope.cancel()
        return LiveRun(rt, server, len(events))


def _row(t) -> tuple:
    """A fill without its time and commission: what must be identical row by row
    (commission: see ``_commission_by_order``)."""
    return (t.client_order_id, t.order_id, t.position_id, t.symbol, t.side, t.quantity, t.price,
            t.realized_pnl, t.strategy)


def _commission_by_order(trades) -> dict[str, float]:
    """The commission each order paid. Per row it may differ: a backtest's rows
    are the venue's deals (each deal of a flip charged its own part), a live
    run's the local book's (an execution's commission on its last deal):
    see ``test_the_live_summary_charges_commission_per_deal_as_the_backtest_does``."""
    out: dict[str, float] = {}
    for t in trades:
        out[t.order_id] = round(out.get(t.order_id, 0.0) + t.commission, 2)
    return out


def _order(o) -> tuple:
    return (o.client_order_id, o.order_id, o.symbol, str(o.side), str(o.type), o.quantity, o.price,
            str(o.status), o.filled_quantity, o.average_price, o.commission)


async def live_and_backtest(strategy: dict, *, min_orders: int):
    """Backtest then live-trade ``strategy`` on FEED; both must have run clean."""
    config = run_config(strategy)
    bt = Backtest(config)
    expected = bt.run()
    assert not bt.discrepancies()
    assert expected.orders >= min_orders and expected.denials == {} and expected.rejections == {}

    live = await run_live(config)
    rt, server = live.rt, live.server
    # the live run was clean: every quote seen once, nothing denied, refused or disputed
    assert server.market_events == live.steps == expected.quotes
    assert (rt.inbox.received, rt.inbox.conflated) == (live.steps, 0)
    assert rt.failure is None and rt.kernel.failures == [] and rt.kernel.anomalies == []
    assert rt.connections == 1
    return bt, expected, live, rt.summary()


async def assert_parity(strategy: dict, *, min_orders: int) -> None:
    bt, expected, live, got = await live_and_backtest(strategy, min_orders=min_orders)
    rt, server = live.rt, live.server
    assert got.denials == {} and got.rejections == {}

    # the same orders, in the same order, ending the same way
    assert [_order(o) for o in rt.book.all_orders()] == [_order(o) for o in bt.book.all_orders()]
    assert got.orders == expected.orders and got.fills == expected.fills
    # the same fills in the same order: order, position, side, quantity, price, P&L
    assert [_row(t) for t in got.trades] == [_row(t) for t in expected.trades]
    assert _commission_by_order(got.trades) == _commission_by_order(expected.trades)
    # one feed on its first pass: replay_schedule leaves ts alone, so the venue's
    # clock, hence every fill's time, is the feed's in both runs
    assert [t.ts for t in got.trades] == [t.ts for t in expected.trades]
    assert got.closed_positions_pnl == expected.closed_positions_pnl
    # deal by deal: the server's ledger equals the backtest venue's, and the
    # live book's equals the backtest's local book (the same booking code)
    venue = server.engine.accounts[ACCOUNT].ledger
    assert venue.deal_rows() == bt.ledger.deal_rows()
    assert rt.book.ledger.deal_rows() == bt.book.ledger.deal_rows()

    # the same end: position and balance to the cent, on the client and at the venue
    assert rt.book.net_quantity(SYMBOL) == bt.book.net_quantity(SYMBOL)
    assert {s: p.signed_quantity for s, p in venue.positions.items()} == {
        s: p.signed_quantity for s, p in bt.ledger.positions.items()}
    assert to_cents(venue.balance) == to_cents(bt.ledger.balance)
    assert round(got.final_balance, 2) == round(expected.final_balance, 2) == float(to_cents(venue.balance))
    assert round(got.fees, 2) == round(expected.fees, 2)
    # and the same stream of execution events (acks, amends, cancels, fills), none twice
    live_stats, bt_stats = rt.book.statistics(), bt.book.statistics()
    assert live_stats["executions"] == bt_stats["executions"] and live_stats["duplicates"] == 0


async def test_sma_cross_market_orders_fill_live_exactly_as_in_the_backtest():
    with trio.fail_after(40):
        await assert_parity(SMA, min_orders=50)


async def test_inventory_quoter_limit_orders_and_amends_fill_live_exactly_as_in_the_backtest():
    with trio.fail_after(40):
        await assert_parity(QUOTER, min_orders=10)


async def test_the_live_summary_charges_commission_per_deal_as_the_backtest_does():
    with trio.fail_after(40):
        _, expected, _, got = await live_and_backtest(SMA, min_orders=50)
        assert [t.commission for t in got.trades] == [t.commission for t in expected.trades]


# Regression: TraderClient.close() used to let _connect_once cancel the connection
# nursery (and trio-websocket's reader with it) before the server's close reply
# was read, so every orderly stop waited out aclose's 2 s timeout.
async def test_an_orderly_stop_completes_the_close_handshake_without_waiting_out_the_timeout():
    with trio.fail_after(20):
        async with stepping_sim() as server:
            inbox = Inbox()
            rt = LiveRuntime(run_config(SMA), inbox, stop_deadline_s=2.0)
            client = TraderClient(f"ws://127.0.0.1:{server.port}/api/v1/ws", "alice", "pw",
                                  ACCOUNT, inbox)
            async with trio.open_nursery() as nursery:
                await nursery.start(rt.run, client)
                await until(lambda: client.live, lambda: f"link {client.status()}")
                started = trio.current_time()
                rt.request_stop()  # nothing to cancel: on_stop, then close with 1000
                await until(lambda: rt.stopped, lambda: f"runtime still running: {rt.status()}")
                took = trio.current_time() - started
                nursery.cancel_scope.cancel()
        # a loopback close handshake takes about a millisecond
        assert took < 1.0, f"stopping took {took:.2f} s"


# ----------------------------------------------------------------- the step mode itself


def _feed_ts() -> list[str]:
    return [e.ts.isoformat(timespec="milliseconds") for _, e in replay_schedule(FEED, speed=None, loop=False)]


def _wire_ts(quote: dict) -> str:
    return datetime.fromisoformat(quote["payload"]["ts"]).isoformat(timespec="milliseconds")


async def test_a_lock_step_replay_publishes_only_what_was_released_in_order():
    feed = _feed_ts()
    with trio.fail_after(10):
        async with stepping_sim() as s:
            assert s.stepping
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                await send(ws, "subscribe", {"symbols": [SYMBOL], "events": ["quoteEvent"]})
                await next_of(ws, "subscribed")
                assert s.market_events == 0
                s.step(3)
                got = [_wire_ts(await next_of(ws, "quoteEvent")) for _ in range(3)]
                assert got == feed[:3] and s.market_events == 3
                with trio.move_on_after(0.2) as idle:  # nothing more goes out unreleased
                    await next_of(ws, "quoteEvent")
                assert idle.cancelled_caught and s.market_events == 3

                status, body = await http(s.port, "POST", "/admin/faults",
                                          json.dumps({"action": "step", "events": 2}).encode())
                assert status == 200 and body["released"] == 2
                got = [_wire_ts(await next_of(ws, "quoteEvent")) for _ in range(2)]
                assert got == feed[3:5] and s.market_events == 5

                for bad in (0, -1, 1.5, True):
                    with pytest.raises(UsageError):
                        s.step(bad)
                status, _ = await http(s.port, "POST", "/admin/faults",
                                       json.dumps({"action": "step", "events": 0}).encode())
                assert status == 400


async def test_a_market_order_between_steps_fills_at_the_last_released_quote():
    with trio.fail_after(10):
        async with stepping_sim() as s:
            async with open_websocket_url(url(s.port, await login(s.port))) as ws:
                await send(ws, "subscribe", {"symbols": [SYMBOL], "events": ["quoteEvent"]})
                await next_of(ws, "subscribed")
                s.step(2)
                await next_of(ws, "quoteEvent")
                second = (await next_of(ws, "quoteEvent"))["payload"]
                await send(ws, "createOrder", {"accountId": ACCOUNT, "symbol": SYMBOL, "side": "BUY",
                                               "quantity": 10_000, "type": "MARKET"})
                assert (await next_of(ws, "executionEvent"))["payload"]["status"] == "NEW"
                filled = (await next_of(ws, "executionEvent"))["payload"]
                assert filled["status"] == "FILLED" and filled["lastPrice"] == second["ask"]
                assert filled["ts"] == second["ts"]


async def test_step_is_refused_unless_the_market_is_a_lock_step_replay():
    with trio.fail_after(10):
        async with stepping_sim(step=False) as s:
            assert not s.stepping
            with pytest.raises(UsageError, match="lock-step"):
                s.step(1)
            status, body = await http(s.port, "POST", "/admin/faults", b'{"action": "step"}')
            assert status == 400 and "lock-step" in body["message"]
