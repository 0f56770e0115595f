"""Tick-to-order latency and quote intake of the live path, on loopback.

    .venv/bin/python bench/live_latency.py [--orders 3000] [--rate 300] [--seconds 3] [--pin]

The paper-trading server runs in a child process, the clients in this one
(``--pin``: each pinned to its own CPU; on the 2-vCPU VMs this was measured on
that lowers intake and does not help latency). Each figure is taken for the
framework (``LiveRuntime`` + ``TraderClient``) and, in the same run, for a bare
trio-websocket client doing the least the job needs; the difference is the
framework's own part.

1. Tick-to-order: a synthetic market at ``--rate`` quotes/s; every quote is
   answered with a MARKET createOrder of 1,000 (BUY/SELL alternately). In the
   client, from ``get_message`` returning a quote to ``send_message`` being
   called with the order that followed it; the venue's view, from the server's
   ASGI ``send`` of that quote to its ``receive`` returning the order.
2. Intake: the recorded feed replayed with ``speed: null``, a fresh server per
   client (one no-op strategy; a bare ``get_message`` loop). The server alone
   sends slower than a client reads, so the client's ceiling is taken on a
   backlog (reader held ``--hold`` s, then the time to read what the server had
   written); then quotes/s live for ``--seconds`` with the reader's longest
   gap and the server's slow-reader figures. Best of ``--rounds`` per client.

On a shared 2-vCPU VM the venue's view and the intake vary by tens of percent
from run to run; run it a few times.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from time import perf_counter_ns

import msgspec
import trio
from trio_websocket import open_websocket_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.sim.auth import hash_password
from adapters.sim.server import SimServer
from adapters.sim.simconfig import sim_config_from_dict
from adapters.trader_ws.client import MESSAGE_QUEUE, TraderClient
from adapters.trader_ws.login import endpoints, login, ws_url_with_token
from engine.config import config_from_dict
from engine.runtime import Inbox, LiveRuntime
from strategies import Strategy

SYMBOL, ACCOUNT = "EURUSD", "X1"


def run_config():
    """The client's run: one strategy (given at build), risk limits nothing here hits."""
    return config_from_dict({
        "account": ACCOUNT, "balance": 10_000_000,
        "strategies": [{"class": "strategies.sma_cross:SmaCross", "symbols": [SYMBOL]}],
        "risk": {"quote_max_age_ms": 60_000, "max_order_qty": 1_000_000}})
ENV = {"SIM_BENCH_SECRET": "b" * 40}
QUOTE, ORDER = '{"type":"quoteEvent"', '{"type":"createOrder"'
FEED = str(ROOT / "configs/data/histdata_eurusd_ticks_2020-01-01.jsonl.gz")
WARM_ORDERS = 200


def pin(cpu: int | None) -> None:
    if cpu is not None:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[cpu]})


# -- the server, in a child process ---------------------------------------------------


def _child(market: dict, cpu: int | None, pipe) -> None:
    """Serve; answer "report" (statistics) and "frames" (the frame times per connection)."""
    pin(cpu)
    quotes_out: dict[int, dict[str, int]] = {}  # conn -> quote frame -> ns its send began
    orders_in: dict[int, list[int]] = {}  # conn -> ns each createOrder was received
    writer, reader = SimServer._writer, SimServer._reader

    async def timed_writer(self, s, send):
        log = quotes_out.setdefault(s.conn, {})

        async def timed_send(msg):
            text = msg.get("text")
            if text is not None and text.startswith(QUOTE):
                log[text] = perf_counter_ns()
            await send(msg)
        await writer(self, s, timed_send)

    async def timed_reader(self, s, receive):
        log = orders_in.setdefault(s.conn, [])

        async def timed_receive():
            msg = await receive()
            text = msg.get("text")
            if text is not None and text.startswith(ORDER):
                log.append(perf_counter_ns())
            return msg
        await reader(self, s, timed_receive)

    SimServer._writer, SimServer._reader = timed_writer, timed_reader  # this process only

    async def serve() -> None:
        server = SimServer(sim_config_from_dict({
            "users": [{"username": "bench", "password_hash": hash_password("pw", iterations=1000),
                       "accounts": [ACCOUNT]}],
            "accounts": [{"id": ACCOUNT, "balance": 10_000_000}],
            "market": market, "auth": {"secret_env": "SIM_BENCH_SECRET"},
            "hub": {"rate_per_s": 100_000, "burst": 100_000}}), ENV)
        peak = 0

        async def watch() -> None:  # the most bytes a connection had unsent, sampled
            nonlocal peak
            while True:
                peak = max([peak, *(s.queued for s in server.sessions.values())])
                await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            pipe.send(await nursery.start(server.serve))
            nursery.start_soon(watch)
            while (command := await trio.to_thread.run_sync(pipe.recv)) != "stop":
                if command == "frames":
                    pipe.send((quotes_out, orders_in))
                else:  # the peak since the last report
                    pipe.send({**server.statistics(), "peak_queued": peak,
                               "written": sum(len(q) for q in quotes_out.values())})
                    peak = 0
            nursery.cancel_scope.cancel()

    trio.run(serve)


