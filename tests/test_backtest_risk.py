"""Backtests where the risk gate and the venue say no, and several feeds run together."""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path

from engine.backtest import Backtest
from engine.config import load_config
from risk import TradingState
from strategies import Strategy

DATA = Path(__file__).parent / "data"
DEMO = Path(__file__).parent.parent / "configs" / "data" / "histdata_eurusd_ticks_2020-01-01.jsonl.gz"


def config(tmp_path, body: str, *feeds: Path):
    for f in feeds:
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "run.yaml").write_text(body)
    return load_config(tmp_path / "run.yaml")


class Greedy(Strategy):
    """Buys far more than the account's margin allows, once."""

    def on_start(self):
        self.subscribe(self.symbols)
        self.rejections = []

    def on_quote(self, q):
        if not self.rejections and not self.working_orders():
            self.buy(q.symbol, 1_000_000_000)

    def on_reject(self, rejection):
        self.rejections.append(rejection)


def test_a_venue_refusal_reaches_on_reject_and_changes_nothing(tmp_path):
    cfg = config(tmp_path, """
balance: 1000
strategies: [{class: "strategies.sma_cross:SmaCross", symbols: [EURUSD]}]
backtest: {feed: histdata_eurusd_ticks_2020-01-01.jsonl.gz}
""", DEMO)
    greedy = Greedy(name="greedy", symbols=["EURUSD"])
    bt = Backtest(cfg, strategies=[greedy])
    result = bt.run()
    (rejection,) = greedy.rejections
    assert (rejection.source, rejection.reason) == ("venue", "INSUFFICIENT_MARGIN")
    assert rejection.client_order_id.startswith("greedy-")
    assert bt.book.order_by_client_id(rejection.client_order_id).status == "REJECTED"
    assert result.trades == () and bt.ledger.balance == Decimal(1000)
    assert result.rejections == {"INSUFFICIENT_MARGIN": 1}


def test_daily_loss_limit_halts_flattens_and_denies_new_orders(tmp_path):
    cfg = config(tmp_path, """
balance: 100000
strategies: [{class: "strategies.sma_cross:SmaCross", name: sma, symbols: [EURUSD], params: {quantity: 100000}}]
risk: {daily_loss_limit: 50, flatten_on_halt: true}
backtest: {feed: histdata_eurusd_ticks_2020-01-01.jsonl.gz, commission_per_million: 20, equity_sample_s: 10}
""", DEMO)
    bt = Backtest(cfg)
    result = bt.run()
    assert bt.gate.state is TradingState.HALTED
    assert not bt.ledger.positions  # flattened
    assert result.denials.get("DAILY_LOSS", 0) > 0  # the strategy kept trying
    # the loss stopped near the limit: within one flip's worth of slippage
    assert 50 <= 100_000 - result.final_equity < 50 + 100
    assert bt.discrepancies() == []


def test_two_feeds_merge_by_time_and_a_jpy_pair_converts_to_the_account_currency(tmp_path):
    cfg = config(tmp_path, """
balance: 100000
strategies:
  - {class: "strategies.sma_cross:SmaCross", name: eu, symbols: [EURUSD]}
  - {class: "strategies.sma_cross:SmaCross", name: uj, symbols: [USDJPY]}
backtest: {feed: [eurusd_oanda_3k.jsonl.gz, usdjpy_truefx_1k.jsonl.gz], commission_per_million: 20}
""", DATA / "eurusd_oanda_3k.jsonl.gz", DATA / "usdjpy_truefx_1k.jsonl.gz")
    bt = Backtest(cfg)
    result = bt.run()
    assert result.quotes == 4_000
    by = {s: [t for t in result.trades if t.symbol == s] for s in ("EURUSD", "USDJPY")}
    assert by["EURUSD"] and by["USDJPY"]
    assert by["USDJPY"][-1].ts < by["EURUSD"][0].ts  # 2013 before 2014: merged by time
    # JPY P&L arrives in USD: a deal's realized P&L is the price P&L / the USDJPY mid, to the cent
    closing = [t for t in by["USDJPY"] if t.realized_pnl]
    assert closing and all(abs(t.realized_pnl) < 50 for t in closing)  # USD cents, not yen
    assert bt.discrepancies() == []
    booked = sum(Decimal(repr(t.realized_pnl)) - Decimal(repr(t.commission)) for t in result.trades)
    assert bt.ledger.balance == Decimal(100000) + booked


class Protects(Strategy):
    """Buys once, sets a stop-loss and take-profit on the position, then closes half by hand."""

    def on_start(self):
        self.subscribe(self.symbols)
        self.step = 0
        self.seen = []

    def on_quote(self, q):
        pos = self.position(q.symbol)
        if self.step == 0:
            self.buy(q.symbol, 20_000)
            self.step = 1
        elif self.step == 1 and pos is not None:
            self.amend_position(q.symbol, stop_loss=q.bid - 0.0050, take_profit=q.ask + 0.0050)
            self.step = 2
        elif self.step == 2 and pos is not None and pos.stop_loss is not None:
            self.seen.append((pos.stop_loss, pos.take_profit))
            self.close(q.symbol, 10_000)
            self.step = 3

    def on_execution(self, e):
        self.seen.append((e.status, e.reason))


def test_close_and_amend_position_from_a_strategy(tmp_path):
    cfg = config(tmp_path, """
strategies: [{class: "strategies.sma_cross:SmaCross", symbols: [EURUSD]}]
backtest: {feed: histdata_eurusd_ticks_2020-01-01.jsonl.gz}
""", DEMO)
    s = Protects(name="p", symbols=["EURUSD"])
    bt = Backtest(cfg, strategies=[s])
    bt.run()
    levels = [x for x in s.seen if isinstance(x[0], float)]
    assert levels and levels[0][0] < levels[0][1]  # the book learned SL and TP
    assert ("FILLED", "CLOSE_POSITION") in s.seen  # the partial close, a server-created order
    remaining = bt.ledger.positions.get("EURUSD")
    # what is left is 10,000 unless the stop-loss or take-profit closed it later
    assert remaining is None or remaining.quantity == 10_000
    assert bt.discrepancies() == []
