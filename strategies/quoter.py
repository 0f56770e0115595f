"""A two-sided quoting strategy with inventory skew.

It keeps one GTC limit order on each side around a fair price: the mid, or
the size-weighted microprice of the top of the book when depth is there.
Both quotes shift against the inventory (long -> lower, to sell more
readily), a side stops quoting at the inventory limit, and a working quote
is moved with ``amend`` only when its target moved by ``requote_ticks`` or
more, which keeps the amend rate low.
"""

from __future__ import annotations

from engine.enums import Side
from strategies.base import Strategy


class InventoryQuoter(Strategy):
    quantity: float = 10_000
    half_spread_ticks: int = 8
    skew_ticks: int = 10
    max_inventory: float = 50_000
    requote_ticks: int = 3
    depth: int = 0

    def validate(self) -> None:
        for name in ("quantity", "max_inventory"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.half_spread_ticks < 1 or self.requote_ticks < 1 or self.skew_ticks < 0:
            raise ValueError("half_spread_ticks and requote_ticks must be >= 1, skew_ticks >= 0")

    def on_start(self) -> None:
        self._fair: dict[str, float] = {}
        self.subscribe(self.symbols, depth=self.depth or None)

    def on_depth(self, depth) -> None:
        (bid, bid_size), (ask, ask_size) = depth.bids[0], depth.asks[0]
        self._fair[depth.symbol] = (bid * ask_size + ask * bid_size) / (bid_size + ask_size)

    def on_quote(self, q) -> None:
        fair = self._fair.get(q.symbol) if self.depth else None
        self.requote(q.symbol, fair if fair is not None else (q.bid + q.ask) * 0.5)

    def targets(self, symbol: str, fair: float) -> dict[Side, float]:
        """Where the two quotes belong now: around ``fair``, skewed against inventory."""
        tick = 10.0 ** -self.book.instruments[symbol].price_precision
        skew = self.skew_ticks * tick * self.net_quantity(symbol) / self.max_inventory
        half = self.half_spread_ticks * tick
        return {Side.BUY: fair - half - skew, Side.SELL: fair + half - skew}

    def requote(self, symbol: str, fair: float) -> None:
        tick = 10.0 ** -self.book.instruments[symbol].price_precision
        inventory = self.net_quantity(symbol)
        allowed = {Side.BUY: inventory < self.max_inventory, Side.SELL: inventory > -self.max_inventory}
        working = {o.side: o for o in self.working_orders(symbol)}
        for side, price in self.targets(symbol, fair).items():
            order = working.get(side)
            if not allowed[side]:
                if order is not None and order.order_id:
                    self.cancel(order)
            elif order is None:
                self.order(symbol, side, self.quantity, price=price)
            elif order.order_id and abs(order.price - price) >= self.requote_ticks * tick:
                self.amend(order, price=price)
