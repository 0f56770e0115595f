"""One account's money under PROTOCOL section 5.3.

The venue (``adapters.sim.matching``) and the client's local book both book
fills through this class, so the two agree to the cent: positions net per
symbol, growing averages ``openPrice`` by quantity (unrounded), reducing keeps
it, a flip closes the old position at the fill price and opens a new one.
Each deal's ``commission`` and ``realizedPnl`` are converted to the account
currency and rounded half-to-even to 0.01; the balance moves by their
difference. Marks (current price, unrealized P&L, margin) are computed on
demand from the caller's live quote mapping, never per quote.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

import attrs

from engine import events
from engine.enums import PositionSide, Side
from engine.errors import UsageError
from engine.instruments import CENT, Instrument, dec

ZERO = Decimal(0)
ONE = Decimal(1)
TWO = Decimal(2)
MILLION = Decimal(1_000_000)
HUNDRED = Decimal(100)

_PRICES: dict[float, Decimal] = {}


def fdec(x: float) -> Decimal:
    """``dec`` for wire prices, memoized: quotes repeat the same few prices and
    a float -> Decimal conversion costs ~0.45 us against a dict hit's 0.05."""
    d = _PRICES.get(x)
    if d is None:
        if len(_PRICES) >= 65_536:
            _PRICES.clear()
        d = _PRICES[x] = dec(x)
    return d


_SIGN = {PositionSide.LONG: 1, PositionSide.SHORT: -1}
_SIDE_OF = {Side.BUY: PositionSide.LONG, Side.SELL: PositionSide.SHORT}


@attrs.define
class OpenPosition:
    """Mutable state of one netted position (an account holds one per symbol)."""

    position_id: str
    symbol: str
    side: PositionSide
    quantity: Decimal
    open_price: Decimal
    opened_at: datetime
    stop_loss: float | None = None
    take_profit: float | None = None
    max_quantity: Decimal = attrs.field(default=None)
    closed_quantity: Decimal = ZERO
    closed_value: Decimal = ZERO
    realized_pnl: Decimal = ZERO

    def __attrs_post_init__(self) -> None:
        if self.max_quantity is None:
            self.max_quantity = self.quantity

    @property
    def sign(self) -> int:
        """+1 LONG, -1 SHORT."""
        return _SIGN[self.side]

    @property
    def signed_quantity(self) -> Decimal:
        return self.quantity if self.side is PositionSide.LONG else -self.quantity


@attrs.frozen
class DealRecord:
    """One booked deal: a fill, or one half of a flipping fill."""

    deal_id: str
    order_id: str
    position_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    commission: Decimal
    realized_pnl: Decimal
    ts: datetime

    def to_event(self) -> events.Deal:
        return events.Deal(
            deal_id=self.deal_id, order_id=self.order_id, position_id=self.position_id,
            symbol=self.symbol, side=self.side, quantity=float(self.quantity),
            price=float(self.price), commission=float(self.commission),
            realized_pnl=float(self.realized_pnl), ts=self.ts,
        )


@attrs.frozen
class ClosedRecord:
    """A closed position: ``quantity`` is the largest it held, ``close_price``
    the quantity-weighted average of its closing fills."""

    position_id: str
    symbol: str
    side: PositionSide
    quantity: Decimal
    open_price: Decimal
    opened_at: datetime
    closed_at: datetime
    close_price: Decimal
    realized_pnl: Decimal
    stop_loss: float | None = None
    take_profit: float | None = None

    def to_event(self) -> events.ClosedPosition:
        return events.ClosedPosition(
            position_id=self.position_id, symbol=self.symbol, side=self.side,
            quantity=float(self.quantity), open_price=float(self.open_price),
            opened_at=self.opened_at, closed_at=self.closed_at,
            close_price=float(self.close_price), realized_pnl=float(self.realized_pnl),
            stop_loss=self.stop_loss, take_profit=self.take_profit,
        )


