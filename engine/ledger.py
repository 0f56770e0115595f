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
from typing import NamedTuple

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


_PER_UNIT: dict[Decimal, Decimal] = {}


def _per_unit(per_million: Decimal) -> Decimal:
    """``per_million / 1e6``, memoized. ``x * per_million / 1e6`` and
    ``x * (per_million / 1e6)`` are the same number (scaling by a power of ten
    commutes with rounding to significant digits; the division is exact for
    any rate of up to 28 digits), so fees do not change by a digit."""
    f = _PER_UNIT.get(per_million)
    if f is None:
        if len(_PER_UNIT) >= 1024:
            _PER_UNIT.clear()
        f = _PER_UNIT[per_million] = per_million / MILLION
    return f


_LONG, _SHORT = PositionSide.LONG, PositionSide.SHORT
_SIGN = {_LONG: 1, _SHORT: -1}
_SIDE_OF = {Side.BUY: _LONG, Side.SELL: _SHORT}
_MINUS_ONE = Decimal(-1)
_SAME: tuple[None, bool] = (None, False)
"""The link of a symbol quoted in the account currency: its rate is ``ONE``.

Hot paths test ``self._links.get(symbol) is _SAME`` and then skip the
multiplication by the rate; ``x * ONE`` is ``x`` exactly (same digits, same
exponent) for any ``x`` that is itself the result of an operation, so results
do not change. Likewise a LONG's ``x * 1`` is skipped and a SHORT's ``x * -1``
kept (it gives ``-0`` for zero, which a negation would not)."""


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
        return self.quantity if self.side is _LONG else -self.quantity


class DealRecord(NamedTuple):
    """One booked deal: a fill, or one half of a flipping fill.

    An immutable NamedTuple rather than an ``attrs.frozen`` class: a flip
    books two of these, and a frozen attrs instance costs 0.8 us to build
    against 0.2 us for a tuple.
    """

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


class ClosedRecord(NamedTuple):
    """A closed position: ``quantity`` is the largest it held, ``close_price``
    the quantity-weighted average of its closing fills. (A NamedTuple for the
    same reason as ``DealRecord``.)"""

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


