"""An in-memory account for the risk gate's tests (implements ``risk.RiskView``)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import attrs

from engine.enums import OrderType, Side
from engine.events import Quote
from engine.instruments import Instrument
from risk import RiskGate, RiskLimits

ACCOUNT = "acc_1"
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
EURUSD = Instrument("EURUSD", "USD", lot_step=1000, base_currency="EUR")
USDJPY = Instrument("USDJPY", "JPY", lot_step=1000, price_precision=3, base_currency="USD")
GBPUSD = Instrument("GBPUSD", "USD", lot_step=1000, base_currency="GBP")


@attrs.define
class FakeOrder:
    order_id: str | None
    symbol: str
    side: Side
    remaining_quantity: float
    type: OrderType = OrderType.LIMIT
    price: float | None = None
    stop_price: float | None = None
    client_order_id: str | None = None
    quantity: float = attrs.field()

    @quantity.default
    def _quantity(self) -> float:
        return self.remaining_quantity


class FakeView:
    """Quotes, nets, working orders, positions and equity, all set by hand."""

    def __init__(self) -> None:
        self.instruments = {i.symbol: i for i in (EURUSD, USDJPY, GBPUSD)}
        self.quotes: dict[str, Quote] = {
            "EURUSD": Quote("EURUSD", 1.0840, 1.0842, T0),
            "USDJPY": Quote("USDJPY", 149.99, 150.01, T0),
            "GBPUSD": Quote("GBPUSD", 1.2700, 1.2702, T0),
        }
        self.rates = {"EURUSD": 1.0, "USDJPY": 1 / 150.0, "GBPUSD": 1.0}
        self.orders: list[FakeOrder] = []
        self.positions: dict[str, tuple[str, float]] = {}
        self.equity_value = 10_000.0

    def quote(self, symbol: str) -> Quote | None:
        return self.quotes.get(symbol)

    def net_quantity(self, symbol: str) -> float:
        return sum(q for s, q in self.positions.values() if s == symbol)

    def working_orders(self):
        return list(self.orders)

    def position_of(self, position_id: str):
        return self.positions.get(position_id)

    def position_ids(self):
        return list(self.positions)

    def rate(self, symbol: str) -> float:
        return self.rates[symbol]

    def equity(self) -> float:
        return self.equity_value

    # -- setup helpers -----------------------------------------------------
    def hold(self, symbol: str, quantity: float, position_id: str | None = None) -> str:
        """Set the open position of ``symbol`` (signed)."""
        position_id = position_id or f"p-{symbol}"
        self.positions[position_id] = (symbol, quantity)
        return position_id

    def work(self, symbol: str, side: Side, remaining: float, **kw) -> FakeOrder:
        """Add a working order (``quantity=`` its total, if partly filled)."""
        order = FakeOrder(kw.pop("order_id", f"o-{len(self.orders) + 1}"), symbol, side, remaining, **kw)
        self.orders.append(order)
        return order

    def age_quote(self, symbol: str, ms: float, now: datetime = T0) -> None:
        """Make the latest quote of ``symbol`` ``ms`` old at ``now``."""
        q = self.quotes[symbol]
        self.quotes[symbol] = Quote(symbol, q.bid, q.ask, now - timedelta(milliseconds=ms))


def make_gate(**limits) -> tuple[RiskGate, FakeView]:
    view = FakeView()
    return RiskGate(RiskLimits(**limits), view, ACCOUNT), view
