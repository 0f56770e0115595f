"""The live runtime against the real paper-trading server on loopback.

Each test starts ``SimServer`` on a free port in its own nursery and runs a
``LiveRuntime`` over a ``TraderClient`` to it, as ``triotrade run`` does:
login over HTTP, the WebSocket, subscriptions, the reconciliation, trading,
the orderly stop. The market is synthetic and fast; every test has a
``fail_after``.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from adapters.sim.auth import hash_password
from adapters.sim.server import SimServer
from adapters.sim.simconfig import sim_config_from_dict
from adapters.trader_ws.client import TraderClient
from engine.config import config_from_dict
from engine.events import Quote
from engine.runtime import Inbox, LiveRuntime
from risk import TradingState
from strategies import Strategy

ROOT = Path(__file__).resolve().parents[2]
ENV = {"LIVE_TEST_SECRET": "k" * 40}


def sim_dict(**over) -> dict:
    base = {
        "users": [{"username": "alice", "password_hash": hash_password("pw", iterations=1000),
                   "accounts": ["A1"]}],
        "accounts": [{"id": "A1", "balance": 100_000}],
        "market": {"synthetic": {"symbols": ["EURUSD", "GBPUSD"], "seed": 5, "rate_per_s": 200}},
        "auth": {"secret_env": "LIVE_TEST_SECRET"},
        "hub": {"rate_per_s": 1000, "burst": 1000},
        "server": {"admin": True, "shutdown_grace_s": 0.5},
    }
    base.update(over)
    return base


def run_config(**risk) -> object:
    return config_from_dict({
        "account": "A1", "balance": 100_000,
        "strategies": [{"class": "strategies.sma_cross:SmaCross", "symbols": ["EURUSD"]}],
        "risk": {"quote_max_age_ms": 60_000, "max_order_qty": 1_000_000, **risk},
    })


class Scripted(Strategy):
    """Does what the test asks, on the next quote of its symbol."""

    def on_start(self) -> None:
        self.subscribe(self.symbols)
        self.todo: list = []
        self.quotes = 0
        self.executions: list = []
        self.rejects: list = []
        self.stopped = False

    def on_quote(self, q: Quote) -> None:
        self.quotes += 1
        while self.todo:
            self.todo.pop(0)(self, q)

    def on_execution(self, e) -> None:
        self.executions.append(e)

    def on_reject(self, r) -> None:
        self.rejects.append(r)

    def on_stop(self) -> None:
        self.stopped = True


async def wait_for(cond, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


def eurusd_only(rate_per_s: float) -> dict:
    """A synthetic market quoting EURUSD alone (GBPUSD stays listed, and silent)."""
    return {"synthetic": {"symbols": ["EURUSD"], "seed": 5, "rate_per_s": rate_per_s}}


@asynccontextmanager
async def trading(strategy: Strategy | None = None, config=None, stop_deadline_s: float = 2.0, **sim):
    """A server, and a runtime trading ``strategy`` on it; yields
    (server, runtime, client, strategy) once the gate is ACTIVE, stops both on exit."""
    server = SimServer(sim_config_from_dict(sim_dict(**sim)), ENV)
    strategy = strategy or Scripted(name="s", symbols=["EURUSD"])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        inbox = Inbox()
        runtime = LiveRuntime(config or run_config(), inbox, strategies=[strategy], run_tag="t",
                              stop_deadline_s=stop_deadline_s)
        client = TraderClient(f"ws://127.0.0.1:{server.port}/api/v1/ws", "alice", "pw", "A1", inbox)
        nursery.start_soon(runtime.run, client)
        await wait_for(lambda: runtime.gate.state is TradingState.ACTIVE)
        yield server, runtime, client, strategy
        nursery.cancel_scope.cancel()


async def test_trades_live_and_the_book_agrees_with_the_server():
    with trio.fail_after(20):
        async with trading() as (server, runtime, client, strategy):
            strategy.todo.append(lambda s, q: s.buy("EURUSD", 10_000))
            await wait_for(lambda: runtime.book.net_quantity("EURUSD") == 10_000)
            strategy.todo.append(lambda s, q: s.sell("EURUSD", 4_000))
            await wait_for(lambda: runtime.book.net_quantity("EURUSD") == 6_000)
            venue = server.engine.accounts["A1"].ledger
            assert float(venue.positions["EURUSD"].quantity) == 6_000
            assert runtime.book.balance == float(venue.balance)
            assert [e.status for e in strategy.executions] == ["NEW", "FILLED", "NEW", "FILLED"]
            assert runtime.status()["fills"] == 2
            runtime.request_stop()
            await wait_for(lambda: runtime.stopped)
            assert strategy.stopped
        summary = runtime.summary()
        assert summary.orders == 2 and summary.fills == 2
        assert sum(t.quantity if t.side == "BUY" else -t.quantity for t in summary.trades) == 6_000


async def test_orders_wait_for_the_reconciliation_and_risk_denials_reach_the_strategy():
    with trio.fail_after(20):
        async with trading() as (server, runtime, client, strategy):
            # the first quote came only after the subscriptions were acknowledged
            assert client.session.live and runtime.connections == 1
            strategy.todo.append(lambda s, q: s.buy("EURUSD", 10_000_000))  # over max_order_qty
            await wait_for(lambda: strategy.rejects)
            assert strategy.rejects[0].reason == "MAX_ORDER_QTY"
            assert not server.engine.accounts["A1"].orders  # nothing denied reached the venue
            runtime.request_stop()


async def test_stop_cancels_working_orders_and_waits_for_the_answers():
    with trio.fail_after(20):
        async with trading() as (server, runtime, client, strategy):
            strategy.todo.append(lambda s, q: s.buy("EURUSD", 1_000, price=round(q.bid * 0.9, 5)))
            await wait_for(lambda: [o for o in runtime.book.working_orders() if o.order_id])
            runtime.request_stop()
            await wait_for(lambda: runtime.stopped)
            (order,) = server.engine.accounts["A1"].orders.values()
            assert order.status == "CANCELLED" and order.reason == "CLIENT"
            assert not runtime.book.working_orders()
            await wait_for(lambda: not server.sessions)  # closed with 1000: the server let it go
            assert client.last_close.startswith("1000")


async def test_a_symbol_without_quotes_is_blocked_while_others_trade(caplog):
    caplog.set_level("DEBUG")
    with trio.fail_after(20):
        # the server quotes EURUSD only; GBPUSD is listed but its feed is silent
        async with trading(config=run_config(stale_quote_ms=2_000), market=eurusd_only(200)) as (
                server, runtime, client, strategy):
            strategy.todo.append(lambda s, q: (s.buy("GBPUSD", 1_000), s.buy("EURUSD", 1_000)))
            await wait_for(lambda: runtime.book.net_quantity("EURUSD") == 1_000)
            assert [r.reason for r in strategy.rejects] == ["STALE_SYMBOL"]
            assert runtime.book.net_quantity("GBPUSD") == 0
            token = client._token
            runtime.request_stop()
            await wait_for(lambda: runtime.stopped)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "connected to ws://127.0.0.1" in logged
    assert token not in logged and "pw" not in logged.split()


async def test_a_second_stop_cuts_the_orderly_shutdown_short():
    with trio.fail_after(20):
        async with trading(stop_deadline_s=30) as (server, runtime, client, strategy):
            strategy.todo.append(lambda s, q: s.buy("EURUSD", 1_000, price=round(q.bid * 0.9, 5)))
            await wait_for(lambda: [o for o in runtime.book.working_orders() if o.order_id])
            server.faults.exec_delay_s = 60  # the cancel's answer will not come in time
            runtime.request_stop()
            await trio.sleep(0.3)
            assert not runtime.stopped  # waiting for the cancel's answer (deadline 30 s)
            with trio.fail_after(2):
                runtime.abort()
                await wait_for(lambda: runtime.stopped)
            assert runtime.aborted


async def test_a_book_that_disagrees_stops_new_risk_until_a_resync_settles_it():
    import msgspec

    with trio.fail_after(20):
        async with trading() as (server, runtime, client, strategy):
            runtime.resync_interval_s = 0.1
            strategy.todo.append(lambda s, q: s.buy("EURUSD", 1_000))
            await wait_for(lambda: runtime.book.net_quantity("EURUSD") == 1_000)
            filled = strategy.executions[-1]
            states: list = []
            set_state = runtime.gate.set_state
            runtime.gate.set_state = lambda state, reason: (states.append((state, reason)),
                                                            set_state(state, reason))
            # a fault no real server produces on demand: an event the lifecycle forbids (FILLED -> NEW)
            runtime.inbox.put(msgspec.structs.replace(filled, exec_id="forged", status="NEW"))
            await wait_for(lambda: len(states) == 2)
            (reducing, why), (active, _) = states
            assert reducing == "REDUCING" and "book disagrees" in why and active == "ACTIVE"
            assert not runtime.book.needs_reconcile  # the order history settled it
            assert runtime.book.net_quantity("EURUSD") == 1_000
            runtime.request_stop()
            await wait_for(lambda: runtime.stopped)


class Slow(Scripted):
    """A strategy that needs 4 ms a quote: it cannot keep up with 1,000 quotes/s."""

    def on_quote(self, q: Quote) -> None:
        import time

        time.sleep(0.004)
        super().on_quote(q)


async def test_a_strategy_that_falls_behind_gets_the_latest_quotes_and_every_execution():
    with trio.fail_after(20):
        async with trading(Slow(name="s", symbols=["EURUSD"]), market=eurusd_only(1000)) as (
                server, runtime, client, strategy):
            for _ in range(5):
                strategy.todo.append(lambda s, q: s.buy("EURUSD", 1_000))
                await trio.sleep(0.2)
            await wait_for(lambda: runtime.book.net_quantity("EURUSD") == 5_000)
            inbox = runtime.inbox
            # (the server runs in this process, so it also pauses while the strategy
            # sleeps; still, quotes pile up in the socket between two steps)
            assert inbox.conflated > 50  # quotes replaced while the strategy was busy...
            assert runtime.quotes_handled + inbox.conflated + len(inbox.quotes) == inbox.received
            assert strategy.quotes == runtime.quotes_handled < inbox.received
            assert [e.status for e in strategy.executions].count("FILLED") == 5  # ...executions never
            assert not server.engine.accounts["A1"].orders or all(  # the server never had to drop us
                s.over_since is None for s in server.sessions.values())
            runtime.request_stop()
            await wait_for(lambda: runtime.stopped)


async def test_a_subscription_made_after_the_start_reaches_the_venue():
    with trio.fail_after(20):
        async with trading() as (server, runtime, client, strategy):
            assert "GBPUSD" not in runtime.quotes
            strategy.todo.append(lambda s, q: s.subscribe(["GBPUSD"]))
            await wait_for(lambda: "GBPUSD" in runtime.quotes)  # its quotes now arrive
            runtime.request_stop()
            await wait_for(lambda: runtime.stopped)


def test_an_order_the_venue_never_received_is_rejected_to_its_strategy():
    """Sent as the connection dropped: the new connection's complete order
    history lacks it, so the book ends it and its strategy is told, once."""
    from engine.events import OrderHistory
    from engine.runtime import LinkDown, LinkUp, OrderHistoryReply

    strategy = Scripted(name="s", symbols=["EURUSD"])
    runtime = LiveRuntime(run_config(), Inbox(), strategies=[strategy], run_tag="t")
    runtime.kernel.start()
    runtime.gate.set_state(TradingState.ACTIVE, "test")
    strategy.todo.append(lambda s, q: s.buy("EURUSD", 1_000))
    runtime.inbox.quote(Quote("EURUSD", 1.1, 1.1002, trio_ts()))
    (sent,) = runtime.step()
    for item in (LinkDown("dropped"), LinkUp(2),
                 OrderHistoryReply(OrderHistory(account_id="A1", orders=()), complete=True)):
        runtime.inbox.put(item)
    assert runtime.step() == []  # nothing resent
    (rejection,) = strategy.rejects
    assert rejection.reason == "NOT_RECEIVED" and rejection.client_order_id == sent.client_order_id
    assert runtime.book.order_by_client_id(sent.client_order_id).status == "REJECTED"
    assert not runtime.book.working_orders()


async def test_conflation_counts_quotes_a_busy_strategy_never_saw():
    inbox = Inbox()
    q1 = Quote("EURUSD", 1.1, 1.2, trio_ts())
    q2 = Quote("EURUSD", 1.1, 1.3, trio_ts())
    q3 = Quote("GBPUSD", 1.3, 1.4, trio_ts())
    for q in (q1, q2, q3):
        inbox.quote(q)
    inbox.put("event")
    assert inbox.received == 3 and inbox.conflated == 1
    assert list(inbox.quotes.values()) == [q2, q3] and list(inbox.events) == ["event"]
    await inbox.wait()  # something is there: returns at once


def trio_ts():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


@pytest.mark.skipif(sys.platform == "win32", reason="signals")
def test_triotrade_run_venue_sim_trades_and_exits_zero_on_sigterm(tmp_path):
    """The README's live command: the embedded simulator, a status log, SIGTERM, the summary."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", str(ROOT / "configs/sma_cross.yaml"), "--venue", "sim",
         "--log-json", "--out", str(tmp_path / "out")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import time

        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "live: subscribed and reconciled" in line:
                break
        else:
            pytest.fail("never went live:\n" + "".join(lines))
        proc.terminate()  # SIGTERM: an orderly stop
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Final equity" in out
    assert (tmp_path / "out" / "summary.json").exists()
    assert "token=" not in "".join(lines) + err  # the WebSocket URL is never logged with its token


