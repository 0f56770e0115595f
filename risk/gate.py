"""The risk gate: every strategy intent passes it; nothing denied reaches a venue.

A ruling is a value, ``Approved(intent)`` or ``Denied(intent, reason,
message)``, never an exception. The gate reads the account through a
``RiskView`` (the local book implements it) and the time from the ``now``
it is given; it is called per intent and per fill, never per quote.

States and what passes (a CancelOrder always passes, in every state)::

    ACTIVE    every configured check (risk.checks), then the rate limits
    REDUCING  only what reduces exposure: ClosePosition, AmendPosition,
              a CreateOrder that shrinks |position| without flipping it
              (working orders of its side counted), an AmendOrder that
              lowers the quantity or leaves a reducing order's unchanged;
              these still pass the ACTIVE checks
    HALTED    ClosePosition only

REDUCING is set by the kernel (``set_state``: feed stale, connection down,
book out of sync) and lifted by it. HALTED comes from ``kill()``,
``set_state(HALTED)`` or ``update()`` seeing the daily loss limit or the
max drawdown breached; it is sticky: only ``reset()`` lifts it.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from engine.clock import EPOCH
from engine.enums import OrderType, Side
from engine.errors import UsageError
from engine.events import Quote
from engine.instruments import Instrument
from engine.intents import AmendOrder, AmendPosition, CancelOrder, ClosePosition, CreateOrder
from risk import checks as c
from risk.checks import Approved, Decision, DenialReason, Denied
from risk.limits import RiskLimits
from risk.throttle import TokenBucket

_US = timedelta(microseconds=1)
_MARKET = OrderType.MARKET
_DAY = timedelta(days=1)


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


class WorkingOrderLike(Protocol):
    """A working order as the gate reads it (the book's order entries)."""

    @property
    def order_id(self) -> str | None: ...
    @property
    def client_order_id(self) -> str | None: ...
    @property
    def symbol(self) -> str: ...
    @property
    def side(self) -> Side: ...
    @property
    def type(self) -> OrderType: ...
    @property
    def quantity(self) -> float:
        """Total quantity of the order (an amendment sets a new total); if an
        entry lacks it, the gate takes the order as unfilled."""
    @property
    def remaining_quantity(self) -> float: ...
    @property
    def price(self) -> float | None: ...
    @property
    def stop_price(self) -> float | None: ...


class RiskView(Protocol):
    """What the gate reads of one account (the local book implements it)."""

    instruments: Mapping[str, Instrument]

    def quote(self, symbol: str) -> Quote | None:
        """The latest quote of ``symbol``."""
    def net_quantity(self, symbol: str) -> float:
        """Signed net position: + long, - short."""
    def working_orders(self) -> Sequence[WorkingOrderLike]: ...
    def position_of(self, position_id: str) -> tuple[str, float] | None:
        """``(symbol, signed quantity)`` of an open position, or None."""
    def position_ids(self) -> Iterable[str]:
        """Ids of the open positions (to flatten them on a halt)."""
    def rate(self, symbol: str) -> float:
        """Quote currency of ``symbol`` -> account currency."""
    def equity(self) -> float: ...


class RiskGate:
    """Approves or denies each intent of one account.

    Args:
        limits: what to enforce.
        view: the account as the gate reads it.
        account_id: the account of the flatten intents ``update`` emits.
    """

    def __init__(self, limits: RiskLimits, view: RiskView, account_id: str) -> None:
        self.limits = limits
        self.view = view
        self.account_id = account_id
        self._mode = TradingState.ACTIVE
        self._mode_reason = ""
        self._halt: DenialReason | None = None
        self._halt_message = ""
        self._orders = (TokenBucket(limits.max_orders_per_s, limits.order_burst)
                        if limits.max_orders_per_s is not None else None)
        self._amends = (TokenBucket(limits.max_amends_per_s, limits.amend_burst)
                        if limits.max_amends_per_s is not None else None)
        self._recent: dict[tuple, int] = {}
        self._recent_fifo: deque[tuple[int, tuple]] = deque()
        self._day: int | None = None
        self._day_start_equity = 0.0
        self._peak: float | None = None
        self._approved = 0
        self._denials: Counter[DenialReason] = Counter()
        self._needs_book = any(x is not None for x in (
            limits.max_position, limits.max_gross_exposure, limits.max_open_orders,
            limits.stale_quote_ms))
        if limits.kill_switch:
            self.kill("kill_switch set in the risk limits")

    # -- state --------------------------------------------------------------
    @property
    def state(self) -> TradingState:
        return TradingState.HALTED if self._halt is not None else self._mode

    @property
    def state_reason(self) -> str:
        """Why the gate is in its state ("" when ACTIVE)."""
        return self._halt_message if self._halt is not None else self._mode_reason

    def set_state(self, state: TradingState | str, reason: str) -> None:
        """Move to ``state``. ACTIVE/REDUCING set the mode the gate returns to
        after ``reset()``; they do not lift a HALT (only ``reset()`` does)."""
        state = TradingState(state)
        if state is TradingState.HALTED:
            self._halt_with(DenialReason.HALTED, reason)
        else:
            self._mode, self._mode_reason = state, reason if state is TradingState.REDUCING else ""

    def kill(self, reason: str = "kill switch") -> None:
        """Halt at once (kill switch). ``flatten_intents()`` gives what would flatten."""
        self._halt_with(DenialReason.KILL_SWITCH, reason)

    def reset(self) -> None:
        """Back to ACTIVE; the daily and peak equity are taken afresh at the next ``update``."""
        self._halt = None
        self._halt_message = ""
        self._mode, self._mode_reason = TradingState.ACTIVE, ""
        self._day = None
        self._peak = None

    def _halt_with(self, cause: DenialReason, message: str) -> None:
        self._halt, self._halt_message = cause, message

    # -- equity -------------------------------------------------------------
    def update(self, now: datetime) -> list:
        """Check equity against the daily loss limit and the max drawdown.

        Call on each fill and periodically (not per quote). The day's baseline
        is the equity at the first update on or after 00:00 UTC. A breach
        halts the gate.

        Returns:
            On the update that halts, with ``flatten_on_halt``: a CancelOrder
            per working order and a ClosePosition per open position. Else [].
        """
        limits = self.limits
        if limits.daily_loss_limit is None and limits.max_drawdown is None:
            return []
        equity = float(self.view.equity())
        day = (now - EPOCH) // _DAY
        if self._day is None or day > self._day:
            self._day, self._day_start_equity = day, equity
        if self._peak is None or equity > self._peak:
            self._peak = equity
        if self._halt is not None:
            return []
        if limits.daily_loss_limit is not None:
            loss = self._day_start_equity - equity
            if c.above(loss, limits.daily_loss_limit):
                self._halt_with(DenialReason.DAILY_LOSS,
                                f"daily loss {loss:.2f} > daily_loss_limit {limits.daily_loss_limit:.2f}"
                                f" (equity {equity:.2f}, at 00:00 UTC {self._day_start_equity:.2f})")
        if self._halt is None and limits.max_drawdown is not None:
            drawdown = self._peak - equity
            if c.above(drawdown, limits.max_drawdown):
                self._halt_with(DenialReason.MAX_DRAWDOWN,
                                f"drawdown {drawdown:.2f} > max_drawdown {limits.max_drawdown:.2f}"
                                f" (equity {equity:.2f}, peak {self._peak:.2f})")
        if self._halt is not None and limits.flatten_on_halt:
            return self.flatten_intents()
        return []

    def flatten_intents(self) -> list:
        """Cancel every working order (first), then close every open position."""
        out: list = []
        for order in self.view.working_orders():
            if order.order_id is not None:
                out.append(CancelOrder(self.account_id, order_id=order.order_id))
            elif order.client_order_id is not None:
                out.append(CancelOrder(self.account_id, client_order_id=order.client_order_id))
        for position_id in self.view.position_ids():
            pos = self.view.position_of(position_id)
            if pos is not None and pos[1]:
                out.append(ClosePosition(self.account_id, position_id))
        return out

    # -- rulings ------------------------------------------------------------
    def check(self, intent, now: datetime) -> Decision:
        """Approve or deny one trading intent at time ``now``.

        Raises:
            UsageError: ``intent`` is not a trading intent.
        """
        kind = type(intent)
        if kind is CancelOrder:
            self._approved += 1
            return Approved(intent)
        if kind is ClosePosition:
            denied = self._check_close(intent)
        elif self._halt is not None:
            if kind not in (CreateOrder, AmendOrder, AmendPosition):
                raise UsageError(f"the risk gate rules on trading intents, not {intent!r}")
            denied = Denied(intent, self._halt, f"trading halted: {self._halt_message}")
        elif kind is CreateOrder:
            denied = self._check_create(intent, now)
        elif kind is AmendOrder:
            denied = self._check_amend(intent, now)
        elif kind is AmendPosition:
            denied = self._check_position_known(intent, intent.position_id)
        else:
            raise UsageError(f"the risk gate rules on trading intents, not {intent!r}")
        if denied is not None:
            self._denials[denied.reason] += 1
            return denied
        self._approved += 1
        return Approved(intent)

    def statistics(self) -> dict:
        """State, approvals, and denials by reason code."""
        return {
            "state": self.state.value,
            "state_reason": self.state_reason,
            "approved": self._approved,
            "denied": sum(self._denials.values()),
            "denials": {reason.value: n for reason, n in sorted(self._denials.items())},
        }

    # -- per intent ---------------------------------------------------------
    def _check_create(self, intent: CreateOrder, now: datetime) -> Denied | None:
        limits, view = self.limits, self.view
        symbol, side, qty, otype = intent.symbol, intent.side, intent.quantity, intent.type
        instrument = view.instruments.get(symbol)
        d = (c.check_instrument(intent, symbol, instrument)
             or c.check_quantity(intent, qty, instrument))
        if d:
            return d
        # a MARKET order without prices passes check_prices: skip the call
        if (otype is not _MARKET or intent.price is not None or intent.stop_price is not None) and (
                d := c.check_prices(intent, otype, intent.price, intent.stop_price)):
            return d
        if limits.max_order_qty is not None and (d := c.check_max_order_qty(intent, qty, limits.max_order_qty)):
            return d
        quote = view.quote(symbol)
        book = None
        if self._needs_book or self._mode is TradingState.REDUCING:
            book = _BookSnapshot(view)
            net = book.net(symbol)
            working = book.working(symbol, side)
            reducing = c.reduces(side, qty, net, working)
            if self._mode is TradingState.REDUCING and not reducing:
                return Denied(intent, DenialReason.REDUCING_ONLY,
                              f"only reducing orders pass ({self._mode_reason}): {side} "
                              f"{c.fmt(qty)} {symbol} with position {c.fmt(net)} and {side} "
                              f"{c.fmt(working)} working does not reduce it")
            if limits.stale_quote_ms is not None and not reducing and (
                    d := c.check_stale_symbol(intent, symbol, quote, now, limits.stale_quote_ms)):
                return d
        if d := c.check_fresh_quote(intent, symbol, otype, quote, now, limits.quote_max_age_ms):
            return d
        if limits.price_collar_pct is not None and (d := c.check_price_collar(
                intent, symbol, otype, intent.price, intent.stop_price, quote, now,
                limits.quote_max_age_ms, limits.price_collar_pct)):
            return d
        if limits.max_order_notional is not None and (d := c.check_max_order_notional(
                intent, symbol, qty,
                c.valuation_price(side, otype, intent.price, intent.stop_price, quote),
                float(view.rate(symbol)), limits.max_order_notional)):
            return d
        if book is not None and (d := self._check_book(intent, book, symbol, side, qty, otype,
                                                       intent.price, intent.stop_price, quote, True)):
            return d
        # last, the stateful checks: only an order that passed all else takes a token
        window = limits.duplicate_window_ms
        if window is None and self._orders is None:
            return None
        now_us = (now - EPOCH) // _US
        key = (symbol, side, qty, otype, intent.price, intent.stop_price)
        if window is not None and (d := c.check_duplicate(intent, self._recent.get(key), now_us, window)):
            return d
        if self._orders is not None and (
                d := c.check_rate(intent, self._orders, now_us, DenialReason.ORDER_RATE, "orders")):
            return d
        if window is not None:
            self._remember(key, now_us)
        return None

    def _check_amend(self, intent: AmendOrder, now: datetime) -> Denied | None:
        limits, view = self.limits, self.view
        order = next((o for o in view.working_orders() if o.order_id == intent.order_id), None)
        if order is None:
            return Denied(intent, DenialReason.UNKNOWN_ORDER, f"no working order {intent.order_id!r}")
        symbol, side, otype = order.symbol, order.side, order.type
        instrument = view.instruments.get(symbol)
        if d := (c.check_instrument(intent, symbol, instrument)
                 or c.check_prices(intent, otype, intent.price, intent.stop_price, amend=True)):
            return d
        total = getattr(order, "quantity", order.remaining_quantity)
        filled = total - order.remaining_quantity
        added = 0.0
        if intent.quantity is not None:
            if d := c.check_quantity(intent, intent.quantity, instrument):
                return d
            if intent.quantity <= filled:
                return Denied(intent, DenialReason.INVALID_QUANTITY,
                              f"quantity {c.fmt(intent.quantity)} <= filled {c.fmt(filled)} of "
                              f"order {intent.order_id}")
            total = intent.quantity
            added = total - filled - order.remaining_quantity
        price = intent.price if intent.price is not None else order.price
        stop_price = intent.stop_price if intent.stop_price is not None else order.stop_price
        growing = added > 0
        book = None
        if growing or self._mode is TradingState.REDUCING:
            book = _BookSnapshot(view)
        if self._mode is TradingState.REDUCING:
            net = book.net(symbol)
            if growing or (added == 0 and not c.reduces(side, 0.0, net, book.working(symbol, side))):
                return Denied(intent, DenialReason.REDUCING_ONLY,
                              f"only reducing amendments pass ({self._mode_reason}): order "
                              f"{intent.order_id} ({side} {symbol}, position {c.fmt(net)}) "
                              f"would not shrink")
        quote = view.quote(symbol)
        if growing:
            if limits.max_order_qty is not None and (
                    d := c.check_max_order_qty(intent, total, limits.max_order_qty)):
                return d
            if limits.stale_quote_ms is not None and (
                    d := c.check_stale_symbol(intent, symbol, quote, now, limits.stale_quote_ms)):
                return d
        if limits.price_collar_pct is not None and (d := c.check_price_collar(
                intent, symbol, otype, intent.price, intent.stop_price, quote, now,
                limits.quote_max_age_ms, limits.price_collar_pct)):
            return d
        if growing:
            if limits.max_order_notional is not None and (d := c.check_max_order_notional(
                    intent, symbol, total, c.valuation_price(side, otype, price, stop_price, quote),
                    float(view.rate(symbol)), limits.max_order_notional)):
                return d
            if d := self._check_book(intent, book, symbol, side, added, otype, price, stop_price,
                                     quote, False):
                return d
        if self._amends is not None and (d := c.check_rate(
                intent, self._amends, (now - EPOCH) // _US, DenialReason.AMEND_RATE, "amendments")):
            return d
        return None

    def _check_close(self, intent: ClosePosition) -> Denied | None:
        if d := self._check_position_known(intent, intent.position_id):
            return d
        if intent.quantity is None:
            return None
        symbol, net = self.view.position_of(intent.position_id)
        instrument = self.view.instruments.get(symbol)
        if instrument is not None and (d := c.check_quantity(intent, intent.quantity, instrument)):
            return d
        if c.above(intent.quantity, abs(net)):
            return Denied(intent, DenialReason.INVALID_QUANTITY,
                          f"quantity {c.fmt(intent.quantity)} > position {c.fmt(abs(net))} "
                          f"{symbol} of {intent.position_id}")
        return None

    def _check_position_known(self, intent, position_id: str) -> Denied | None:
        if self.view.position_of(position_id) is None:
            return Denied(intent, DenialReason.UNKNOWN_POSITION, f"no open position {position_id!r}")
        return None

    def _check_book(
        self, intent, book: _BookSnapshot, symbol: str, side: Side, added: float,
        otype: OrderType, price: float | None, stop_price: float | None, quote: Quote | None,
        new_order: bool,
    ) -> Denied | None:
        """The checks that read the working orders: position, gross, open orders."""
        limits = self.limits
        if limits.max_position is not None and (d := c.check_max_position(
                intent, symbol, side, added, book.net(symbol), book.working(symbol, side),
                limits.max_position)):
            return d
        if limits.max_gross_exposure is not None:
            fallback = c.valuation_price(side, otype, price, stop_price, quote)
            values = book.gross(symbol, side, added, fallback)
            if type(values) is str:
                return Denied(intent, DenialReason.NO_FRESH_QUOTE,
                              f"cannot value the gross exposure: no quote for {values}")
            if d := c.check_max_gross_exposure(intent, *values, limits.max_gross_exposure):
                return d
        if new_order and limits.max_open_orders is not None and (
                d := c.check_max_open_orders(intent, book.count, limits.max_open_orders)):
            return d
        return None

    def _remember(self, key: tuple, now_us: int) -> None:
        """Keep approved orders for the duplicate guard; forget those out of the window."""
        fifo, recent = self._recent_fifo, self._recent
        horizon = now_us - int(self.limits.duplicate_window_ms * 1000)
        while fifo and fifo[0][0] <= horizon:
            t, old = fifo.popleft()
            if recent.get(old) == t:
                del recent[old]
        recent[key] = now_us
        fifo.append((now_us, key))


class _BookSnapshot:
    """Working-order totals per symbol and side, gathered once per intent."""

    __slots__ = ("view", "count", "_working", "_nets")

    def __init__(self, view: RiskView) -> None:
        self.view = view
        totals: dict[str, list[float]] = {}
        count = 0
        for o in view.working_orders():
            count += 1
            pair = totals.get(o.symbol)
            if pair is None:
                pair = totals[o.symbol] = [0.0, 0.0]
            pair[0 if o.side is Side.BUY else 1] += o.remaining_quantity
        self.count = count
        self._working = totals
        self._nets: dict[str, float] = {}

    def net(self, symbol: str) -> float:
        net = self._nets.get(symbol)
        if net is None:
            net = self._nets[symbol] = float(self.view.net_quantity(symbol))
        return net

    def working(self, symbol: str, side: Side) -> float:
        pair = self._working.get(symbol)
        return 0.0 if pair is None else pair[0 if side is Side.BUY else 1]

    def gross(
        self, symbol: str, side: Side, added: float, fallback: float | None,
    ) -> tuple[float, float] | str:
        """Gross exposure before and after adding ``added`` on ``side`` of
        ``symbol``, or the first symbol that cannot be valued."""
        view = self.view
        symbols = set(self._working)
        symbols.add(symbol)
        for position_id in view.position_ids():
            pos = view.position_of(position_id)
            if pos is not None:
                symbols.add(pos[0])
        before = after = 0.0
        for sym in sorted(symbols):
            net = self.net(sym)
            buy, sell = self._working.get(sym, (0.0, 0.0))
            exposure = c.symbol_exposure(net, buy, sell)
            if sym == symbol:
                if side is Side.BUY:
                    buy += added
                else:
                    sell += added
                grown = c.symbol_exposure(net, buy, sell)
            else:
                grown = exposure
            if not exposure and not grown:
                continue
            quote = view.quote(sym)
            price = quote.mid if quote is not None else (fallback if sym == symbol else None)
            if price is None:
                return sym
            value = price * float(view.rate(sym))
            before += exposure * value
            after += grown * value
        return before, after
