"""The one class strategy authors subclass.

A strategy is a plain synchronous object: the kernel calls its hooks with
events (the book already updated), and it answers with intents built by the
helpers below. It never sends anything itself; every intent passes the risk
gate (DESIGN rule 3). Parameters are class attributes with annotations and
defaults; they are validated when the strategy is built (from YAML or by
hand), so ``fast: int = 10`` rejects ``fast: "ten"`` naming the key.

Hooks (override what you need): ``on_start``, ``on_quote``, ``on_depth``,
``on_execution``, ``on_portfolio``, ``on_metrics``, ``on_timer``,
``on_reject``, ``on_stop``.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, ClassVar

import attrs

from engine import intents as it
from engine.enums import EventKind, OrderType, Side, TimeInForce
from engine.errors import ConfigError, UsageError
from engine.events import Depth, Execution, Metrics, Portfolio, Position, Quote
from engine.intents import KEEP

_RESERVED = frozenset({"name", "symbols", "account", "clock", "book"})


class Strategy:
    """Base class of every strategy. See the module docstring."""

    Params: ClassVar[type]
    """The attrs class of this strategy's parameters (built per subclass)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.Params = _params_class(cls)

    def __init__(self, *, name: str | None = None, symbols: Iterable[str] = (), **params: Any):
        from engine.config import structure  # the one validator of YAML-shaped input

        self.name = name or type(self).__name__.lower()
        self.symbols: tuple[str, ...] = tuple(symbols)
        self.params = structure(type(self).Params, params, f"{self.name}.params")
        for field in attrs.fields(type(self).Params):
            setattr(self, field.name, getattr(self.params, field.name))
        try:
            self.validate()
        except ValueError as exc:
            raise ConfigError(f"{self.name}.params", str(exc)) from None
        self._ctx: StrategyContext | None = None

    def validate(self) -> None:
        """Check relations between parameters; raise ValueError to refuse them."""

    # -- hooks -------------------------------------------------------------
    def on_start(self) -> None:
        """Called once before the first event. Default: subscribe to own symbols."""
        self.subscribe(self.symbols)

    def on_quote(self, quote: Quote) -> None: ...
    def on_depth(self, depth: Depth) -> None: ...
    def on_execution(self, execution: Execution) -> None: ...
    def on_portfolio(self, portfolio: Portfolio) -> None: ...
    def on_metrics(self, metrics: Metrics) -> None: ...
    def on_timer(self, name: str, now: datetime) -> None: ...

    def on_reject(self, rejection) -> None:
        """A risk denial (``risk.Denied``) or a venue refusal (``engine.kernel.VenueRejection``).

        Both have ``.reason``, ``.message`` and ``.intent`` (None if unknown).
        """

    def on_stop(self) -> None: ...

    # -- what the strategy can read ---------------------------------------
    @property
    def ctx(self) -> StrategyContext:
        ctx = self._ctx
        if ctx is None:
            raise UsageError(f"strategy {self.name!r} is not running: it has no context yet")
        return ctx

    @property
    def clock(self):
        return self.ctx.clock

    @property
    def now(self) -> datetime:
        return self.ctx.clock.now

    @property
    def book(self):
        """Read-only view of the local order/position book."""
        return self.ctx.book

    @property
    def account(self) -> str:
        return self.ctx.account_id

    def quote(self, symbol: str) -> Quote | None:
        return self.ctx.book.quote(symbol)

    def position(self, symbol: str) -> Position | None:
        return self.ctx.book.position(symbol)

    def net_quantity(self, symbol: str) -> float:
        return (self._ctx or self.ctx).book.net_quantity(symbol)

    def working_orders(self, symbol: str | None = None) -> list:
        """This strategy's orders still working (or in flight)."""
        ctx = self._ctx or self.ctx
        mine = ctx.owned
        return [o for o in ctx.book.working_orders(symbol) if o.client_order_id in mine]

    # -- subscriptions and timers ----------------------------------------
    def subscribe(
        self, symbols: Iterable[str], *, quotes: bool = True, executions: bool = True,
        portfolio: bool = False, depth: int | None = None, metrics: bool = False,
    ) -> None:
        kinds = [k for k, on in ((EventKind.QUOTE, quotes), (EventKind.EXECUTION, executions),
                                 (EventKind.PORTFOLIO, portfolio)) if on]
        self.ctx.subscribe(self, tuple(symbols), tuple(kinds), depth, metrics)

    def set_timer(self, name: str, interval: timedelta | float, *, repeat: bool = True) -> None:
        """Call ``on_timer(name, now)`` after ``interval`` (seconds or a timedelta), repeating."""
        if not isinstance(interval, timedelta):
            interval = timedelta(seconds=interval)
        if interval <= timedelta(0):
            raise UsageError(f"timer {name!r}: interval must be > 0, got {interval}")
        self.ctx.set_timer(self, name, interval, repeat)

    def cancel_timer(self, name: str) -> None:
        self.ctx.cancel_timer(self, name)

    # -- intents ------------------------------------------------------------
    def buy(self, symbol: str, quantity: float, **kw: Any) -> it.CreateOrder:
        """BUY: MARKET, or LIMIT with ``price=``, STOP with ``stop_price=``, or both."""
        return self.order(symbol, Side.BUY, quantity, **kw)

    def sell(self, symbol: str, quantity: float, **kw: Any) -> it.CreateOrder:
        return self.order(symbol, Side.SELL, quantity, **kw)

    def order(
        self, symbol: str, side: Side, quantity: float, *, price: float | None = None,
        stop_price: float | None = None, time_in_force: TimeInForce | None = None,
        stop_loss: float | None = None, take_profit: float | None = None,
    ) -> it.CreateOrder:
        """Emit a CreateOrder; quantity and prices are rounded to the instrument's steps."""
        ctx = self._ctx or self.ctx  # the property raises when not running
        inst = ctx.book.instruments.get(symbol) or self._instrument(symbol)
        if price is None:
            kind = OrderType.MARKET if stop_price is None else OrderType.STOP
        else:
            kind = OrderType.LIMIT if stop_price is None else OrderType.STOP_LIMIT
        rp = inst.round_price
        intent = it.CreateOrder(
            ctx.account_id, symbol, side if type(side) is Side else Side(side),
            inst.round_quantity(quantity), kind,
            None if price is None else rp(price),
            None if stop_price is None else rp(stop_price),
            time_in_force, ctx.next_client_order_id(self),
            None if stop_loss is None else rp(stop_loss),
            None if take_profit is None else rp(take_profit),
        )
        return ctx.emit(self, intent)

    def amend(self, order, *, quantity: float | None = None, price: float | None = None,
              stop_price: float | None = None) -> it.AmendOrder:
        """Amend a working order (an Order of the book or its ``order_id``)."""
        o = self._order(order)
        inst = self._instrument(o.symbol)
        return self.ctx.emit(self, it.AmendOrder(
            account_id=self.ctx.account_id, order_id=o.order_id,
            quantity=None if quantity is None else inst.round_quantity(quantity),
            price=None if price is None else inst.round_price(price),
            stop_price=None if stop_price is None else inst.round_price(stop_price),
        ))

    def cancel(self, order) -> it.CancelOrder:
        """Cancel an order (an Order of the book, its ``order_id`` or ``client_order_id``)."""
        o = self._order(order)
        if o.order_id:
            intent = it.CancelOrder(self.ctx.account_id, order_id=o.order_id)
        else:
            intent = it.CancelOrder(self.ctx.account_id, client_order_id=o.client_order_id)
        return self.ctx.emit(self, intent)

    def cancel_all(self, symbol: str | None = None) -> list[it.CancelOrder]:
        return [self.cancel(o) for o in self.working_orders(symbol)]

    def close(self, symbol: str, quantity: float | None = None) -> it.ClosePosition | None:
        """Close the symbol's position (or ``quantity`` of it); None if flat."""
        pos = self.position(symbol)
        if pos is None:
            return None
        qty = None if quantity is None else self._instrument(symbol).round_quantity(quantity)
        return self.ctx.emit(self, it.ClosePosition(self.ctx.account_id, pos.position_id, qty))

    def amend_position(self, symbol: str, *, stop_loss=KEEP, take_profit=KEEP) -> it.AmendPosition:
        """Set (a price), remove (None) or keep (KEEP) the position's SL/TP."""
        pos = self.position(symbol)
        if pos is None:
            raise UsageError(f"{self.name}: no open position in {symbol} to amend")
        inst = self._instrument(symbol)
        fix = lambda v: v if v is None or v is KEEP else inst.round_price(v)  # noqa: E731
        return self.ctx.emit(self, it.AmendPosition(
            self.ctx.account_id, pos.position_id, fix(stop_loss), fix(take_profit)))

    # -- internals ---------------------------------------------------------
    def _instrument(self, symbol: str):
        inst = self.ctx.book.instruments.get(symbol)
        if inst is None:
            raise UsageError(f"{self.name}: unknown instrument {symbol!r}")
        return inst

    def _order(self, order):
        if not isinstance(order, str):
            return order
        book = self.ctx.book
        found = book.order(order) or book.order_by_client_id(order)
        if found is None:
            raise UsageError(f"{self.name}: no order {order!r} in the book")
        return found


