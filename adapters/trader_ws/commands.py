"""The live commands, ``triotrade run`` and ``triotrade record`` (``engine.cli``
dispatches here, as it does to the simulator's ``adapters.sim.server.main``).

Picks the venue (the YAML's ``venue:``, a URL given on the command line, or
``sim``: the paper-trading server started in the same nursery on a free
loopback port), builds the ``TraderClient`` link and the ``LiveRuntime``,
and handles the signals: the first Ctrl-C or SIGTERM stops in order (``on_stop``,
cancels, their answers, close 1000, summary), a second one at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from adapters.recorder import Recorder
from adapters.trader_ws.client import TraderClient
from engine.config import LoginConfig, RunConfig, VenueSection
from engine.errors import ConfigError, TriotradeError, VenueError
from engine.runtime import Inbox, LiveRuntime

log = logging.getLogger("triotrade.live")

SIM = "sim"


async def start_venue(nursery: trio.Nursery, venue: str | None, section: VenueSection | None, *,
                      account: str, currency: str = "USD", balance: float = 100_000.0,
                      instruments=None, symbols: tuple[str, ...] = ()) -> VenueSection:
    """The venue to trade on: ``sim`` starts the embedded simulator in ``nursery``
    (with ``account`` and a synthetic market on ``symbols``); a URL uses
    ``section``'s login; None is ``section`` itself."""
    if venue == SIM:
        from adapters.sim.server import SimServer
        from adapters.sim.simconfig import embedded_sim_config

        password = secrets.token_urlsafe(16)
        sim = SimServer(embedded_sim_config(
            account=account, currency=currency, balance=balance, symbols=symbols,
            username="triotrade", password=password, instruments=instruments), env={})
        port = await nursery.start(sim.serve)
        log.info("embedded paper-trading server on 127.0.0.1:%d", port)
        return VenueSection(url=f"ws://127.0.0.1:{port}/api/v1/ws",
                            login=LoginConfig(username="triotrade", password=password))
    if section is None or section.login is None:
        if venue is None:
            raise ConfigError("venue", "no venue: give a `venue:` section (url and login) or --venue sim")
        raise ConfigError("venue.login", f"--venue {venue} needs a `venue.login` section for the credentials")
    if not venue:
        return section
    try:
        return attrs.evolve(section, url=venue)
    except ValueError as exc:  # the URL rules of venue.url
        raise ConfigError("--venue", str(exc)) from None


def _client(v: VenueSection, account: str, inbox: Inbox, recorder, *, reconcile: bool = True):
    return TraderClient(v.url, v.login.username, v.login.password, account, inbox,
                        ping_after_s=v.ping_interval_s, dead_after_s=v.dead_after_s,
                        recorder=recorder, reconcile=reconcile)


