"""The backtest report: summary figures, files that diff cleanly, the table."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest
from rich.console import Console

from engine.report import (
    TRADE_COLUMNS,
    BacktestResult,
    TradeRow,
    render_table,
    summarize,
    write_report,
)

T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parents[1]


def make_result(**changes) -> BacktestResult:
    """A small run: hourly equity 100000 -> 100100 -> 99900 -> 100200 -> 100150."""
    equity = tuple(
        (T0 + timedelta(hours=h), v)
        for h, v in enumerate([100_000.0, 100_100.0, 99_900.0, 100_200.0, 100_150.0])
    )
    trades = (
        TradeRow(T0 + timedelta(minutes=30), "EURUSD", "BUY", 10_000.0, 1.0841, 0.22, 0.0,
                 "o-1", "p-1", "c-1", "SmaCross"),
        TradeRow(T0 + timedelta(hours=2, microseconds=123456), "EURUSD", "SELL", 10_000.0,
                 1.0861, 0.22, 20.0, "o-2", "p-1", None, None),
    )  # fmt: skip
    base = BacktestResult(
        config_name="sma_cross",
        feed="data/eurusd.jsonl.gz",
        strategies=("SmaCross",),
        currency="USD",
        start=T0,
        end=T0 + timedelta(hours=4),
        initial_balance=100_000.0,
        final_balance=100_019.56,
        final_equity=100_150.0,
        equity=equity,
        exposure=0.5,
        trades=trades,
        closed_positions_pnl=(20.0, -10.0, 40.0),
        fees=0.44,
        orders=3,
        fills=2,
        denials={"MAX_POSITION": 2, "HALTED": 1},
        rejections={"INSUFFICIENT_MARGIN": 1},
        feed_stats={"lines": 1000, "bad_lines": 0, "rate": 0.1 + 0.2},
        quotes=998,
        wall_seconds=0.5,
    )
    return attrs.evolve(base, **changes)


EMPTY = dict(
    start=None, end=None, initial_balance=0.0, final_balance=0.0, final_equity=0.0,
    equity=(), exposure=0.0, trades=(), closed_positions_pnl=(), fees=0.0, orders=0,
    fills=0, denials={}, rejections={}, feed_stats={}, quotes=0, wall_seconds=None,
)  # fmt: skip


# --------------------------------------------------------------------------
# summarize


def test_summary_figures():
    s = summarize(make_result())
    assert s["net_pnl"] == 150.0
    assert s["gross_pnl"] == 150.44
    assert s["fees"] == 0.44
    assert s["realized_pnl"] == 20.0
    assert s["unrealized_pnl"] == 130.44
    assert s["total_return_pct"] == 0.15
    assert s["max_drawdown"] == 200.0
    assert s["max_drawdown_pct"] == pytest.approx(200 / 100_100 * 100, abs=1e-6)
    assert s["closed_positions"] == 3 and s["wins"] == 2 and s["losses"] == 1
    assert s["win_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert s["profit_factor"] == 6.0
    assert (s["avg_win"], s["avg_loss"]) == (30.0, -10.0)
    assert s["exposure"] == 0.5
    assert (s["trades"], s["orders"], s["fills"], s["quotes"]) == (2, 3, 2, 998)
    assert s["start"] == "2026-06-01T00:00:00Z" and s["end"] == "2026-06-01T04:00:00Z"
    assert list(s["denials"]) == ["HALTED", "MAX_POSITION"]
    assert s["rejections"] == {"INSUFFICIENT_MARGIN": 1}
    assert s["feed_stats"] == {"lines": 1000, "bad_lines": 0, "rate": 0.3}


def test_sharpe_is_from_hourly_returns_annualized_by_sqrt_8760():
    s = summarize(make_result())
    r = [0.001, 99_900 / 100_100 - 1, 100_200 / 99_900 - 1, 100_150 / 100_200 - 1]
    mean = sum(r) / 4
    sd = (sum((x - mean) ** 2 for x in r) / 3) ** 0.5
    down = (sum(min(x, 0) ** 2 for x in r) / 4) ** 0.5
    assert s["ratio_basis"] == {"period_seconds": 3600.0, "periods_per_year": 8760.0, "returns": 4}
    assert s["sharpe"] == pytest.approx(mean / sd * 8760**0.5, abs=1e-5)
    assert s["sortino"] == pytest.approx(mean / down * 8760**0.5, abs=1e-5)


def test_summary_on_another_grid():
    s = summarize(make_result(), period=timedelta(hours=2))
    assert s["ratio_basis"]["returns"] == 2  # 00:00 -> 02:00 -> 04:00
    assert s["ratio_basis"]["periods_per_year"] == 4380.0


def test_empty_run_gives_zeros_and_nulls_not_errors():
    s = summarize(make_result(**EMPTY))
    assert s["net_pnl"] == 0.0 and s["max_drawdown"] == 0.0 and s["trades"] == 0
    for key in ("total_return_pct", "sharpe", "sortino", "win_rate", "profit_factor",
                "avg_win", "avg_loss", "start", "end"):  # fmt: skip
        assert s[key] is None, key
    json.dumps(s, allow_nan=False)


def test_single_sample_and_flat_curve_have_no_ratios():
    one = summarize(make_result(equity=((T0, 100_000.0),)))
    flat = summarize(make_result(equity=tuple((T0 + timedelta(hours=h), 1e5) for h in range(9))))
    for s in (one, flat):
        assert s["sharpe"] is None and s["sortino"] is None
        assert s["max_drawdown"] == 0.0 and s["max_drawdown_pct"] == 0.0


def test_non_utc_times_are_reported_in_utc():
    cet = timezone(timedelta(hours=2))
    s = summarize(make_result(start=datetime(2026, 6, 1, 2, 0, tzinfo=cet)))
    assert s["start"] == "2026-06-01T00:00:00Z"


# --------------------------------------------------------------------------
# Files


def _read_all(paths: dict[str, Path]) -> dict[str, bytes]:
    return {k: p.read_bytes() for k, p in paths.items()}


def test_write_report_files(tmp_path):
    paths = write_report(make_result(), tmp_path / "out")
    assert set(paths) == {"summary", "trades", "equity"}
    assert [p.name for p in paths.values()] == ["summary.json", "trades.csv", "equity.png"]
    assert json.loads(paths["summary"].read_text()) == summarize(make_result())
    png = paths["equity"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1000, 650)  # width, height
    assert b"matplotlib" not in png  # no Software tag


def test_trades_csv(tmp_path):
    cet = timezone(timedelta(hours=1))
    res = make_result()
    late = attrs.evolve(res.trades[0], ts=datetime(2026, 6, 1, 5, tzinfo=cet))
    res = attrs.evolve(res, trades=res.trades + (late,))
    rows = list(csv.reader(write_report(res, tmp_path)["trades"].read_text().splitlines()))
    assert rows[0] == list(TRADE_COLUMNS)
    assert TRADE_COLUMNS == ("ts", "symbol", "side", "quantity", "price", "commission",
                             "realized_pnl", "order_id", "position_id", "client_order_id",
                             "strategy")  # fmt: skip
    assert rows[1] == ["2026-06-01T00:30:00Z", "EURUSD", "BUY", "10000.0", "1.0841", "0.22",
                       "0.00", "o-1", "p-1", "c-1", "SmaCross"]  # fmt: skip
    assert rows[2][0] == "2026-06-01T02:00:00.123456Z"
    assert rows[2][-2:] == ["", ""]  # no client order id, no strategy
    assert rows[3][0] == "2026-06-01T04:00:00Z"
    assert len(rows) == 4


def test_same_result_gives_byte_identical_files(tmp_path):
    a = _read_all(write_report(make_result(), tmp_path / "a"))
    b = _read_all(write_report(make_result(wall_seconds=9.0), tmp_path / "b"))
    assert a == b
    c = _read_all(write_report(make_result(final_equity=100_151.0), tmp_path / "c"))
    assert c["summary"] != a["summary"] and c["trades"] == a["trades"]
    d = _read_all(write_report(make_result(equity=make_result().equity[:-1]), tmp_path / "d"))
    assert d["equity"] != a["equity"]


def test_files_are_identical_from_another_process(tmp_path):
    paths = write_report(make_result(), tmp_path / "here")
    here = _read_all(paths)
    code = (
        "import sys; from tests.test_report import make_result;"
        "from engine.report import write_report; write_report(make_result(), sys.argv[1])"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there")],
                   cwd=ROOT, env=env, check=True)  # fmt: skip
    there = {k: (tmp_path / "there" / p.name).read_bytes() for k, p in paths.items()}
    assert here == there


def test_empty_and_single_sample_runs_still_write_files(tmp_path):
    for name, res in (
        ("empty", make_result(**EMPTY)),
        ("one", make_result(equity=((T0, 100_000.0),))),
    ):
        paths = write_report(res, tmp_path / name)
        assert paths["equity"].read_bytes()[:4] == b"\x89PNG"
        assert paths["trades"].read_text().count("\n") == 1 + len(res.trades)


def test_long_curve_is_plotted(tmp_path):
    equity = tuple(
        (T0 + timedelta(seconds=10 * i), 1e5 + (i % 977) - i / 100) for i in range(50_000)
    )
    paths = write_report(make_result(equity=equity), tmp_path)
    s = json.loads(paths["summary"].read_text())
    assert s["equity_samples"] == 50_000 and s["ratio_basis"]["returns"] == 139
    assert paths["equity"].stat().st_size > 10_000


# --------------------------------------------------------------------------
# Terminal


def test_render_table_shows_key_figures():
    console = Console(record=True, width=120, file=io.StringIO())
    table = render_table(make_result(), console)
    text = console.export_text()
    for needle in ("sma_cross: SmaCross on eurusd.jsonl.gz", "Net P&L", "150.00 USD",
                   "0.15 %", "200.00 USD", "Profit factor", "6.00", "66.7 %",
                   "3 (HALTED 1, MAX_POSITION 2)", "INSUFFICIENT_MARGIN 1",
                   "998", "1,996/s"):  # fmt: skip
        assert needle in text, needle
    assert table.row_count >= 15


def test_render_table_of_an_empty_run():
    console = Console(record=True, width=120, file=io.StringIO())
    render_table(make_result(**EMPTY), console)
    text = console.export_text()
    assert "Sharpe / Sortino" in text and "- / -" in text


def test_render_table_prints_names_literally():
    console = Console(record=True, width=120, file=io.StringIO())
    render_table(make_result(config_name="[bold]x", denials={"[red]R": 1}), console)
    text = console.export_text()
    assert "[bold]x: SmaCross" in text and "[red]R 1" in text