@pytest.mark.parametrize("venue, says", [
    (None, "venue: no venue: give a `venue:` section"),
    ("ws://example.com/api/v1/ws", "--venue: url: ws:// is only for loopback hosts"),
])
def test_triotrade_run_names_a_bad_venue_in_one_line(tmp_path, venue, says):
    (tmp_path / "bad.yaml").write_text(
        "account: A1\nstrategies:\n  - {class: 'strategies.sma_cross:SmaCross', symbols: [EURUSD]}\n"
        + ("venue: {url: 'ws://127.0.0.1:1/api/v1/ws', login: {username: u, password: p}}\n"
           if venue else ""))
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(tmp_path / "bad.yaml"), "--duration", "1"]
        + (["--venue", venue] if venue else []),
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert says in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr


def test_triotrade_record_writes_a_feed_the_backtest_reads(tmp_path):
    from adapters.replay import FeedReader

    out = tmp_path / "rec.jsonl.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "record", "--venue", "sim", "--symbols", "EURUSD,GBPUSD",
         "--depth", "3", "--out", str(out), "--duration", "1.5"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    reader = FeedReader(out)
    events = [e for batch in reader.batches() for e in batch]
    assert {e.symbol for e in events} == {"EURUSD", "GBPUSD"}
    assert reader.stats.quotes and reader.stats.depths and not reader.stats.malformed


