"""Backtest throughput: quotes/s through the whole path, beside a plain loop.

    python bench/backtest.py [--sizes 100000,1000000] [--seed 7]

For each size it writes a seeded synthetic EURUSD ``.jsonl.gz`` feed (not
timed), then in fresh subprocesses, one run each:

- ``triotrade``: the real backtest (reading and decoding the gzip feed, the
  matching engine, the kernel, the book, the risk gate, ``SmaCross`` 10/50 on
  the mid with 10,000-unit market orders);
- ``no-orders``: the same backtest, SMAs computed, but never an order: the
  streaming path alone (its memory must not grow with the feed);
- ``plain-file``: the same strategy as a plain Python loop over the same file
  (gzip read + msgspec decode + incremental SMA + position and P&L in floats);
- ``plain-mem``: the same loop over the quotes already in memory as floats.

It prints quotes/s, the ratio to each floor, the order count and peak RSS.
Memory with orders grows with the trades (each order, deal and closed
position is kept: the report lists them and a venue answers history
queries from them), not with the quotes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIG = """\
account: bench
currency: USD
balance: 1000000
strategies:
  - class: strategies.sma_cross:SmaCross
    name: sma
    symbols: [EURUSD]
    params: {{fast: 10, slow: 50, quantity: 10000}}
backtest: {{feed: {feed}, equity_sample_s: 60}}
"""


def run_triotrade(feed: Path, trade: bool = True) -> dict:
    from engine.backtest import Backtest
    from engine.config import load_config
    from strategies.sma_cross import SmaCross

    class Watching(SmaCross):
        """The same SMAs on every quote, never an order: the streaming path alone."""

        def _trade_to(self, symbol, target):
            pass

    cfg_path = feed.with_suffix(".yaml")
    cfg_path.write_text(CONFIG.format(feed=feed))
    config = load_config(cfg_path)
    t = time.perf_counter()
    backtest = Backtest(config, strategies=None if trade else [Watching(name="sma", symbols=["EURUSD"])])
    result = backtest.run()
    wall = time.perf_counter() - t
    return {"quotes": result.quotes, "seconds": wall, "trades": result.orders}


def run_no_orders(feed: Path) -> dict:
    return run_triotrade(feed, trade=False)


def _sma_loop(quotes_iter) -> tuple[int, int, float]:
    fast, slow, qty = 10, 50, 10_000.0
    buf = [0.0] * slow
    i = n = trades = 0
    fs = ss = 0.0
    above = None
    pos = cash = 0.0
    for bid, ask in quotes_iter:
        mid = (bid + ask) * 0.5
        ss += mid - buf[i]
        fs += mid - buf[i - fast]
        buf[i] = mid
        i = i + 1 if i + 1 < slow else 0
        n += 1
        if n < slow:
            continue
        a = fs * slow > ss * fast
        if a is not above:
            if above is not None:
                target = qty if a else -qty
                delta = target - pos
                cash -= delta * (ask if delta > 0 else bid)
                pos = target
                trades += 1
            above = a
    return n, trades, cash


def _file_quotes(feed: Path):
    import gzip

    from engine.codec import decode_market_lines

    with gzip.open(feed, "rb") as f:
        tail = b""
        while chunk := f.read(1 << 20):
            buf = tail + chunk
            cut = buf.rfind(b"\n") + 1
            tail = buf[cut:]
            for env in decode_market_lines(buf[:cut]):
                q = env.payload
                yield q.bid, q.ask


def run_plain_file(feed: Path) -> dict:
    t = time.perf_counter()
    n, trades, _ = _sma_loop(_file_quotes(feed))
    return {"quotes": n, "seconds": time.perf_counter() - t, "trades": trades}


def run_plain_mem(feed: Path) -> dict:
    quotes = list(_file_quotes(feed))
    t = time.perf_counter()
    n, trades, _ = _sma_loop(quotes)
    return {"quotes": n, "seconds": time.perf_counter() - t, "trades": trades}


RUNNERS = {"triotrade": run_triotrade, "no-orders": run_no_orders, "plain-file": run_plain_file,
           "plain-mem": run_plain_mem}


def _reset_peak_rss() -> None:
    """Linux carries the parent's peak RSS across fork/exec; start from now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, feed: str) -> None:
    _reset_peak_rss()
    out = RUNNERS[kind](Path(feed))
    out["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    from adapters.feedgen import generate_feed

    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'quotes':>9} {'runner':<11} {'quotes/s':>11} {'vs plain-file':>14} {'vs plain-mem':>13} "
              f"{'orders':>7} {'peak RSS MB':>12}")
        for size in (int(s) for s in args.sizes.split(",")):
            feed = Path(tmp) / f"eurusd_{size}.jsonl.gz"
            generate_feed(feed, symbols=["EURUSD"], quotes=size, seed=args.seed)
            rows = {}
            for kind in RUNNERS:
                proc = subprocess.run([sys.executable, __file__, "--child", kind, str(feed)],
                                      capture_output=True, text=True, check=True, cwd=ROOT)
                rows[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
            for kind, r in rows.items():
                rate = r["quotes"] / r["seconds"]
                vs_file = rows["plain-file"]["quotes"] / rows["plain-file"]["seconds"] / rate
                vs_mem = rows["plain-mem"]["quotes"] / rows["plain-mem"]["seconds"] / rate
                print(f"{r['quotes']:>9} {kind:<11} {rate:>11,.0f} {vs_file:>13.2f}x {vs_mem:>12.2f}x "
                      f"{r['trades']:>7} {r['peak_rss_mb']:>12.1f}")


if __name__ == "__main__":
    main()