class Ledger:
    """Balance, open positions, closed positions and deals of one account.

    Args:
        account_id: the account.
        currency: the account currency (``USD``).
        balance: the starting balance.
        instruments: symbol -> Instrument, for leverage and currency conversion.
        quotes: a live mapping symbol -> latest ``events.Quote``, owned and
            updated by the caller; read here only when a mark is asked for.
    """

    def __init__(
        self,
        account_id: str,
        currency: str,
        balance: Decimal | float | int | str,
        instruments: Mapping[str, Instrument],
        quotes: Mapping[str, events.Quote],
    ) -> None:
        self.account_id = account_id
        self.currency = currency
        self.balance: Decimal = dec(balance)
        self.instruments = instruments
        self.quotes = quotes
        self.realized_pnl: Decimal = ZERO
        self.commission_paid: Decimal = ZERO
        self.positions: dict[str, OpenPosition] = {}
        self.closed: list[ClosedRecord] = []
        self.deals: list[DealRecord] = []
        self._links: dict[str, tuple[str | None, bool]] = {}

    # ------------------------------------------------------------------ fills

    def apply_fill(
        self,
        *,
        order_id: str,
        symbol: str,
        side: Side,
        quantity: Decimal,
        price: Decimal,
        ts: datetime,
        new_position_id: Callable[[], str],
        new_deal_id: Callable[[], str],
        commission_per_million: Decimal | None = None,
        commission: Decimal | None = None,
    ) -> list[DealRecord]:
        """Book one fill; returns its deals (two when it flips the position).

        Commission is either computed per deal from ``commission_per_million``
        of the notional (the venue's way) or the given execution total
        ``commission``, booked on the last deal (the local book's way: it only
        knows the event's total). Raises UsageError on a quantity <= 0.
        """
        if type(quantity) is not Decimal:
            quantity = dec(quantity)
        if type(price) is not Decimal:
            price = dec(price)
        if quantity <= 0:
            raise UsageError(f"fill quantity must be > 0, got {quantity}")
        rate = None  # asked for only when money moves: an opening fill needs no quote
        pos = self.positions.get(symbol)
        legs: list[tuple[str, Decimal, Decimal]] = []  # (position_id, qty, realized)
        if pos is None:
            pos = self._open(symbol, side, quantity, price, ts, new_position_id())
            legs.append((pos.position_id, quantity, ZERO))
        elif _SIDE_OF[side] is pos.side:
            total = pos.quantity + quantity
            pos.open_price = (pos.open_price * pos.quantity + price * quantity) / total
            pos.quantity = total
            if total > pos.max_quantity:
                pos.max_quantity = total
            legs.append((pos.position_id, quantity, ZERO))
        else:
            closing = quantity if quantity < pos.quantity else pos.quantity
            rate = self.rate(symbol)
            realized = ((price - pos.open_price) * closing * pos.sign * rate).quantize(
                CENT, ROUND_HALF_EVEN)
            pos.closed_quantity += closing
            pos.closed_value += price * closing
            pos.realized_pnl += realized
            pos.quantity -= closing
            legs.append((pos.position_id, closing, realized))
            if not pos.quantity:
                del self.positions[symbol]
                self.closed.append(_closed_record(pos, ts))
                rest = quantity - closing
                if rest:
                    new = self._open(symbol, side, rest, price, ts, new_position_id())
                    legs.append((new.position_id, rest, ZERO))
        deals = []
        last = len(legs) - 1
        for i, (position_id, qty, realized) in enumerate(legs):
            if commission is not None:
                fee = dec(commission) if i == last else ZERO
            elif commission_per_million:
                if rate is None:
                    rate = self.rate(symbol)
                fee = (qty * price * rate * commission_per_million / MILLION).quantize(
                    CENT, ROUND_HALF_EVEN)
            else:
                fee = ZERO
            deal = DealRecord(
                deal_id=new_deal_id(), order_id=order_id, position_id=position_id,
                symbol=symbol, side=side, quantity=qty, price=price, commission=fee,
                realized_pnl=realized, ts=ts,
            )
            self.balance += realized - fee
            self.realized_pnl += realized
            self.commission_paid += fee
            self.deals.append(deal)
            deals.append(deal)
        return deals

    def _open(self, symbol, side, qty, price, ts, position_id) -> OpenPosition:
        pos = OpenPosition(
            position_id=position_id, symbol=symbol, side=_SIDE_OF[side], quantity=qty,
            open_price=price, opened_at=ts,
        )
        self.positions[symbol] = pos
        return pos

    # ----------------------------------------------------------------- lookups

    def position_by_id(self, position_id: str) -> OpenPosition | None:
        """The open position with that id, or None."""
        for pos in self.positions.values():
            if pos.position_id == position_id:
                return pos
        return None

    # ------------------------------------------------------------------ marks

    def rate(self, symbol: str) -> Decimal:
        """Multiplier from ``symbol``'s quote currency to the account currency.

        1 if they are the same; else the mid, now, of the listed pair linking
        them (USDJPY in a USD account: 1 / USDJPY mid; EURGBP: GBPUSD mid);
        else the instrument's ``conversion_rate``.

        Raises:
            UsageError: unknown symbol, or no way to convert.
        """
        link = self._links.get(symbol)
        if link is None:
            link = self._links[symbol] = self._find_link(symbol)
        pair, invert = link
        if pair is None:
            return ONE
        q = self.quotes.get(pair)
        if q is not None:
            mid = (fdec(q.bid) + fdec(q.ask)) / TWO
            return ONE / mid if invert else mid
        fixed = self.instruments[symbol].conversion_rate
        if fixed is not None:
            return fixed
        inst = self.instruments[symbol]
        raise UsageError(
            f"no rate from {inst.quote_currency} to {self.currency} for {symbol}: "
            f"no quote of {pair} yet and no conversion_rate configured"
        )

    def _find_link(self, symbol: str) -> tuple[str | None, bool]:
        inst = self.instruments.get(symbol)
        if inst is None:
            raise UsageError(f"unknown symbol {symbol!r}")
        qc, acct = inst.quote_currency, self.currency
        if qc == acct:
            return None, False
        for other in self.instruments.values():
            base = _base_currency(other)
            if base == qc and other.quote_currency == acct:
                return other.symbol, False
            if base == acct and other.quote_currency == qc:
                return other.symbol, True
        if inst.conversion_rate is not None:
            return f"\0no-pair:{symbol}", False  # never quoted: always the fixed rate
        raise UsageError(
            f"no rate from {qc} to {acct} for {symbol}: no listed {qc}{acct} or "
            f"{acct}{qc} pair and no conversion_rate configured"
        )

    def current_price(self, pos: OpenPosition) -> Decimal:
        """A LONG's bid, a SHORT's ask (the open price before any quote)."""
        q = self.quotes.get(pos.symbol)
        if q is None:
            return pos.open_price
        return fdec(q.bid if pos.side is PositionSide.LONG else q.ask)

    def position_unrealized(self, pos: OpenPosition) -> Decimal:
        """Unrealized P&L of one position in the account currency, not rounded."""
        cur = self.current_price(pos)
        return (cur - pos.open_price) * pos.quantity * pos.sign * self.rate(pos.symbol)

    def unrealized(self, symbol: str | None = None) -> Decimal:
        """Unrealized P&L (of one symbol or all), converted, not rounded."""
        if symbol is not None:
            pos = self.positions.get(symbol)
            return self.position_unrealized(pos) if pos is not None else ZERO
        return sum((self.position_unrealized(p) for p in self.positions.values()), ZERO)

    def equity(self) -> Decimal:
        return self.balance + self.unrealized()

    def position_margin(self, pos: OpenPosition) -> Decimal:
        inst = self.instruments[pos.symbol]
        return pos.quantity * self.current_price(pos) * self.rate(pos.symbol) / inst.leverage

    def margin(self) -> Decimal:
        return sum((self.position_margin(p) for p in self.positions.values()), ZERO)

    def free_margin(self) -> Decimal:
        """equity - margin, in one pass over the positions."""
        free = self.balance
        for pos in self.positions.values():
            cur = self.current_price(pos)
            rate = self.rate(pos.symbol)
            free += ((cur - pos.open_price) * pos.sign
                     - cur / self.instruments[pos.symbol].leverage) * pos.quantity * rate
        return free

    def margin_level(self) -> Decimal | None:
        """equity / margin x 100, or None without margin."""
        m = self.margin()
        return self.equity() / m * HUNDRED if m else None

    # --------------------------------------------------------------- snapshots

    def position_event(self, pos: OpenPosition) -> events.Position:
        cur = self.current_price(pos)
        upnl = (cur - pos.open_price) * pos.quantity * pos.sign * self.rate(pos.symbol)
        q = self.quotes.get(pos.symbol)
        cur_f = float(cur) if q is None else (q.bid if pos.side is PositionSide.LONG else q.ask)
        return events.Position(  # positional: 4x cheaper than keywords
            pos.position_id, pos.symbol, pos.side, float(pos.quantity), float(pos.open_price),
            cur_f, float(upnl), pos.stop_loss, pos.take_profit, pos.opened_at,
        )

    def position_events(self) -> tuple[events.Position, ...]:
        return tuple(self.position_event(p) for p in self.positions.values())

    def portfolio(self, ts: datetime) -> events.Portfolio:
        """A full snapshot of balance and open positions."""
        return events.Portfolio(
            self.account_id, self.currency, float(self.balance), self.position_events(), ts
        )

    def metrics(self, ts: datetime) -> events.Metrics:
        upnl = self.unrealized()
        equity = self.balance + upnl
        margin = self.margin()
        return events.Metrics(
            account_id=self.account_id, currency=self.currency, balance=float(self.balance),
            equity=float(equity), margin=float(margin), free_margin=float(equity - margin),
            margin_level=float(equity / margin * HUNDRED) if margin else None,
            unrealized_pnl=float(upnl), realized_pnl=float(self.realized_pnl), ts=ts,
        )


def _closed_record(pos: OpenPosition, ts: datetime) -> ClosedRecord:
    return ClosedRecord(
        position_id=pos.position_id, symbol=pos.symbol, side=pos.side,
        quantity=pos.max_quantity, open_price=pos.open_price, opened_at=pos.opened_at,
        closed_at=ts, close_price=pos.closed_value / pos.closed_quantity,
        realized_pnl=pos.realized_pnl, stop_loss=pos.stop_loss, take_profit=pos.take_profit,
    )


def _base_currency(inst: Instrument) -> str | None:
    if inst.base_currency:
        return inst.base_currency
    s = inst.symbol
    if len(s) == 6 and s.isalpha() and s.endswith(inst.quote_currency):
        return s[:3]
    return None