@pytest.mark.parametrize("password, code", [("pw", 0), ("wrong", 1)])
async def test_triotrade_run_against_a_server_named_in_the_yaml(tmp_path, password, code):
    """`triotrade run CONFIG` on the YAML's venue, credentials from the environment."""
    (tmp_path / "live.yaml").write_text(
        "account: A1\nbalance: 100000\n"
        "strategies:\n  - {class: 'strategies.sma_cross:SmaCross', symbols: [EURUSD], "
        "params: {fast: 2, slow: 4, quantity: 1000}}\n"
        "risk: {quote_max_age_ms: 60000}\n"
        "venue: {url: 'ws://127.0.0.1:PORT/api/v1/ws', "
        "login: {username: '${TT_USER}', password: '${TT_PASSWORD}'}}\n")
    with trio.fail_after(40):
        server = SimServer(sim_config_from_dict(sim_dict()), ENV)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            cfg = tmp_path / "live.yaml"
            cfg.write_text(cfg.read_text().replace("PORT", str(port)))
            env = {**__import__("os").environ, "TT_USER": "alice", "TT_PASSWORD": password}
            proc = await trio.run_process(
                [sys.executable, "-m", "engine", "run", str(cfg), "--duration", "2", "--log-json",
                 "--out", str(tmp_path / "out")],
                cwd=tmp_path, env=env, capture_stdout=True, capture_stderr=True, check=False)
            nursery.cancel_scope.cancel()
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert password not in err.replace("password", "")
    if code == 0:
        assert "live: subscribed and reconciled" in err
        assert server.engine.accounts["A1"].orders  # it traded
    else:
        flat = " ".join(err.split())  # the table wraps lines
        assert "login refused" in flat and "(trading HALTED)" in flat, err
        assert err.count("HTTP Request: POST") == 1  # one login attempt, no loop
