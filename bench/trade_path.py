"""Where an order's time goes: the trade path of a backtest, component by component.

    python bench/trade_path.py [--orders 20000]

A strategy flips between +10,000 and -10,000 EURUSD on every quote (one
20,000-unit market order each time: NEW, a fill of two deals, a portfolio
snapshot when wanted), so every quote exercises the whole trade path:
strategy helper -> risk gate -> book (in flight) -> matching engine (ledger)
-> book (ledger) -> strategy. It prints microseconds per order for each part,
measured with perf_counter around each call (about 0.1 us of overhead each).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.backtest import Backtest, rare_gc  # noqa: E402
from engine.config import config_from_dict  # noqa: E402
from engine.events import Quote  # noqa: E402
from strategies import Strategy  # noqa: E402


class Flip(Strategy):
    def on_start(self):
        self.subscribe(self.symbols)
        self.sign = 1

    def on_quote(self, q):
        self.sign = -self.sign
        delta = 10_000 * self.sign - self.net_quantity(q.symbol)
        if delta > 0:
            self.buy(q.symbol, delta)
        elif delta < 0:
            self.sell(q.symbol, -delta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=20_000)
    args = parser.parse_args()
    config = config_from_dict({
        "balance": 1_000_000,
        "strategies": [{"class": "strategies.sma_cross:SmaCross", "symbols": ["EURUSD"]}],
        "backtest": {"feed": str(ROOT / "configs/data/histdata_eurusd_ticks_2020-01-01.jsonl.gz"),
                     "commission_per_million": 20},
    })
    bt = Backtest(config, strategies=[Flip(symbols=["EURUSD"])])
    t0 = datetime(2024, 1, 2, tzinfo=timezone.utc)
    bt.venue.clock.advance_to(t0)
    bt._start()
    quotes = [Quote("EURUSD", 1.1 + (i % 7) * 1e-5, 1.1002 + (i % 7) * 1e-5, t0 + timedelta(milliseconds=i))
              for i in range(args.orders)]
    spent: dict[str, float] = {}

    def timed(obj, name, label):
        inner = getattr(obj, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
        setattr(obj, name, wrapper)

    timed(bt.gate, "check", "risk gate check")
    timed(bt.book, "on_sent", "book: record in-flight order")
    timed(bt.venue, "submit", "matching engine submit (incl. its ledger)")
    timed(bt.ledger, "fill", "  venue ledger fill")
    timed(bt.book, "apply", "book apply events (incl. its ledger)")
    timed(bt.book.ledger, "fill", "  book ledger fill")
    timed(bt.kernel, "on_quote", "kernel on_quote (strategy, gate, book in flight)")
    timed(bt, "_send", "send: venue + kernel on_event")
    on_market, on_quote, send, deliver = bt.venue.on_market, bt.kernel.on_quote, bt._send, bt._deliver
    with rare_gc():  # as Backtest.run does
        start = time.perf_counter()
        for q in quotes:
            replies = on_market(q)
            if replies:
                deliver(replies)
            intents = on_quote(q)
            if intents:
                send(intents)
        total = time.perf_counter() - start
    n = bt.kernel.orders_sent
    print(f"{n} orders, {total / n * 1e6:.1f} us per order in all (instrumented)")
    for label, secs in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {label:52} {secs / n * 1e6:6.1f} us")


if __name__ == "__main__":
    main()
