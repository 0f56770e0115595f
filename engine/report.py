"""The backtest report: what a run did, as files and as a terminal table.

The backtest driver hands over one frozen ``BacktestResult``; this module
turns it into ``summary.json``, ``trades.csv`` and ``equity.png`` and a rich
table. The files are byte-identical for the same result (sorted keys, floats
rounded before they are written, no timestamps or versions in the PNG), so a
run can be diffed against another and a regression shows as a changed file.
``wall_seconds`` is shown in the table only, never written. The maths is in
``engine.metrics``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path

import attrs
import numpy as np

from engine import metrics as m

SUMMARY_FILE = "summary.json"
TRADES_FILE = "trades.csv"
EQUITY_FILE = "equity.png"

TRADE_COLUMNS = (
    "ts", "symbol", "side", "quantity", "price", "commission", "realized_pnl",
    "order_id", "position_id", "client_order_id", "strategy",
)  # fmt: skip


@attrs.frozen
class TradeRow:
    """One deal (fill booking) of the account, as ``trades.csv`` lists it."""

    ts: datetime
    symbol: str
    side: str
    quantity: float
    price: float
    commission: float
    realized_pnl: float
    order_id: str
    position_id: str
    client_order_id: str | None
    strategy: str | None


@attrs.frozen
class BacktestResult:
    """Everything a finished backtest reports, filled in by the driver.

    Attributes:
        start / end: the venue clock's span (None if no event was replayed).
        equity: ``(time, equity)`` samples in time order: regular samples plus
            one at each fill.
        exposure: fraction of sampled time with an open position (0..1).
        trades: the deals, in time order.
        closed_positions_pnl: realized pnl of each closed position.
        denials / rejections: risk denials / venue errors and cancels, by reason.
        feed_stats: line counts etc. of the replay (JSON-able values).
        wall_seconds: how long the run took; never written to files.
    """

    config_name: str
    feed: str
    strategies: tuple[str, ...]
    currency: str
    start: datetime | None
    end: datetime | None
    initial_balance: float
    final_balance: float
    final_equity: float
    equity: tuple[tuple[datetime, float], ...]
    exposure: float
    trades: tuple[TradeRow, ...]
    closed_positions_pnl: tuple[float, ...]
    fees: float
    orders: int
    fills: int
    denials: Mapping[str, int]
    rejections: Mapping[str, int]
    feed_stats: Mapping[str, object]
    quotes: int
    wall_seconds: float | None = None


# --------------------------------------------------------------------------
# Summary


def iso(ts: datetime | None) -> str | None:
    """ISO-8601 UTC ending in ``Z`` (naive times are taken as UTC)."""
    if ts is None:
        return None
    ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)
    text = ts.replace(tzinfo=None).isoformat()
    return text + "Z"


def _round(x: float | None, digits: int) -> float | None:
    """Rounded for stable output; None for None/NaN/inf; no ``-0.0``."""
    x = m.finite(x)
    if x is None:
        return None
    return round(x, digits) + 0.0


def _money(x: float | None) -> float | None:
    return _round(x, 2)


def _ratio(x: float | None) -> float | None:
    return _round(x, 6)


def _jsonable(x: object) -> object:
    """Feed stats as plain JSON values (sorted later by ``json.dumps``)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, float):
        return _round(x, 9)
    if isinstance(x, datetime):
        return iso(x)
    if isinstance(x, (np.integer, np.floating)):
        return _jsonable(x.item())
    return str(x)


