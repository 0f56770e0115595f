"""Moving-average cross on the mid price, trading market orders.

Long ``quantity`` while the fast SMA is above the slow one, short while
below; each cross sends one market order for the difference between the
target and the position (counting orders still in flight).
"""

from __future__ import annotations

from strategies.base import Strategy


class _Sma:
    """Incremental fast/slow sums over one ring buffer of mids.

    ``warm`` counts the mids seen until the slow window is full, then stays
    at ``slow`` (no count per quote after the warm-up)."""

    __slots__ = ("buf", "i", "warm", "fast_sum", "slow_sum", "above", "fast", "slow")

    def __init__(self, fast: int, slow: int) -> None:
        self.buf = [0.0] * slow
        self.i = 0
        self.warm = 0
        self.fast_sum = 0.0
        self.slow_sum = 0.0
        self.above: bool | None = None
        self.fast = fast
        self.slow = slow


class SmaCross(Strategy):
    fast: int = 10
    slow: int = 50
    quantity: float = 10_000

    def validate(self) -> None:
        if not 0 < self.fast < self.slow:
            raise ValueError(f"need 0 < fast < slow, got fast={self.fast} slow={self.slow}")
        if self.quantity <= 0:
            raise ValueError(f"quantity must be > 0, got {self.quantity}")

    def on_start(self) -> None:
        self._sma = {symbol: _Sma(self.fast, self.slow) for symbol in self.symbols}
        self.subscribe(self.symbols)

    def on_quote(self, q) -> None:
        st = self._sma[q.symbol]
        mid = (q.bid + q.ask) * 0.5
        buf, i, slow = st.buf, st.i, st.slow
        slow_sum = st.slow_sum = st.slow_sum + (mid - buf[i])
        fast_sum = st.fast_sum = st.fast_sum + (mid - buf[i - st.fast])  # the mid leaving the fast window
        buf[i] = mid
        i += 1
        st.i = i if i < slow else 0
        if st.warm < slow:
            st.warm += 1
            if st.warm < slow:
                return
        above = fast_sum * slow > slow_sum * st.fast
        if above is not st.above:
            if st.above is not None:
                self._trade_to(q.symbol, self.quantity if above else -self.quantity)
            st.above = above

    def _trade_to(self, symbol: str, target: float) -> None:
        held = self.net_quantity(symbol)
        for o in self.working_orders(symbol):
            held += o.remaining_quantity if o.side == "BUY" else -o.remaining_quantity
        delta = target - held
        if delta > 0:
            self.buy(symbol, delta)
        elif delta < 0:
            self.sell(symbol, -delta)