async def run_live(
    config: RunConfig, *, venue: str | None = None, record: Path | None = None,
    duration_s: float | None = None, name: str = "",
    status: Callable[[LiveRuntime], object] | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> LiveRuntime:
    """Trade ``config``'s strategies live until a signal, ``duration_s`` or a fatal error.

    ``status(runtime)`` is awaited in its own task if given (the status line)."""
    symbols = tuple(sorted({s for sc in config.strategies for s in sc.symbols}))
    if venue != SIM and config.venue is not None and config.venue.account:
        config = attrs.evolve(config, account=config.venue.account)  # the venue's name for it
    async with trio.open_nursery() as nursery:
        v = await start_venue(nursery, venue, config.venue, account=config.account,
                              currency=config.currency, balance=config.balance,
                              instruments=config.instruments, symbols=symbols)
        inbox = Inbox()
        # clientOrderIds must stay unique for the account's lifetime: two runs
        # started in the same second get different tags
        run_tag = f"{int(time.time()):x}{secrets.token_hex(2)}"
        runtime = LiveRuntime(config, inbox, run_tag=run_tag,
                              cancel_on_stop=v.cancel_on_stop, name=name)
        recorder = Recorder(record) if record is not None else None
        if recorder is not None:
            await nursery.start(recorder.run)  # flushes a quiet feed each second too
        client = _client(v, config.account, inbox, recorder)
        nursery.start_soon(_signals, runtime, nursery.cancel_scope)
        if duration_s is not None:
            nursery.start_soon(_stop_after, runtime, duration_s)
        if status is not None:
            nursery.start_soon(status, runtime)
        task_status.started(runtime)
        try:
            await runtime.run(client)
        finally:
            if recorder is not None:
                recorder.close()
        nursery.cancel_scope.cancel()
    return runtime


async def _stop_after(runtime: LiveRuntime, seconds: float) -> None:
    await trio.sleep(seconds)
    runtime.request_stop()


async def _signals(runtime: LiveRuntime, scope: trio.CancelScope) -> None:
    """First Ctrl-C / SIGTERM: orderly stop. Second: at once."""
    if sys.platform == "win32":  # pragma: no cover
        return
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not runtime.stop_requested:
                log.warning("%s: stopping (again to exit at once)", signal.Signals(signum).name)
                runtime.request_stop()
            else:
                log.warning("%s again: exiting at once", signal.Signals(signum).name)
                runtime.abort()
                scope.cancel()
                return


async def record_feed(
    *, venue: str | None, section: VenueSection | None, account: str, symbols: tuple[str, ...],
    depth: int, out: Path, duration_s: float | None = None, task_status=trio.TASK_STATUS_IGNORED,
) -> dict:
    """``triotrade record``: write every server message to ``out`` until a signal or ``duration_s``."""
    from engine import intents as it
    from engine.enums import EventKind

    async with trio.open_nursery() as nursery:
        v = await start_venue(nursery, venue, section, account=account, symbols=symbols)
        with Recorder(out) as recorder:
            await nursery.start(recorder.run)
            inbox = Inbox()
            nursery.start_soon(_discard, inbox)  # the recorder has what it needs
            client = _client(v, account, inbox, recorder, reconcile=False)
            await client.want([it.Subscribe(symbols, (EventKind.QUOTE,))]
                              + [it.DepthSubscribe(s, depth) for s in symbols if depth])
            nursery.start_soon(client.run)
            task_status.started(client)
            stop = trio.Event()
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                nursery.start_soon(_first_signal, signals, stop)
                with trio.move_on_after(duration_s if duration_s is not None else math.inf):
                    await stop.wait()
            await client.close(1000, "recording stopped")
            stats = {"lines": recorder.lines, "bytes": recorder.bytes, **client.status()}
        nursery.cancel_scope.cancel()
    if client.failure:
        raise VenueError(client.failure)
    return stats


async def _discard(inbox: Inbox) -> None:
    while True:
        await inbox.wait()
        inbox.events.clear()
        inbox.quotes.clear()
        inbox.depths.clear()


async def _first_signal(signals, stop: trio.Event) -> None:
    async for _ in signals:
        stop.set()
        return


# -- the commands ------------------------------------------------------------------------


class _JsonLog(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"ts": record.created, "level": record.levelname, "logger": record.name,
                           "message": record.getMessage()})


def _setup_logging(as_json: bool, terminal: bool = False) -> None:
    if terminal and not as_json:  # above the status line, not through it
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonLog() if as_json else logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("hypercorn").setLevel(logging.WARNING)


def _status_text(st: dict, rate: float) -> str:
    positions = " ".join(f"{s} {q:+,.0f}" for s, q in st["positions"].items()) or "flat"
    return (f"{st.get('connection', '?')} · {rate:,.1f} quotes/s · {st['conflated']} conflated · "
            f"{st['open_orders']} open · {positions} · P&L {st['pnl']:+,.2f} · risk {st['risk']}")