def summarize(result: BacktestResult, period: timedelta = m.HOUR) -> dict:
    """The key figures of a run as a JSON-able dict.

    Money is in the account currency rounded to cents; percentages are in
    percent; ``win_rate`` and ``exposure`` are fractions (0..1). ``net_pnl``
    is ``final_equity - initial_balance`` (open positions marked to market),
    ``gross_pnl`` is that before fees. Sharpe and Sortino are annualized from
    simple returns of the equity curve resampled onto a ``period`` grid (last
    value per period; hourly by default, x sqrt(8760)), see ``engine.metrics``;
    ``ratio_basis`` says which grid was used. Undefined figures are None
    (JSON ``null``), never NaN.
    """
    times = [t for t, _ in result.equity]
    values = np.fromiter((v for _, v in result.equity), float, len(result.equity))
    grid = m.resample_last(times, values, period)
    returns = m.simple_returns(grid)
    ppy = m.periods_per_year(period)
    dd = m.max_drawdown(values)
    ts = m.trade_stats(result.closed_positions_pnl)
    net = result.final_equity - result.initial_balance
    init = result.initial_balance
    return {
        "config_name": result.config_name,
        "feed": result.feed,
        "strategies": list(result.strategies),
        "currency": result.currency,
        "start": iso(result.start),
        "end": iso(result.end),
        "initial_balance": _money(init),
        "final_balance": _money(result.final_balance),
        "final_equity": _money(result.final_equity),
        "net_pnl": _money(net),
        "gross_pnl": _money(net + result.fees),
        "realized_pnl": _money(sum(t.realized_pnl for t in result.trades)),
        "unrealized_pnl": _money(result.final_equity - result.final_balance),
        "fees": _money(result.fees),
        "total_return_pct": _ratio(net / init * 100.0) if init > 0 else None,
        "sharpe": _ratio(m.sharpe(returns, ppy)),
        "sortino": _ratio(m.sortino(returns, ppy)),
        "ratio_basis": {
            "period_seconds": period.total_seconds(),
            "periods_per_year": _ratio(ppy),
            "returns": int(returns.size),
        },
        "max_drawdown": _money(dd.amount),
        "max_drawdown_pct": _ratio(dd.pct),
        "closed_positions": ts.count,
        "wins": ts.wins,
        "losses": ts.losses,
        "win_rate": _ratio(ts.win_rate),
        "profit_factor": _ratio(ts.profit_factor),
        "gross_profit": _money(ts.gross_profit),
        "gross_loss": _money(ts.gross_loss),
        "avg_win": _money(ts.avg_win),
        "avg_loss": _money(ts.avg_loss),
        "expectancy": _money(ts.expectancy),
        "exposure": _ratio(result.exposure),
        "trades": len(result.trades),
        "orders": result.orders,
        "fills": result.fills,
        "quotes": result.quotes,
        "equity_samples": len(result.equity),
        "denials": {str(k): int(v) for k, v in sorted(result.denials.items())},
        "rejections": {str(k): int(v) for k, v in sorted(result.rejections.items())},
        "feed_stats": _jsonable(result.feed_stats),
    }


# --------------------------------------------------------------------------
# Files


def _num(x: float) -> str:
    """Shortest text that reads back as the same float."""
    return repr(float(x)) if isinstance(x, float) else str(x)


