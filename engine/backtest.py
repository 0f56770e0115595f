"""The backtest driver: a synchronous loop on the venue's virtual clock.

    replay -> matching engine -> kernel (book -> strategies -> risk gate) -> matching engine

For each market event the venue first takes the requests that have arrived
and matches against the new prices; its account events go to the kernel
(book first); only then do the strategies see the event (PROTOCOL section
7). Intents the gate approved go straight back to the venue. Nothing here
reads the wall clock, so the
same inputs give byte-identical reports.
"""

from __future__ import annotations

import gc
import importlib
from contextlib import contextmanager
from collections.abc import Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from adapters.replay import FeedReader, merge
from adapters.sim.matching import MatchingEngine, SyntheticDepth, VenueConfig
from engine.book import Book
from engine.config import RunConfig
from engine.enums import Side
from engine.errors import ConfigError, UsageError
from engine.events import Quote
from engine.kernel import Kernel
from engine.ledger import ZERO
from engine.report import BacktestResult, TradeRow
from risk import RiskGate
from strategies.base import Strategy


def load_strategy_class(path: str, key: str) -> type[Strategy]:
    """Import ``module:Class``; a bad path is a ConfigError naming ``key``."""
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(key, f"expected 'module:Class', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(key, f"cannot import module {module_name!r}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(key, f"{path!r} is not a Strategy subclass")
    return cls


def build_strategies(config: RunConfig) -> list[Strategy]:
    """Build each configured strategy, validating its parameters."""
    built: list[Strategy] = []
    instruments = config.instrument_map()
    for i, sc in enumerate(config.strategies):
        key = f"strategies[{i}]"
        cls = load_strategy_class(sc.class_, f"{key}.class")
        name = sc.name or cls.__name__.lower()
        if any(s.name == name for s in built):
            raise ConfigError(f"{key}.name", f"two strategies are named {name!r}; give each a name")
        for symbol in sc.symbols:
            if symbol not in instruments:
                raise ConfigError(f"{key}.symbols", f"unknown instrument {symbol!r}")
        try:
            built.append(cls(name=name, symbols=sc.symbols, **sc.params))
        except ConfigError as exc:
            raise ConfigError(exc.key.replace(f"{name}.params", f"{key}.params", 1), exc.detail) from None
    return built


class Backtest:
    """One backtest run of a config's strategies over its recorded feed(s).

    Args:
        config: the run's configuration (``backtest:`` section required).
        strategies: already-built strategies (default: built from the config).
        progress: called with (bytes read, total bytes) now and then, for a bar.
    """

    def __init__(
        self, config: RunConfig, *, strategies: Sequence[Strategy] | None = None,
        progress: Callable[[int, int], None] | None = None, name: str = "",
    ) -> None:
        if config.backtest is None:
            raise ConfigError("backtest", "a backtest needs a `backtest:` section with a feed")
        self.config = config
        self.name = name
        bt = config.backtest
        self.instruments = config.instrument_map()
        self.strategies = list(strategies) if strategies is not None else build_strategies(config)
        depth = bt.depth and SyntheticDepth(levels=bt.depth.levels, size=bt.depth.size,
                                           spacing_ticks=bt.depth.step_ticks)
        self.venue = MatchingEngine(self.instruments, VenueConfig(
            latency_ms=bt.latency_ms, commission_per_million=Decimal(repr(bt.commission_per_million)),
            stop_out_level=bt.stop_out_level, synthetic_depth=depth or None,
        ))
        balance = Decimal(repr(config.balance))
        self.ledger = self.venue.open_account(config.account, config.currency, balance)
        self.quotes: dict[str, Quote] = {}
        self.book = Book(config.account, config.currency, balance, self.instruments, self.quotes)
        self.gate = RiskGate(config.risk, self.book, config.account)
        self.kernel = Kernel(
            account_id=config.account, book=self.book, gate=self.gate,
            strategies=self.strategies, clock=self.venue.clock, quotes=self.quotes, run_tag="bt",
        )
        self.readers = [FeedReader(path, strict=bt.strict) for path in bt.feed]
        self.progress = progress
        self.equity: list[tuple] = []
        self._samples = 0
        self._exposed = 0

    # -- the loop ----------------------------------------------------------
    def run(self) -> BacktestResult:
        with rare_gc():
            return self._run()

    def _run(self) -> BacktestResult:
        venue, kernel, clock = self.venue, self.kernel, self.venue.clock
        on_market, on_quote, on_depth = venue.on_market, kernel.on_quote, kernel.on_depth
        send, deliver = self._send, self._deliver
        timers = kernel._timers
        first = True
        for batch in self._batches():
            if first and batch:
                first = False
                clock.advance_to(batch[0].ts)
                self._start()
            for event in batch:
                if timers[0].due <= event.ts:
                    send(kernel.run_timers(event.ts, advance=clock.advance_to))
                replies = on_market(event)
                if replies:
                    deliver(replies)
                intents = on_quote(event) if type(event) is Quote else on_depth(event)
                if intents:
                    send(intents)
        if first:
            raise UsageError("the feed holds no quote or depth events")
        send(kernel.stop())
        self._sample(clock.now, regular=False)
        return self._result(sum(r.stats.quotes + r.stats.depths for r in self.readers))

    def _start(self) -> None:
        interval = timedelta(seconds=self.config.backtest.equity_sample_s)
        self.kernel.add_timer(interval, self._on_sample)
        self._sample(self.venue.clock.now, regular=True)
        intents = self.kernel.start()
        self.venue.portfolio_events = self.kernel.wants_portfolio
        self._send(intents)

    def _batches(self):
        """Batches of market events; feeds beyond the first are merged by ts."""
        if len(self.readers) == 1:
            reader = self.readers[0]
            for batch in reader.batches():
                if self.progress:
                    self.progress(*reader.progress())
                yield batch
        else:
            batch: list = []
            for event in merge(self.readers):
                batch.append(event)
                if len(batch) == 4096:
                    yield batch
                    batch = []
            yield batch

    def _send(self, intents) -> None:
        """Hand approved intents to the venue and feed its replies back, until quiet."""
        if not intents:  # timers mostly return nothing
            return
        submit, on_event = self.venue.submit, self.kernel.on_event
        queue = list(intents)
        for intent in queue:  # a list's iterator also takes what is appended meanwhile: FIFO
            for reply in submit(intent):
                more = on_event(reply.event)
                if more:
                    queue.extend(more)

    def _deliver(self, replies) -> None:
        on_event = self.kernel.on_event
        for reply in replies:
            more = on_event(reply.event)
            if more:
                self._send(more)

    # -- equity sampling ---------------------------------------------------
    def _on_sample(self, now) -> None:
        self._sample(now, regular=True)
        for intent in self.gate.update(now):
            self.kernel.submit(None, intent)

    def _sample(self, ts, *, regular: bool) -> None:
        self.equity.append((ts, float(self.book.equity())))
        if regular:
            self._samples += 1
            self._exposed += bool(self.ledger.positions)

    # -- results -----------------------------------------------------------
    def _result(self, quotes: int) -> BacktestResult:
        book, ledger, kernel = self.book, self.ledger, self.kernel
        trades = trade_rows(book, kernel)
        stats = [r.stats.as_dict() for r in self.readers]
        return BacktestResult(
            config_name=self.name,
            feed=", ".join(str(Path(p).name) for p in self.config.backtest.feed),
            strategies=tuple(s.name for s in self.strategies),
            currency=self.config.currency,
            start=self.equity[0][0] if self.equity else None,
            end=self.venue.clock.now,
            initial_balance=self.config.balance,
            final_balance=float(ledger.balance),
            final_equity=float(ledger.equity()),
            equity=tuple(self.equity),
            exposure=self._exposed / self._samples if self._samples else 0.0,
            trades=tuple(trades),
            closed_positions_pnl=tuple(float(pnl) for pnl in ledger.closed_pnls()),
            fees=float(ledger.commission_paid),
            orders=kernel.orders_sent,
            fills=kernel.fills,
            denials=dict(sorted(self.gate.statistics().get("denials", {}).items())),
            rejections=dict(sorted(book.statistics().get("rejections_by_reason", {}).items())),
            feed_stats=stats[0] if len(stats) == 1 else {"feeds": stats},
            quotes=quotes,
        )

    def discrepancies(self) -> list[str]:
        """Where the local book and the venue disagree (empty when they agree)."""
        out = list(self.kernel.anomalies)
        if self.book.balance != float(self.ledger.balance):
            out.append(f"balance: book {self.book.balance} != venue {self.ledger.balance}")
        venue_pos = {s: float(p.signed_quantity) for s, p in self.ledger.positions.items()}
        for symbol in set(venue_pos) | {s for s in self.instruments if self.book.net_quantity(s)}:
            if self.book.net_quantity(symbol) != venue_pos.get(symbol, 0.0):
                out.append(f"{symbol}: book {self.book.net_quantity(symbol)} != venue {venue_pos.get(symbol, 0.0)}")
        return out


def trade_rows(book: Book, kernel: Kernel) -> list[TradeRow]:
    """The account's deals as the local book booked them (a live run has
    nothing else), with the clientOrderId and strategy of each order."""
    strategy_of = {cid: s.name for cid, s in kernel._owner.items()}
    cid_of = {o.order_id: o.client_order_id for o in book.all_orders()}
    buy, sell = Side.BUY.value, Side.SELL.value
    floats = _Floats()  # deals repeat their quantities and prices: convert each once
    trades = []
    for _, order_id, position_id, symbol, is_buy, qty, price, fee, pnl, ts in book.ledger.deal_rows():
        cid = cid_of.get(order_id)
        trades.append(TradeRow(
            ts, symbol, buy if is_buy else sell, floats[qty], floats[price],
            0.0 if fee is ZERO else float(fee), float(pnl), order_id, position_id, cid,
            strategy_of.get(cid)))
    return trades


class _Floats(dict):
    """``float(d)`` of Decimals, memoized. Only for quantities and prices:
    they are > 0, so no ``-0`` can be mistaken for an equal ``0``."""

    def __missing__(self, d: Decimal) -> float:
        f = self[d] = float(d)
        return f


@contextmanager
def rare_gc():
    """Collect cycles rarely during the loop. Orders hold many references, and
    the cyclic collector walked every one of them again and again (about 5 us
    an order) while finding nothing to free; the loop makes almost no cycles.
    The objects built before the loop are frozen out of its sight; so are, at
    the end, those the loop built (mostly the run's orders and deals, kept for
    the report): unfrozen, they go straight to the oldest generation, rather
    than the young one's first collection walking every one of them."""
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.freeze()
        gc.set_threshold(*threshold)
        gc.unfreeze()
