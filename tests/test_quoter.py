"""The quoting example: two-sided limit orders, inventory skew, amend, depth."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from engine.backtest import Backtest
from engine.config import load_config
from strategies.quoter import InventoryQuoter

DATA = Path(__file__).parent / "data"
DEMO_DATA = Path(__file__).parent.parent / "configs" / "data"


class Watched(InventoryQuoter):
    def on_start(self):
        super().on_start()
        self.statuses = Counter()
        self.max_seen = 0.0
        self.sides_quoted = set()

    def on_execution(self, e):
        self.statuses[e.status] += 1
        self.max_seen = max(self.max_seen, abs(self.net_quantity(e.symbol)))
        self.sides_quoted.add(e.side)


def backtest(tmp_path, feed, body, **params):
    shutil.copy(DATA / feed if (DATA / feed).exists() else DEMO_DATA / feed, tmp_path / feed)
    (tmp_path / "run.yaml").write_text(body.format(feed=feed))
    config = load_config(tmp_path / "run.yaml")
    s = config.strategies[0]
    strategy = Watched(name="q", symbols=s.symbols, **{**s.params, **params})
    bt = Backtest(config, strategies=[strategy])
    return bt, strategy, bt.run()


BTC = """\
currency: USDT
balance: 100000
strategies:
  - class: strategies.quoter:InventoryQuoter
    symbols: [BTCUSDT]
    params: {{quantity: 0.01, half_spread_ticks: 100, skew_ticks: 100, max_inventory: 0.03,
              requote_ticks: 20, depth: 10}}
backtest: {{feed: {feed}}}
"""

EURUSD = """\
strategies:
  - class: strategies.quoter:InventoryQuoter
    symbols: [EURUSD]
    params: {{quantity: 10000, half_spread_ticks: 5, skew_ticks: 5, max_inventory: 30000, requote_ticks: 2}}
backtest: {{feed: {feed}, latency_ms: 1, depth: {{levels: 5, size: 20000}}}}
"""


def test_quotes_both_sides_on_recorded_depth_and_amends_instead_of_replacing(tmp_path):
    bt, s, result = backtest(tmp_path, "btcusdt_binance_depth10_300.jsonl.gz", BTC)
    assert not bt.kernel.failures
    assert s.statuses["AMENDED"] > 0 and s.statuses["FILLED"] > 0
    assert s.sides_quoted == {"BUY", "SELL"}
    # at most two working quotes at any time: amend moves them, it never stacks new ones
    assert len(bt.book.working_orders()) <= 2
    assert bt.discrepancies() == []


def test_inventory_stays_within_its_limit(tmp_path):
    bt, s, result = backtest(tmp_path, "histdata_eurusd_ticks_2020-01-01.jsonl.gz", EURUSD)
    assert not bt.kernel.failures
    assert s.statuses["FILLED"] > 10
    assert s.max_seen <= 30_000 + 10_000  # the limit, plus the one quote that crossed it
    assert bt.discrepancies() == []


def test_skew_moves_quotes_against_the_inventory(tmp_path):
    seen = []

    class Skewed(Watched):
        def requote(self, symbol, fair):
            seen.append((self.net_quantity(symbol), fair, self.targets(symbol, fair)))
            super().requote(symbol, fair)

    shutil.copy(DEMO_DATA / "histdata_eurusd_ticks_2020-01-01.jsonl.gz", tmp_path / "f.jsonl.gz")
    (tmp_path / "run.yaml").write_text(EURUSD.format(feed="f.jsonl.gz"))
    config = load_config(tmp_path / "run.yaml")
    bt = Backtest(config, strategies=[Skewed(symbols=["EURUSD"], **config.strategies[0].params)])
    bt.run()
    centre = {}
    for inventory, fair, t in seen:
        centre.setdefault((inventory > 0) - (inventory < 0), []).append((t["BUY"] + t["SELL"]) / 2 - fair)
    # long: quotes centred below fair (sell more readily); short: above; flat: on it
    assert set(centre) == {-1, 0, 1}
    assert max(centre[1]) < 0 < min(centre[-1])
    assert all(abs(c) < 1e-12 for c in centre[0])