class StrategyContext(typing.Protocol):
    """What the kernel gives a running strategy."""

    account_id: str
    clock: Any
    book: Any
    owned: set[str]

    def emit(self, strategy: Strategy, intent): ...
    def next_client_order_id(self, strategy: Strategy) -> str: ...
    def subscribe(self, strategy, symbols, kinds, depth, metrics) -> None: ...
    def set_timer(self, strategy, name, interval, repeat) -> None: ...
    def cancel_timer(self, strategy, name) -> None: ...


def _params_class(cls: type) -> type:
    """An attrs class of the annotated class attributes of ``cls`` and its bases."""
    fields: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is Strategy or not issubclass(klass, Strategy):
            continue
        hints = typing.get_type_hints(klass)
        for name in klass.__dict__.get("__annotations__", {}):
            if name.startswith("_") or typing.get_origin(hints[name]) is ClassVar:
                continue
            if name in _RESERVED:
                raise UsageError(f"{cls.__name__}: parameter name {name!r} is reserved")
            default = klass.__dict__.get(name, attrs.NOTHING)
            fields[name] = attrs.field(type=hints[name], default=default)
    # required (no default) first, as attrs needs
    ordered = dict(sorted(fields.items(), key=lambda kv: kv[1]._default is not attrs.NOTHING))
    return attrs.make_class(f"{cls.__name__}Params", ordered, frozen=True, kw_only=True)