async def _rich_status(runtime: LiveRuntime) -> None:
    """A status line on the terminal, refreshed twice a second."""
    from rich.live import Live
    from rich.text import Text

    last, t0 = 0, trio.current_time()
    with Live("starting", refresh_per_second=4, transient=True) as live:
        while True:
            await trio.sleep(0.5)
            st, t = runtime.status(), trio.current_time()
            rate, last, t0 = (st["quotes"] - last) / max(t - t0, 1e-9), st["quotes"], t
            live.update(Text(_status_text(st, rate)))


async def _log_status(runtime: LiveRuntime, interval_s: float = 10.0) -> None:
    """Off a terminal: one structured status line every ``interval_s``."""
    last, t0 = 0, trio.current_time()
    while True:
        await trio.sleep(interval_s)
        st, t = runtime.status(), trio.current_time()
        st["quotes_per_s"] = round((st["quotes"] - last) / max(t - t0, 1e-9), 1)
        last, t0 = st["quotes"], t
        log.info("status %s", json.dumps(st, default=str, sort_keys=True))


def _trio_run(fn):
    """``trio.run``, with an error of ours taken out of trio's exception group,
    so the CLI prints it as one line (which key, what was wrong)."""
    try:
        return trio.run(fn)
    except BaseExceptionGroup as group:
        ours = group.subgroup(lambda e: isinstance(e, TriotradeError))
        if ours is None:
            raise
        while isinstance(ours, BaseExceptionGroup):
            ours = ours.exceptions[0]
        raise ours from None


def run_command(args, err) -> int:
    """``triotrade run``: 0 after an orderly stop, 1 if the run failed (trading HALTED),
    130 after a second Ctrl-C."""
    from functools import partial

    from rich.console import Console

    from engine.config import load_config
    from engine.report import render_table, write_report

    config = load_config(args.config)
    console = Console()
    _setup_logging(args.log_json, console.is_terminal)
    status = _rich_status if console.is_terminal and not args.log_json else _log_status
    runtime = _trio_run(partial(run_live, config, venue=args.venue, record=args.record,
                               duration_s=args.duration, name=args.config.stem, status=status))
    if runtime is None or runtime.aborted:
        err.print("stopped at once: no summary")
        return 130
    result = runtime.summary()
    for failure in runtime.kernel.failures:
        err.print(f"[bold red]strategy {failure.strategy} stopped[/] in {failure.hook}: {failure.error}",
                  highlight=False)
    files = write_report(result, args.out or Path("out") / f"{args.config.stem}-live")
    render_table(result, console)
    console.print("report: " + ", ".join(str(p) for p in files.values()), highlight=False)
    if runtime.failure:
        err.print(f"[bold red]error:[/] the run stopped: {runtime.failure} (trading HALTED)",
                  highlight=False)
        return 1
    return 0


def record_command(args, err) -> int:
    """``triotrade record``: 0 when stopped, 2 on a bad venue or credentials."""
    from functools import partial

    from engine.config import load_config

    _setup_logging(False)
    symbols = tuple(s.strip() for s in args.symbols.split(",") if s.strip())
    if not symbols:
        raise ConfigError("--symbols", "give at least one symbol")
    section, venue = None, args.venue
    account = args.account or os.environ.get("TRADER_ACCOUNT")
    if venue != SIM and not venue.startswith(("ws://", "wss://")):
        config = load_config(Path(venue))
        section, venue, account = config.venue, None, account or config.account
    elif venue != SIM:
        user, password = os.environ.get("TRADER_USER"), os.environ.get("TRADER_PASSWORD")
        if not user or password is None:
            raise ConfigError("--venue", "a URL venue reads the login from $TRADER_USER and $TRADER_PASSWORD")
        section = VenueSection(url=venue, login=LoginConfig(username=user, password=password))
    stats = _trio_run(partial(record_feed, venue=venue, section=section,
                             account=account or "recorder", symbols=symbols, depth=args.depth,
                             out=args.out, duration_s=args.duration))
    err.print(f"recorded {stats['lines']} messages to {args.out}")
    return 0