class Venue:
    def __init__(self, port: int, pipe) -> None:
        self.pipe, self.url = pipe, f"ws://127.0.0.1:{port}/api/v1/ws"

    async def ask(self, command: str = "report"):
        self.pipe.send(command)
        return await trio.to_thread.run_sync(self.pipe.recv)


@asynccontextmanager
async def venue(market: dict, args):
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.get_context("spawn").Process(
        target=_child, args=(market, -1 if args.pin else None, child))
    proc.start()
    try:
        yield Venue(await trio.to_thread.run_sync(parent.recv), parent)
    finally:
        parent.send("stop")
        await trio.to_thread.run_sync(proc.join, 10)


# -- the client side ----------------------------------------------------------------


class Probe:
    """Wraps a connection's ``get_message``/``send_message``. Every createOrder
    is paired with the latest quote received before it (once per quote);
    quotes are counted; ``hold`` (an Event) stops the reading until set."""

    def __init__(self) -> None:
        self.orders: list[tuple[int | None, str | None]] = []  # (ns since the quote, the quote)
        self.quotes = self.max_gap = self.mark = self.t_mark = self._t = 0
        self.hold: trio.Event | None = None
        self._quote: str | None = None

    def wrap(self, ws) -> None:
        """Count at trio-websocket's message channel: the framework's reader
        takes what is buffered with ``receive_nowait``, not ``get_message``."""
        get, send = ws.get_message, ws.send_message
        ws._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)  # room for a backlog
        ws._recv_channel = _CountedChannel(ws._recv_channel, self)

        async def get_message():
            if self.hold is not None:
                await self.hold.wait()
                self.hold = None
            return await get()

        async def send_message(data):
            t = perf_counter_ns()
            if data.startswith(ORDER):
                q, self._quote = self._quote, None
                self.orders.append((t - self._tq, q) if q is not None else (None, None))
            await send(data)

        ws.get_message, ws.send_message = get_message, send_message

    def seen(self, data) -> None:
        t = perf_counter_ns()
        if t - self._t > self.max_gap and self._t:
            self.max_gap = t - self._t
        self._t = t
        if data.startswith(QUOTE):
            self._quote, self._tq = data, t
            self.quotes += 1
            if self.quotes == self.mark:
                self.t_mark = t


class _CountedChannel:
    """trio-websocket's receive channel, with each message taken stamped."""

    def __init__(self, channel, probe: Probe) -> None:
        self._channel, self._probe = channel, probe

    async def receive(self):
        data = await self._channel.receive()
        self._probe.seen(data)
        return data

    def receive_nowait(self):
        data = self._channel.receive_nowait()
        self._probe.seen(data)
        return data

    def __getattr__(self, name):
        return getattr(self._channel, name)


class ProbedClient(TraderClient):
    probe: Probe

    async def _serve(self, ws, conn):
        self.probe.wrap(ws)
        return await super()._serve(ws, conn)


class PingPong(Strategy):
    """A MARKET order of 1,000 on every quote, BUY and SELL alternately."""

    def on_start(self) -> None:
        self.subscribe(self.symbols)
        self.n, self.active = 0, True

    def on_quote(self, q) -> None:
        if self.active:  # off before the stop: no order races the close
            self.n += 1
            self.buy(q.symbol, 1000) if self.n & 1 else self.sell(q.symbol, 1000)


class Idle(Strategy):
    def on_quote(self, q) -> None:
        pass


async def framework(v: Venue, strategy: Strategy, probe: Probe, body) -> LiveRuntime:
    """Run the framework on ``v`` until ``body()`` (started once live) returns."""
    config = run_config()
    inbox = Inbox()
    runtime = LiveRuntime(config, inbox, strategies=[strategy], run_tag="b", stop_deadline_s=2)
    client = ProbedClient(v.url, "bench", "pw", ACCOUNT, inbox)
    client.probe = probe
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.run, client)
        while not client.live:
            await trio.sleep(0.01)
        await body()
        strategy.active = False
        await trio.sleep(0.05)
        runtime.request_stop()
    return runtime


