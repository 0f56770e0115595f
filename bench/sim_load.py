"""Load on the paper-trading server over real loopback sockets.

    .venv/bin/python bench/sim_load.py [--seconds 3] [--rate 20000] [--orders 500]

1. Quote fan-out: 1, 10 and 100 WebSocket clients subscribed to every
   symbol of a synthetic market offering ``--rate`` quotes a second; prints
   the quote events per second delivered across all clients (and what the
   market published). The server runs in a child process (its own core when
   there are two); ``--inprocess`` runs it in the clients' trio loop.
2. Order round trip: one client sends ``createOrder`` MARKET and waits for
   its FILLED, ``--orders`` times (BUY and SELL alternately); p50/p99.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.sim.auth import hash_password  # noqa: E402
from adapters.sim.server import SimServer  # noqa: E402
from adapters.sim.simconfig import sim_config_from_dict  # noqa: E402

SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY"]
ENV = {"SIM_BENCH_SECRET": "b" * 40}


def config(rate: float):
    return sim_config_from_dict({
        "users": [{"username": "bench", "password_hash": hash_password("pw", iterations=1000),
                   "accounts": ["X1"]}],
        "accounts": [{"id": "X1", "balance": 10_000_000}],
        "market": {"synthetic": {"symbols": SYMBOLS, "seed": 1, "rate_per_s": rate}},
        "hub": {"rate_per_s": 100_000, "burst": 100_000},
        "auth": {"secret_env": "SIM_BENCH_SECRET"},
        "server": {"slow_reader_s": 3600, "admin": True},  # quotes conflate for slow clients
    })


async def login(port: int) -> str:
    body = b'{"username":"bench","password":"pw"}'
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return json.loads(data.partition(b"\r\n\r\n")[2])["token"]


async def published(port: int) -> int:
    """Market events the server has published so far (its admin statistics)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /admin/statistics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return json.loads(data.partition(b"\r\n\r\n")[2])["market_events"]


async def fan_out(port: int, url: str, clients: int, seconds: float) -> tuple[float, float]:
    """(quote events/s delivered over all clients, quotes/s the market published)."""
    counts = [0] * clients
    ready = trio.Semaphore(0)
    measuring = trio.Event()

    async def client(i: int) -> None:
        async with open_websocket_url(url, message_queue_size=1024) as ws:
            await ws.send_message(json.dumps(
                {"type": "subscribe", "payload": {"symbols": SYMBOLS, "events": ["quoteEvent"]}}))
            ready.release()
            while True:
                msg = await ws.get_message()
                if measuring.is_set() and msg.startswith('{"type":"quoteEvent"'):
                    counts[i] += 1

    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(client, i)
        for _ in range(clients):
            await ready.acquire()
        await trio.sleep(0.5)  # warm up
        before = await published(port)
        start = trio.current_time()
        measuring.set()
        await trio.sleep(seconds)
        elapsed = trio.current_time() - start
        delivered = sum(counts)
        after = await published(port)
        nursery.cancel_scope.cancel()
    return delivered / elapsed, (after - before) / elapsed


async def round_trips(url: str, n: int) -> list[float]:
    times = []
    async with open_websocket_url(url) as ws:
        for i in range(n):
            side = "BUY" if i % 2 == 0 else "SELL"
            t0 = trio.current_time()
            await ws.send_message(json.dumps({"type": "createOrder", "payload": {
                "accountId": "X1", "symbol": "EURUSD", "side": side, "quantity": 1000, "type": "MARKET"}}))
            while True:
                msg = json.loads(await ws.get_message())
                if msg["type"] == "executionEvent" and msg["payload"]["status"] == "FILLED":
                    break
                if msg["type"] == "error":
                    raise RuntimeError(msg["payload"])
            times.append(trio.current_time() - t0)
    return times


async def measure(port: int, args: argparse.Namespace) -> None:
    url = f"ws://127.0.0.1:{port}/api/v1/ws?token={await login(port)}"
    print(f"synthetic market offering {args.rate:,.0f} quotes/s on {len(SYMBOLS)} symbols"
          f" (server {'in this process' if args.inprocess else 'in a child process'})")
    for clients in (1, 10, 100):
        delivered, offered = await fan_out(port, url, clients, args.seconds)
        print(f"  {clients:>3} clients: {delivered:>10,.0f} quote events/s delivered "
              f"(market published {offered:,.0f}/s)")
    await round_trips(url, 20)  # warm up
    times = sorted(await round_trips(url, args.orders))
    p50 = statistics.median(times) * 1e3
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3
    print(f"createOrder MARKET -> FILLED over {args.orders} orders: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def _child(rate: float, conn) -> None:
    async def serve() -> None:
        server = SimServer(config(rate), ENV)
        async with trio.open_nursery() as nursery:
            conn.send(await nursery.start(server.serve))
            await trio.to_thread.run_sync(conn.recv)  # until the parent says stop
            nursery.cancel_scope.cancel()

    trio.run(serve)


async def run(args: argparse.Namespace) -> None:
    if args.inprocess:
        server = SimServer(config(args.rate), ENV)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            await trio.sleep(0.2)
            await measure(port, args)
            nursery.cancel_scope.cancel()
        return
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(args.rate, child))
    proc.start()
    try:
        port = await trio.to_thread.run_sync(parent.recv)
        await trio.sleep(0.2)
        await measure(port, args)
    finally:
        parent.send("stop")
        await trio.to_thread.run_sync(proc.join, 10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per fan-out step")
    parser.add_argument("--rate", type=float, default=20_000, help="quotes/s the market offers")
    parser.add_argument("--orders", type=int, default=500, help="round trips to time")
    parser.add_argument("--inprocess", action="store_true", help="the server in the clients' process")
    trio.run(run, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
