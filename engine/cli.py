"""The composition root: ``triotrade <command>`` wires concrete classes together.

    triotrade backtest CONFIG [--out DIR] [--strict] [--no-progress]
    triotrade make-feed --out FILE [--symbols ...] [--quotes N] [--seed S] [--depth L]
    triotrade sim --config configs/sim.yaml [--memory] [--host H] [--port P]
    triotrade run CONFIG [--venue sim|URL] [--record FILE] [--duration S] [--log-json] [--out DIR]
    triotrade record --venue sim|URL|CONFIG --symbols A,B [--depth N] --out FILE [--duration S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import attrs
from rich.console import Console

from engine.errors import TriotradeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="triotrade", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bt = sub.add_parser("backtest", help="replay a recorded feed through the config's strategies")
    bt.add_argument("config", type=Path, help="the run's YAML file")
    bt.add_argument("--out", type=Path, help="report directory (default: backtest.out or out/<config>)")
    bt.add_argument("--strict", action="store_true", help="a malformed feed line is fatal")
    bt.add_argument("--no-progress", action="store_true", help="no progress bar")
    run = sub.add_parser("run", help="trade the config's strategies live")
    run.add_argument("config", type=Path, help="the run's YAML file")
    run.add_argument("--venue", help="`sim` (the embedded paper-trading server) or a ws(s):// URL "
                     "(credentials from the YAML's venue.login); default: the YAML's venue")
    run.add_argument("--record", type=Path, help="also record every server message to this feed file")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--log-json", action="store_true", help="structured JSON log lines, no status line")
    run.add_argument("--out", type=Path, help="report directory (default: out/<config>-live)")
    rec = sub.add_parser("record", help="record a venue's market data to a feed file")
    rec.add_argument("--venue", required=True, help="`sim`, a ws(s):// URL, or a YAML file with `venue:`")
    rec.add_argument("--symbols", required=True, help="comma-separated, e.g. EURUSD,GBPUSD")
    rec.add_argument("--depth", type=int, default=0, help="depth levels to record too (0: quotes only)")
    rec.add_argument("--out", type=Path, required=True, help="feed file (.jsonl or .jsonl.gz)")
    rec.add_argument("--duration", type=float, help="stop after this many seconds")
    rec.add_argument("--account", help="the account (default: the YAML's, or $TRADER_ACCOUNT)")
    sub.add_parser("make-feed", help="write a seeded synthetic feed (make-feed --help)")
    sub.add_parser("sim", help="serve the paper-trading Trader server (sim --help)")
    argv = sys.argv[1:] if argv is None else argv
    err = Console(stderr=True)
    try:
        if argv[:1] == ["make-feed"]:
            from adapters import feedgen

            return feedgen.main(argv[1:])
        if argv[:1] == ["sim"]:
            from adapters.sim import server

            return server.main(argv[1:])
        args = parser.parse_args(argv)
        if args.command == "run":
            from adapters.trader_ws.commands import run_command

            return run_command(args, err)
        if args.command == "record":
            from adapters.trader_ws.commands import record_command

            return record_command(args, err)
        return _backtest(args, err)
    except TriotradeError as exc:
        err.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


def _backtest(args: argparse.Namespace, err: Console) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from engine.backtest import Backtest
    from engine.config import load_config
    from engine.report import render_table, write_report

    config = load_config(args.config)
    if args.strict:
        config = attrs.evolve(config, backtest=attrs.evolve(config.backtest, strict=True))
    out = args.out or (Path(config.backtest.out) if config.backtest and config.backtest.out
                       else Path("out") / args.config.stem)
    console = Console()
    show = not args.no_progress and console.is_terminal
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=console, transient=True, disable=not show) as bar:
        task = bar.add_task("backtest", total=None)
        update = (lambda done, total: bar.update(task, completed=done, total=total)) if show else None
        backtest = Backtest(config, name=args.config.stem, progress=update)
        started = time.perf_counter()
        result = attrs.evolve(backtest.run(), wall_seconds=time.perf_counter() - started)
    for failure in backtest.kernel.failures:
        err.print(f"[bold red]strategy {failure.strategy} stopped[/] in {failure.hook}: {failure.error}",
                  highlight=False)
    for problem in backtest.discrepancies():
        err.print(f"[bold red]book and venue disagree:[/] {problem}", highlight=False)
    files = write_report(result, out)
    render_table(result, console)
    console.print("report: " + ", ".join(str(p) for p in files.values()), highlight=False)
    return 1 if backtest.kernel.failures else 0


if __name__ == "__main__":
    sys.exit(main())