async def bare(v: Venue, probe: Probe, answer, body) -> None:
    """A bare trio-websocket connection: subscribe, ``answer(ws)`` in a task, until ``body()`` returns."""
    token = (await login(endpoints(v.url).login_url, "bench", "pw")).token
    async with open_websocket_url(ws_url_with_token(v.url, token), message_queue_size=MESSAGE_QUEUE) as ws:
        probe.wrap(ws)
        await ws.send_message(json.dumps({"type": "subscribe", "payload": {
            "symbols": [SYMBOL], "events": ["quoteEvent", "executionEvent"]}}))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer, ws)
            await body()
            nursery.cancel_scope.cancel()


async def tick_to_order(args) -> dict:
    fw, br = Probe(), Probe()
    orders = [msgspec.json.encode({"type": "createOrder", "payload": {
        "accountId": ACCOUNT, "symbol": SYMBOL, "side": side, "quantity": 1000, "type": "MARKET"}}
    ).decode() for side in ("BUY", "SELL")]

    async def answer(ws) -> None:
        decode, get, send, i = msgspec.json.decode, ws.get_message, ws.send_message, 0
        while True:
            if decode(await get())["type"] == "quoteEvent":
                await send(orders[i & 1])
                i += 1

    def enough(probe: Probe):
        async def wait() -> None:
            while len(probe.orders) < args.orders + WARM_ORDERS:
                await trio.sleep(0.05)
        return wait

    market = {"synthetic": {"symbols": [SYMBOL], "seed": 1, "rate_per_s": args.rate}}
    async with venue(market, args) as v:
        runtime = await framework(v, PingPong(symbols=[SYMBOL]), fw, enough(fw))
        await bare(v, br, answer, enough(br))
        quotes_out, orders_in = await v.ask("frames")
    conns = sorted(orders_in)
    out = {"status": runtime.status()}
    for name, probe, conn in (("framework", fw, conns[0]), ("bare", br, conns[1])):
        mine, read, sent = probe.orders[WARM_ORDERS:], orders_in[conn][WARM_ORDERS:], quotes_out[conn]
        out[name] = [dt for dt, _ in mine if dt is not None]
        out[name + " (venue)"] = [t - sent[q] for (_, q), t in zip(mine, read) if q in sent]
        if not 0 <= len(probe.orders) - len(orders_in[conn]) <= 1:  # the last may be cut by the close
            print(f"  warning: {name} sent {len(probe.orders)} orders, the server read {len(orders_in[conn])}")
    return out


async def intake(args) -> dict:
    market = {"replay": {"feed": [FEED], "speed": None, "loop": True}}

    async def measure(v: Venue, probe: Probe, out: dict) -> None:
        probe.hold = trio.Event()
        await trio.sleep(args.hold)  # the server fills the buffers
        backlog = (await v.ask())["written"] - probe.quotes
        probe.mark, t0 = probe.quotes + backlog, perf_counter_ns()
        probe.hold.set()
        while not probe.t_mark:
            await trio.sleep(0.01)
        out["backlog"], out["drain"] = backlog, backlog / (probe.t_mark - t0) * 1e9
        await v.ask()  # the peak since here
        q0, t0, probe.max_gap = probe.quotes, perf_counter_ns(), 0
        await trio.sleep(args.seconds)
        out["live"] = (probe.quotes - q0) / (perf_counter_ns() - t0) * 1e9
        out["gap"], out["server"] = probe.max_gap, await v.ask()

    async def drain(ws) -> None:
        get = ws.get_message
        while True:
            await get()

    best: dict[str, dict] = {"framework": {}, "bare": {}}
    for _ in range(args.rounds):  # alternately; the best round of each (the machine is shared)
        out: dict = {}
        async with venue(market, args) as v:
            probe = Probe()
            runtime = await framework(v, Idle(symbols=[SYMBOL]), probe, partial(measure, v, probe, out))
            out["inbox"] = runtime.inbox
        best["framework"] = max(best["framework"], out, key=lambda x: x.get("drain", 0))
        out = {}
        async with venue(market, args) as v:
            probe = Probe()
            await bare(v, probe, drain, partial(measure, v, probe, out))
        best["bare"] = max(best["bare"], out, key=lambda x: x.get("drain", 0))
    return best


# -- printing ------------------------------------------------------------------------


def pct(xs: list[int], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] / 1000 if xs else float("nan")