_new = tuple.__new__  # builds a record from a ready tuple: no keyword parsing


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
        # Deals and closed positions are kept as plain tuples of str, bool,
        # Decimal, datetime and float, which the garbage collector stops
        # tracking at its first pass; records (tuple subclasses, always
        # tracked) are made when ``deals``/``closed`` is read. A long backtest
        # keeps hundreds of thousands of them, and every full collection used
        # to walk them all: that cost more than booking them.
        self._deal_rows: list[tuple] = []
        self._deals: list[DealRecord] = []
        self._closed_rows: list[tuple] = []
        self._closed: list[ClosedRecord] = []
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
        ``commission`` (the local book's way: it only knows the event's
        total), which a flip splits by quantity, the closing deal's share
        rounded to the cent and the rest on the opening deal. Raises
        UsageError on a quantity <= 0.
        """
        rows = self._deal_rows
        n = len(rows)
        self.fill(order_id, symbol, side, quantity, price, ts, new_position_id, new_deal_id,
                  commission_per_million, commission)
        return [_new(DealRecord, (r[0], r[1], r[2], r[3], side, *r[5:])) for r in rows[n:]]

    def fill(
        self, order_id: str, symbol: str, side: Side, quantity: Decimal, price: Decimal,
        ts: datetime, new_position_id: Callable[[], str], new_deal_id: Callable[[], str],
        commission_per_million: Decimal | None = None, commission: Decimal | None = None,
    ) -> tuple[str, Decimal]:
        """``apply_fill`` for the hot paths (the venue's and the book's, once
        per fill each): positional, and no record built that nobody reads.

        Returns the last deal's position id and the fill's total commission
        (the sum of its deals' commissions).
        """
        if type(quantity) is not Decimal:
            quantity = dec(quantity)
        if type(price) is not Decimal:
            price = dec(price)
        if quantity <= ZERO:
            raise UsageError(f"fill quantity must be > 0, got {quantity}")
        # Straight-line code for the three cases (open/grow, reduce/close, flip).
        # realized = (price - open) x qty x sign x rate and fee = qty x price x
        # rate x per_million / 1e6 are computed operation by operation in that
        # order, so every digit is as before; only multiplications by exactly 1
        # (and additions of exactly 0 to running totals) are skipped.
        pside = _SIDE_OF[side]
        buy = pside is _LONG
        positions = self.positions
        pos = positions.get(symbol)
        if pos is None or pos.side is pside:
            if pos is None:
                pos = positions[symbol] = OpenPosition(
                    new_position_id(), symbol, pside, quantity, price, ts, None, None, quantity)
            else:
                held = pos.quantity
                total = held + quantity
                pos.open_price = (pos.open_price * held + price * quantity) / total
                pos.quantity = total
                if total > pos.max_quantity:
                    pos.max_quantity = total
            if commission is not None:
                fee = commission if type(commission) is Decimal else dec(commission)
            elif commission_per_million:
                # asked for only now: an opening fill without commission needs no quote
                fee = self._fee(symbol, quantity, price, commission_per_million)
            else:
                fee = ZERO
            deal_id = new_deal_id()
            position_id = pos.position_id
            self._deal_rows.append((deal_id, order_id, position_id, symbol, buy, quantity, price,
                                    fee, ZERO, ts))
            self.balance += ZERO - fee
            self.commission_paid += fee  # realized_pnl += 0 would change nothing
            return position_id, fee

        # reducing, closing or flipping
        held = pos.quantity
        closing = quantity if quantity < held else held
        rate = ONE if self._links.get(symbol) is _SAME else self.rate(symbol)
        pnl = (price - pos.open_price) * closing
        if buy:  # closing a SHORT: sign -1
            pnl = pnl * _MINUS_ONE
        if rate is not ONE:
            pnl = pnl * rate
        realized = pnl.quantize(CENT, ROUND_HALF_EVEN)
        notional = price * closing  # == closing * price, digit for digit
        pos.closed_quantity += closing
        pos.closed_value += notional
        pos.realized_pnl += realized
        pos.quantity = left = held - closing
        position_id = pos.position_id
        rest = None
        if not left:
            del positions[symbol]
            self._closed_rows.append((
                position_id, symbol, not buy, pos.max_quantity, pos.open_price, pos.opened_at, ts,
                pos.closed_value, pos.closed_quantity, pos.realized_pnl, pos.stop_loss,
                pos.take_profit,
            ))
            rest = quantity - closing
            if rest:
                new_id = new_position_id()
                positions[symbol] = OpenPosition(
                    new_id, symbol, pside, rest, price, ts, None, None, rest)
            else:
                rest = None
        if commission is not None:
            if type(commission) is not Decimal:
                commission = dec(commission)
            # a flip: the closing deal's share by quantity, the rest on the opening one
            fee = commission if rest is None else (
                commission * closing / quantity).quantize(CENT, ROUND_HALF_EVEN)
        elif commission_per_million:
            if rate is not ONE:
                notional = notional * rate
            per_unit = _PER_UNIT.get(commission_per_million) or _per_unit(
                commission_per_million)
            fee = (notional * per_unit).quantize(CENT, ROUND_HALF_EVEN)
        else:
            fee = ZERO
        deal_id = new_deal_id()
        rows = self._deal_rows
        rows.append(
            (deal_id, order_id, position_id, symbol, buy, closing, price, fee, realized, ts))
        self.balance += realized - fee
        self.realized_pnl += realized
        if fee is not ZERO:
            self.commission_paid += fee
        if rest is None:
            return position_id, fee
        first_fee = fee
        if commission is not None:
            fee = commission - first_fee
        elif commission_per_million:
            notional = rest * price
            if rate is not ONE:
                notional = notional * rate
            fee = (notional * per_unit).quantize(CENT, ROUND_HALF_EVEN)
        else:
            fee = ZERO
        deal_id = new_deal_id()
        rows.append((deal_id, order_id, new_id, symbol, buy, rest, price, fee, ZERO, ts))
        self.balance += ZERO - fee
        self.commission_paid += fee
        return new_id, first_fee + fee

    @property
    def deals(self) -> list[DealRecord]:
        """Every deal booked, oldest first (do not modify the list)."""
        done, rows = self._deals, self._deal_rows
        if len(done) < len(rows):
            done.extend(
                _new(DealRecord, (r[0], r[1], r[2], r[3], Side.BUY if r[4] else Side.SELL, *r[5:]))
                for r in rows[len(done):]
            )
        return done

    def deal_rows(self) -> list[tuple]:
        """Every deal booked, oldest first, as plain tuples in ``DealRecord``'s
        field order except ``side``, a bool (True: BUY). For a report of many
        deals: no record object is built (do not modify the list)."""
        return self._deal_rows

    def closed_pnls(self) -> list[Decimal]:
        """The ``realized_pnl`` of every closed position, oldest first (no
        record object is built)."""
        return [r[9] for r in self._closed_rows]

    @property
    def closed(self) -> list[ClosedRecord]:
        """Every closed position, oldest first (do not modify the list)."""
        done, rows = self._closed, self._closed_rows
        if len(done) < len(rows):
            done.extend(
                _new(ClosedRecord, (r[0], r[1], _LONG if r[2] else _SHORT, *r[3:7], r[7] / r[8],
                                    *r[9:]))
                for r in rows[len(done):]
            )
        return done

    def _fee(self, symbol: str, qty: Decimal, price: Decimal, per_million: Decimal) -> Decimal:
        """qty x price x rate x per_million / 1e6, half-even to the cent."""
        notional = qty * price
        if self._links.get(symbol) is not _SAME:
            rate = self.rate(symbol)
            if rate is not ONE:
                notional = notional * rate
        return (notional * _per_unit(per_million)).quantize(CENT, ROUND_HALF_EVEN)

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
        if link is _SAME:
            return ONE
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
            return _SAME
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
        return fdec(q.bid if pos.side is _LONG else q.ask)

    def position_unrealized(self, pos: OpenPosition) -> Decimal:
        """Unrealized P&L of one position in the account currency, not rounded."""
        return _signed_rated((self.current_price(pos) - pos.open_price) * pos.quantity,
                             pos.side, self.rate(pos.symbol))

    def unrealized(self, symbol: str | None = None) -> Decimal:
        """Unrealized P&L (of one symbol or all), converted, not rounded."""
        if symbol is not None:
            pos = self.positions.get(symbol)
            return self.position_unrealized(pos) if pos is not None else ZERO
        total = ZERO  # what sum(..., ZERO) adds, in its order, without a generator
        for p in self.positions.values():
            total += self.position_unrealized(p)
        return total

    def equity(self) -> Decimal:
        return self.balance + self.unrealized()

    def position_margin(self, pos: OpenPosition) -> Decimal:
        inst = self.instruments[pos.symbol]
        m = pos.quantity * self.current_price(pos)
        rate = self.rate(pos.symbol)
        if rate is not ONE:
            m = m * rate
        return m / inst.leverage

    def margin(self) -> Decimal:
        return sum((self.position_margin(p) for p in self.positions.values()), ZERO)

    def free_margin(self) -> Decimal:
        """equity - margin, in one pass over the positions."""
        free = self.balance
        instruments, links, quotes = self.instruments, self._links, self.quotes
        for pos in self.positions.values():
            symbol = pos.symbol
            q = quotes.get(symbol)  # self.current_price(pos), inlined
            if q is None:
                cur = pos.open_price
            else:
                p = q.bid if pos.side is _LONG else q.ask
                cur = _PRICES.get(p) or fdec(p)
            rate = ONE if links.get(symbol) is _SAME else self.rate(symbol)
            x = cur - pos.open_price
            if pos.side is _SHORT:
                x = x * _MINUS_ONE
            x = (x - cur / instruments[symbol].leverage) * pos.quantity
            if rate is not ONE:
                x = x * rate
            free += x
        return free

    def margin_level(self) -> Decimal | None:
        """equity / margin x 100, or None without margin."""
        m = self.margin()
        return self.equity() / m * HUNDRED if m else None

    # --------------------------------------------------------------- snapshots

    def position_event(self, pos: OpenPosition) -> events.Position:
        cur = self.current_price(pos)
        upnl = _signed_rated((cur - pos.open_price) * pos.quantity, pos.side, self.rate(pos.symbol))
        q = self.quotes.get(pos.symbol)
        cur_f = float(cur) if q is None else (q.bid if pos.side is _LONG else q.ask)
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


def _signed_rated(x: Decimal, side: PositionSide, rate: Decimal) -> Decimal:
    """``x * sign * rate``, digit for digit, without the multiplications by 1."""
    if side is _SHORT:
        x = x * _MINUS_ONE
    return x if rate is ONE else x * rate


def _base_currency(inst: Instrument) -> str | None:
    if inst.base_currency:
        return inst.base_currency
    s = inst.symbol
    if len(s) == 6 and s.isalpha() and s.endswith(inst.quote_currency):
        return s[:3]
    return None


# ------------------------------------------------------------------ state
# Plain JSON-able state of a ledger, for the paper-trading server's durable
# store (``adapters.sim.store``): Decimals as strings (exact digits and
# exponent), datetimes as ISO 8601, floats as they are.


def _pt(x: str) -> datetime:
    return datetime.fromisoformat(x)


def _deal_row_state(r: tuple) -> list:
    return [r[0], r[1], r[2], r[3], r[4], str(r[5]), str(r[6]), str(r[7]), str(r[8]), r[9].isoformat()]


def _deal_row_from(s: list) -> tuple:
    return (s[0], s[1], s[2], s[3], bool(s[4]), Decimal(s[5]), Decimal(s[6]), Decimal(s[7]),
            Decimal(s[8]), _pt(s[9]))


def _closed_row_state(r: tuple) -> list:
    return [r[0], r[1], r[2], str(r[3]), str(r[4]), r[5].isoformat(), r[6].isoformat(), str(r[7]),
            str(r[8]), str(r[9]), r[10], r[11]]


def _closed_row_from(s: list) -> tuple:
    return (s[0], s[1], bool(s[2]), Decimal(s[3]), Decimal(s[4]), _pt(s[5]), _pt(s[6]),
            Decimal(s[7]), Decimal(s[8]), Decimal(s[9]), s[10], s[11])


def _position_state(p: OpenPosition) -> dict:
    return {
        "position_id": p.position_id, "symbol": p.symbol, "side": p.side.value,
        "quantity": str(p.quantity), "open_price": str(p.open_price), "opened_at": p.opened_at.isoformat(),
        "stop_loss": p.stop_loss, "take_profit": p.take_profit,
        "max_quantity": str(p.max_quantity), "closed_quantity": str(p.closed_quantity),
        "closed_value": str(p.closed_value), "realized_pnl": str(p.realized_pnl),
    }


def _position_from(s: Mapping) -> OpenPosition:
    return OpenPosition(
        s["position_id"], s["symbol"], PositionSide(s["side"]), Decimal(s["quantity"]),
        Decimal(s["open_price"]), _pt(s["opened_at"]), s["stop_loss"], s["take_profit"],
        Decimal(s["max_quantity"]), Decimal(s["closed_quantity"]), Decimal(s["closed_value"]),
        Decimal(s["realized_pnl"]),
    )


def ledger_state(ledger: Ledger, deals_from: int = 0, closed_from: int = 0) -> dict:
    """The ledger as plain data; deals and closed positions from those indexes
    on (an earlier state holds the ones before: they never change)."""
    return {
        "account_id": ledger.account_id, "currency": ledger.currency,
        "balance": str(ledger.balance), "realized_pnl": str(ledger.realized_pnl),
        "commission_paid": str(ledger.commission_paid),
        "positions": [_position_state(p) for p in ledger.positions.values()],
        "deals_from": deals_from,
        "deals": [_deal_row_state(r) for r in ledger._deal_rows[deals_from:]],
        "closed_from": closed_from,
        "closed": [_closed_row_state(r) for r in ledger._closed_rows[closed_from:]],
    }


def ledger_from_state(
    state: Mapping, instruments: Mapping[str, Instrument], quotes: Mapping[str, events.Quote]
) -> Ledger:
    """The ledger ``ledger_state`` described (a complete one: from index 0)."""
    if state.get("deals_from", 0) or state.get("closed_from", 0):
        raise UsageError("a ledger is restored from a complete state, not a delta")
    ledger = Ledger(state["account_id"], state["currency"], Decimal(state["balance"]),
                    instruments, quotes)
    ledger.realized_pnl = Decimal(state["realized_pnl"])
    ledger.commission_paid = Decimal(state["commission_paid"])
    for s in state["positions"]:
        pos = _position_from(s)
        ledger.positions[pos.symbol] = pos
    ledger._deal_rows = [_deal_row_from(s) for s in state["deals"]]
    ledger._closed_rows = [_closed_row_from(s) for s in state["closed"]]
    return ledger
