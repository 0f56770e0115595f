"""The backtest end to end: a YAML file, a real recorded feed, the report."""

from __future__ import annotations

import shutil
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from engine.backtest import Backtest
from engine.cli import main
from engine.config import load_config
from engine.report import write_report
from strategies import Strategy

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "sma_cross.yaml"
FEED = ROOT / "configs" / "data" / "histdata_eurusd_ticks_2020-01-01.jsonl.gz"


def write_config(tmp_path: Path, body: str) -> Path:
    shutil.copy(FEED, tmp_path / "feed.jsonl.gz")
    path = tmp_path / "run.yaml"
    path.write_text(body)
    return path


SMA = """\
account: acc_t
currency: USD
balance: 100000
strategies:
  - class: strategies.sma_cross:SmaCross
    name: sma
    symbols: [EURUSD]
    params: {{fast: 10, slow: 50, quantity: 10000}}
risk: {{{risk}}}
backtest: {{feed: feed.jsonl.gz, latency_ms: {latency}, commission_per_million: 20}}
"""


def run(tmp_path, risk="", latency=0):
    bt = Backtest(load_config(write_config(tmp_path, SMA.format(risk=risk, latency=latency))))
    return bt, bt.run()


def test_demo_config_trades_and_the_book_agrees_with_the_venue(tmp_path):
    bt, result = run(tmp_path)
    assert result.quotes == 9_500
    assert len(result.trades) > 50
    assert bt.discrepancies() == []
    # position = sum of fills, per symbol, from the venue's own deals
    signed = sum(Decimal(repr(t.quantity)) * (1 if t.side == "BUY" else -1) for t in result.trades)
    assert float(signed) == bt.book.net_quantity("EURUSD")
    # balance = initial + sum(realized - commission); equity = balance + unrealized
    booked = sum(Decimal(repr(t.realized_pnl)) - Decimal(repr(t.commission)) for t in result.trades)
    assert bt.ledger.balance == Decimal("100000") + booked
    assert bt.ledger.equity() == bt.ledger.balance + bt.ledger.unrealized()
    assert result.fees == pytest.approx(sum(t.commission for t in result.trades))
    # SmaCross targets +-10,000: never more than that held
    assert abs(bt.book.net_quantity("EURUSD")) == 10_000


def test_same_inputs_give_byte_identical_reports(tmp_path):
    outs = []
    for i in range(2):
        _, result = run(tmp_path, latency=5)
        files = write_report(result, tmp_path / f"out{i}")
        outs.append({k: p.read_bytes() for k, p in files.items()})
    assert outs[0] == outs[1]
    assert outs[0]["trades"].count(b"\n") > 50


def test_latency_delays_fills_to_a_later_quote(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, now = run(tmp_path / "a", latency=0)
    _, late = run(tmp_path / "b", latency=500)
    # the same first signal; the delayed order fills at the first quote 500 ms or more later
    assert late.trades[0].ts - now.trades[0].ts >= timedelta(milliseconds=500)


def test_risk_denials_are_counted_and_nothing_denied_trades(tmp_path):
    _, result = run(tmp_path, risk="max_order_qty: 15000")
    # flips need 20,000: denied; so only the first 10,000 entry trades
    assert result.denials.get("MAX_ORDER_QTY", 0) > 10
    assert all(t.quantity <= 15_000 for t in result.trades)


def test_a_failing_strategy_is_reported_and_the_run_completes(tmp_path):
    class Fails(Strategy):
        def on_start(self):
            self.subscribe(self.symbols)
            self.n = 0

        def on_quote(self, q):
            self.n += 1
            if self.n == 100:
                raise ZeroDivisionError("oops")

    cfg = load_config(write_config(tmp_path, SMA.format(risk="", latency=0)))
    from strategies.sma_cross import SmaCross

    bt = Backtest(cfg, strategies=[Fails(name="fails", symbols=["EURUSD"]),
                                   SmaCross(name="sma", symbols=["EURUSD"])])
    result = bt.run()
    assert [f.strategy for f in bt.kernel.failures] == ["fails"]
    assert result.quotes == 9_500 and len(result.trades) > 50


def test_cli_backtest_writes_the_report_and_prints_a_table(tmp_path, capsys):
    assert main(["backtest", str(DEMO), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Sharpe" in printed or "sharpe" in printed.lower()
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"summary.json", "trades.csv", "equity.png"}


def test_cli_reports_a_bad_config_with_its_key(tmp_path, capsys):
    path = write_config(tmp_path, SMA.format(risk="max_order_qtty: 5", latency=0))
    assert main(["backtest", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "risk.max_order_qtty" in err


def test_make_feed_then_backtest_it(tmp_path, capsys):
    feed = tmp_path / "synthetic.jsonl.gz"
    assert main(["make-feed", "--out", str(feed), "--symbols", "EURUSD,USDJPY", "--quotes", "5000",
                 "--seed", "3"]) == 0
    body = SMA.format(risk="", latency=0).replace("feed.jsonl.gz", feed.name)
    (tmp_path / "run.yaml").write_text(body)
    bt = Backtest(load_config(tmp_path / "run.yaml"))
    result = bt.run()
    assert result.quotes == 5000 and result.feed_stats["malformed"] == 0
    assert result.trades and bt.discrepancies() == []


def test_python_dash_m_engine_is_the_cli(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "engine", "backtest", str(DEMO), "--out",
                           str(tmp_path), "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "summary.json").exists()


def test_every_portfolio_snapshot_agrees_with_the_book(tmp_path):
    from strategies.sma_cross import SmaCross

    class Listening(SmaCross):
        def on_start(self):
            super().on_start()
            self.subscribe(self.symbols, portfolio=True)
            self.snapshots = 0

        def on_portfolio(self, portfolio):
            self.snapshots += 1

    cfg = load_config(write_config(tmp_path, SMA.format(risk="", latency=3)))
    s = Listening(name="sma", symbols=["EURUSD"])
    bt = Backtest(cfg, strategies=[s])
    result = bt.run()
    assert s.snapshots >= len(result.trades) // 2  # one per order at least
    assert bt.discrepancies() == []