def warm_path(n: int = 20_000) -> list[int]:
    """The framework's own work from a quote's bytes to a createOrder's text, in
    one process with no socket and no idle between quotes (the CPU stays warm):
    what ``TraderClient`` and ``LiveRuntime`` do between ``get_message`` and
    ``send_message``. The matching engine answers each order (not timed), so
    the book is as in a live run. ns per quote, one order each."""
    from decimal import Decimal

    from adapters.sim.matching import MatchingEngine, VenueConfig
    from adapters.trader_ws.session import Session
    from engine.backtest import rare_gc

    config = run_config()
    inbox = Inbox()
    runtime = LiveRuntime(config, inbox, strategies=[PingPong(symbols=[SYMBOL])])
    venue = MatchingEngine(config.instrument_map(), VenueConfig())
    venue.open_account(ACCOUNT, "USD", Decimal(10_000_000))
    venue.portfolio_events = False
    runtime.kernel.start()
    runtime.gate.set_state("ACTIVE", "bench")
    session = Session(ACCOUNT)
    out: list[int] = []
    with rare_gc():  # as LiveRuntime.run does
        _warm_loop(n, inbox, runtime, venue, session, out)
    return out


def _warm_loop(n, inbox, runtime, venue, session, out) -> None:
    from adapters.trader_ws.session import Send
    from engine.codec import decode_envelope, encode_event, encode_intent
    from engine.events import Quote

    for i in range(n):
        quote = Quote(SYMBOL, 1.1 + (i % 7) * 1e-5, 1.10002 + (i % 7) * 1e-5, datetime.now(timezone.utc))
        data = encode_event(quote).decode()
        venue.on_market(quote)
        t0 = perf_counter_ns()
        inbox.quote(decode_envelope(data).payload)
        for intent in runtime.step():
            send = Send(session.next_request_id(), intent)
            encode_intent(intent, send.request_id).decode()
            session.sent(send, 0.0)
            out.append(perf_counter_ns() - t0)
            for reply in venue.submit(intent):  # the venue's answers (not timed)
                runtime.kernel.on_event(reply.event)
                session.on_event(reply.event, None, 0.0)


async def run(args) -> None:
    pin(0 if args.pin else None)
    w = warm_path()
    print(f"framework path, in-process and warm (quote bytes -> createOrder text), µs: "
          f"p50 {pct(w, .5):.1f}  p99 {pct(w, .99):.1f}  max {pct(w, 1):.1f}  (n={len(w)})")
    print(f"load average {os.getloadavg()[0]:.2f}; server and client {'' if args.pin else 'not '}pinned to CPUs")
    t = await tick_to_order(args)
    i = await intake(args)
    print(f"\ntick-to-order, {args.rate:g} quotes/s, µs{'n':>12}{'p50':>9}{'p99':>9}{'max':>9}")
    for name in ("framework", "bare", "framework (venue)", "bare (venue)"):
        xs = t[name]
        print(f"  {name:<26}{len(xs):>6}{pct(xs, .5):>9.1f}{pct(xs, .99):>9.1f}{pct(xs, 1):>9.1f}")
    for view in ("", " (venue)"):
        f, b = t["framework" + view], t["bare" + view]
        print(f"  {'framework part' + view:<32}{pct(f, .5) - pct(b, .5):>9.1f}{pct(f, .99) - pct(b, .99):>9.1f}"
              f"   (target p50 <= 20, p99 <= 100)")
    s = t["status"]
    print(f"  framework: {s.get('orders')} orders, {s.get('denials')} denials, {s.get('rejections')} venue"
          f" rejections, {s.get('conflated')} quotes conflated")
    print(f"\nintake, quotes/s{'backlog':>17}{'drain/s':>10}{'live/s':>9}{'max gap ms':>12}"
          f"{'1008s':>7}{'peak unsent B':>15}")
    for name in ("framework", "bare"):
        x = i[name]
        print(f"  {name:<22}{x['backlog']:>9,}{x['drain']:>10,.0f}{x['live']:>9,.0f}{x['gap'] / 1e6:>12.1f}"
              f"{x['server']['closes'].get(1008, 0):>7}{x['server']['peak_queued']:>15,}")
    f, b, inbox = i["framework"], i["bare"], i["framework"]["inbox"]
    print(f"  framework / bare: drain {f['drain'] / b['drain']:.1%}, live {f['live'] / b['live']:.1%}"
          f" (target >= 90 %); Inbox: {inbox.received:,} quotes in, {inbox.conflated:,} conflated")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=3000, help="orders timed per client")
    parser.add_argument("--rate", type=float, default=300, help="quotes/s of the tick-to-order market")
    parser.add_argument("--hold", type=float, default=2.0, help="s the intake reader waits to build a backlog")
    parser.add_argument("--seconds", type=float, default=3.0, help="s of live intake per client")
    parser.add_argument("--rounds", type=int, default=3, help="intake rounds per client (best shown)")
    parser.add_argument("--pin", action="store_true", help="pin server and client to one CPU each")
    args = parser.parse_args(argv)
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        args.pin = False
    trio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