def write_trades(result: BacktestResult, path: Path) -> None:
    """``trades.csv``: a header and one row per deal, times in UTC ``...Z``."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(TRADE_COLUMNS)
        for t in result.trades:
            out.writerow((
                iso(t.ts), t.symbol, t.side, _num(t.quantity), _num(t.price),
                f"{t.commission:.2f}", f"{t.realized_pnl:.2f}", t.order_id,
                t.position_id, t.client_order_id or "", t.strategy or "",
            ))  # fmt: skip


def write_report(
    result: BacktestResult, out_dir: str | Path, period: timedelta = m.HOUR
) -> dict[str, Path]:
    """Write ``summary.json``, ``trades.csv`` and ``equity.png`` into ``out_dir``.

    The directory is created if missing; existing files are replaced. The
    same result always gives byte-identical files.

    Returns:
        ``{"summary": path, "trades": path, "equity": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(result, period)
    paths = {
        "summary": out / SUMMARY_FILE,
        "trades": out / TRADES_FILE,
        "equity": out / EQUITY_FILE,
    }
    text = json.dumps(summary, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False)
    paths["summary"].write_text(text + "\n", encoding="utf-8")
    write_trades(result, paths["trades"])
    plot_equity(result, summary, paths["equity"])
    return paths


# --------------------------------------------------------------------------
# Plot

_PLOT_POINTS = 4000  # above this, keep per-bin extremes: the shape stays, the PNG stays fast


def _plot_indices(values: np.ndarray, drawdown: np.ndarray) -> np.ndarray:
    """Sample indices to draw: all of them, or per bin the first, last and extremes."""
    n = values.size
    if n <= _PLOT_POINTS:
        return np.arange(n)
    edges = np.linspace(0, n, _PLOT_POINTS // 4 + 1).astype(int)
    keep = []
    for a, b in zip(edges[:-1], edges[1:]):
        if b > a:
            v, d = values[a:b], drawdown[a:b]
            keep += [a, b - 1, a + int(np.argmin(v)), a + int(np.argmax(v)), a + int(np.argmin(d))]
    return np.unique(np.asarray(keep))


def _utc64(times) -> np.ndarray:
    """Times as naive-UTC ``datetime64[us]`` (what the axis shows, labelled UTC)."""
    out = [
        (t if t.tzinfo is None else t.astimezone(timezone.utc).replace(tzinfo=None))
        for t in times
    ]
    return np.array(out, dtype="datetime64[us]")


def plot_equity(result: BacktestResult, summary: dict, path: Path) -> None:
    """``equity.png``: the equity curve over its drawdown, on one time axis.

    Drawn on an Agg canvas of a standalone ``Figure`` (no pyplot state), in
    matplotlib's default style whatever the user's matplotlibrc says, and
    saved without the ``Software`` tag, so the bytes depend on the data only.
    """
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    cur = result.currency
    values = np.fromiter((v for _, v in result.equity), float, len(result.equity))
    drawdown = m.drawdown_series(values)
    idx = _plot_indices(values, drawdown)
    x = _utc64([result.equity[i][0] for i in idx])
    strategies = ", ".join(result.strategies) or "-"
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(10, 6.5), dpi=100)
        FigureCanvasAgg(fig)
        ax_eq, ax_dd = fig.subplots(
            2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
        )
        fig.suptitle(
            f"{result.config_name}: {strategies} on {Path(result.feed).name}", fontsize=13
        )
        ret = summary["total_return_pct"]
        ax_eq.set_title(
            f"net P&L {summary['net_pnl']:,.2f} {cur}"
            + (f" ({ret:+.2f} %)" if ret is not None else "")
            + f"   max drawdown {summary['max_drawdown']:,.2f} {cur}"
            + f" ({summary['max_drawdown_pct']:.2f} %)"
            + f"   Sharpe {_fmt(summary['sharpe'], '.2f')}"
            + f"   deals {summary['trades']}",
            fontsize=9, loc="left",
        )  # fmt: skip
        if values.size:
            ax_eq.axhline(result.initial_balance, color="0.6", lw=0.8, ls="--",
                          label=f"initial balance {result.initial_balance:,.2f}")  # fmt: skip
            marker = "o" if values.size == 1 else None
            ax_eq.plot(x, values[idx], color="tab:blue", lw=1.0, marker=marker, label="equity")
            ax_dd.fill_between(x, drawdown[idx], 0.0, color="tab:red", alpha=0.35, lw=0)
            ax_dd.plot(x, drawdown[idx], color="tab:red", lw=0.8, marker=marker)
            if x[0] == x[-1]:  # one instant: show an hour either side, not years
                hour = np.timedelta64(1, "h")
                ax_dd.set_xlim(x[0] - hour, x[0] + hour)
            locator = AutoDateLocator()
            ax_dd.xaxis.set_major_locator(locator)
            ax_dd.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        else:
            ax_eq.text(0.5, 0.5, "no equity samples", transform=ax_eq.transAxes,
                       ha="center", va="center", color="0.4")  # fmt: skip
        if values.size:
            ax_eq.legend(loc="best", fontsize=8, framealpha=0.8)
        ax_eq.set_ylabel(f"equity ({cur})")
        ax_eq.grid(True, alpha=0.3)
        ax_dd.set_ylabel(f"drawdown ({cur})")
        ax_dd.set_xlabel("time (UTC)")
        ax_dd.grid(True, alpha=0.3)
        for ax in (ax_eq, ax_dd):
            ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        fig.align_ylabels((ax_eq, ax_dd))
        fig.savefig(path, format="png", metadata={"Software": None})


# --------------------------------------------------------------------------
# Terminal


def _fmt_money(x: float | None, currency: str) -> str:
    return "-" if x is None else f"{x:,.2f} {currency}"


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def _fmt_counts(counts: Mapping[str, int]) -> str:
    if not counts:
        return "0"
    total = sum(counts.values())
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return f"{total} ({parts})"


def render_table(result: BacktestResult, console=None, summary: dict | None = None):
    """Print the key figures as a rich table and return the ``Table``.

    Args:
        result: the run.
        console: a ``rich.console.Console`` (e.g. one with ``record=True`` to
            capture the text); a fresh one on stdout if None.
        summary: ``summarize(result)`` if already computed.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    s = summary if summary is not None else summarize(result)
    cur = result.currency
    strategies = ", ".join(result.strategies) or "-"
    title = Text(f"{result.config_name}: {strategies} on {Path(result.feed).name}")
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("figure", style="bold")
    table.add_column("value", justify="right")
    net = s["net_pnl"] or 0.0
    colour = "green" if net > 0 else "red" if net < 0 else ""
    rate = ""
    if result.wall_seconds and result.wall_seconds > 0:
        per_s = result.quotes / result.wall_seconds
        rate = f"  ({per_s:,.0f}/s in {result.wall_seconds:.2f} s)"
    dd_pct = _fmt(s["max_drawdown_pct"], ".2f", " %")
    rows = [
        ("Period", f"{s['start'] or '-'} .. {s['end'] or '-'}"),
        ("Market events", f"{result.quotes:,}{rate}"),
        ("Initial balance", _fmt_money(s["initial_balance"], cur)),
        ("Final equity", _fmt_money(s["final_equity"], cur)),
        ("Net P&L", Text(_fmt_money(s["net_pnl"], cur), style=colour)),
        ("Return", _fmt(s["total_return_pct"], ".2f", " %")),
        ("Gross P&L / fees", f"{_fmt_money(s['gross_pnl'], cur)} / {_fmt_money(s['fees'], cur)}"),
        ("Max drawdown", f"{_fmt_money(s['max_drawdown'], cur)} ({dd_pct})"),
        ("Sharpe / Sortino", f"{_fmt(s['sharpe'], '.2f')} / {_fmt(s['sortino'], '.2f')}"),
        ("Closed positions", f"{s['closed_positions']} ({s['wins']} won, {s['losses']} lost)"),
        ("Win rate", _fmt(None if s["win_rate"] is None else s["win_rate"] * 100, ".1f", " %")),
        ("Profit factor", _fmt(s["profit_factor"], ".2f")),
        ("Avg win / loss", f"{_fmt_money(s['avg_win'], cur)} / {_fmt_money(s['avg_loss'], cur)}"),
        ("Exposure", _fmt(None if s["exposure"] is None else s["exposure"] * 100, ".1f", " %")),
        ("Deals / orders / fills", f"{s['trades']} / {s['orders']} / {s['fills']}"),
        ("Risk denials", _fmt_counts(s["denials"])),
        ("Venue rejections", _fmt_counts(s["rejections"])),
    ]
    for name, value in rows:  # Text, so a reason like "[x]" is not read as markup
        table.add_row(name, value if isinstance(value, Text) else Text(value))
    (console if console is not None else Console()).print(table)
    return table

