"""Durable venue state: engine snapshot -> restore, and the SQLite store round trip.

A restored engine must be indistinguishable from the one that was saved: same
portfolio and histories, and the same replies to the same later inputs
(ids continue, resting orders and SL/TP still trigger, DAY orders still
expire, used clientOrderIds stay used).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

import pytest

from adapters.sim.matching import MatchingEngine, VenueConfig
from adapters.sim.store import MEMORY, Store
from engine import intents as it
from engine.enums import TimeInForce
from engine.errors import UsageError
from engine.events import Quote
from tests.test_matching import BUY, INSTRUMENTS, LMT, SELL, STP, execs, order, quote

CFG = dict(commission_per_million=25)


def fresh(**cfg) -> MatchingEngine:
    eng = MatchingEngine(INSTRUMENTS, VenueConfig(**{**CFG, **cfg}))
    for acc in ("A", "B"):
        eng.open_account(acc, "USD", 100_000)
    eng.on_market(quote(1.1000, 1.1002))
    eng.on_market(quote(1.2500, 1.2502, sym="GBPUSD"))
    return eng


def trade(eng: MatchingEngine) -> None:
    """A bit of everything: open, rest, amend, cancel, close, partial close, flip."""
    eng.submit(order(BUY, 20_000, client_order_id="c-1", stop_loss=1.0900, take_profit=1.1200))
    eng.submit(order(BUY, 10_000, type=LMT, price=1.0950, client_order_id="rest-1"))
    eng.submit(order(SELL, 10_000, type=LMT, price=1.1300, time_in_force=TimeInForce.DAY))
    eng.submit(order(BUY, 10_000, type=STP, stop_price=1.1050))
    amend = execs(eng.submit(order(BUY, 10_000, type=LMT, price=1.0800)))[0]
    eng.submit(it.AmendOrder("A", amend.order_id, quantity=20_000, price=1.0850))
    cancel = execs(eng.submit(order(SELL, 10_000, type=LMT, price=1.1500, client_order_id="gone")))[0]
    eng.submit(it.CancelOrder("A", cancel.order_id))
    pos = execs(eng.submit(order(BUY, 30_000, acc="B", sym="GBPUSD")))[-1].position_id
    eng.submit(it.ClosePosition("B", pos, 10_000))
    eng.on_market(quote(1.2510, 1.2512, ms=5, sym="GBPUSD"))
    eng.submit(it.ClosePosition("B", pos))
    eng.submit(order(SELL, 20_000, acc="B", sym="GBPUSD"))
    eng.submit(order(BUY, 40_000, acc="B", sym="GBPUSD"))  # flips SHORT -> LONG
    eng.on_market(quote(1.1001, 1.1003, ms=10))


def later(eng: MatchingEngine) -> list:
    """Inputs after the restart; every reply's event, in order."""
    out = []
    midnight = datetime(2024, 1, 3, tzinfo=timezone.utc)
    steps = [
        lambda: eng.submit(order(BUY, 10_000, client_order_id="c-1")),  # used: DUPLICATE
        lambda: eng.on_market(quote(1.1051, 1.1053, ms=20)),  # the stop triggers
        lambda: eng.submit(order(BUY, 10_000, client_order_id="c-new")),
        lambda: eng.on_market(quote(1.0940, 1.0949, ms=30)),  # the resting limits fill
        lambda: eng.on_market(quote(1.0890, 1.0892, ms=40)),  # the stop-loss closes A's LONG
        lambda: eng.on_market(quote(1.0840, 1.0845, ms=50)),  # the amended limit fills
        lambda: eng.submit(it.CancelOrder("A", client_order_id="rest-1")),  # filled: UNKNOWN
        lambda: eng.on_market(Quote("GBPUSD", 1.25, 1.2502, midnight)),  # DAY expires
        lambda: eng.submit(order(SELL, 10_000, acc="B", sym="GBPUSD")),
    ]
    for step in steps:
        out += [r.event for r in step()]
    return out


def views(eng: MatchingEngine) -> list:
    out = []
    for acc in ("A", "B"):
        out += [eng.portfolio(acc), eng.metrics(acc),
                eng.order_history(it.OrderHistoryQuery(acc, limit=1000)),
                eng.position_history(it.PositionHistoryQuery(acc, limit=1000)),
                eng.deal_history(it.DealHistoryQuery(acc, limit=1000))]
    return out


def restored(snap: dict, **cfg) -> MatchingEngine:
    eng = MatchingEngine(INSTRUMENTS, VenueConfig(**{**CFG, **cfg}))
    eng.restore(json.loads(json.dumps(snap)))  # plain JSON data, nothing else
    return eng


def test_a_restored_engine_shows_the_same_state_and_answers_the_same_way():
    eng = fresh()
    trade(eng)
    twin = restored(eng.snapshot())
    assert views(twin) == views(eng)
    assert twin.snapshot() == eng.snapshot()
    a, b = later(eng), later(twin)
    assert a == b
    said = [str(getattr(e, "code", None) or getattr(e, "reason", None) or e.status)
            for e in a if type(e).__name__ in ("Execution", "Error")]
    assert said[0] == "DUPLICATE_CLIENT_ORDER_ID" and "UNKNOWN_ORDER" in said
    assert {"STOP_LOSS", "DAY"} <= set(said) and said.count("FILLED") == 5
    assert views(twin) == views(eng)


def test_restore_continues_ids_and_keeps_decimals_exact():
    eng = fresh()
    trade(eng)
    snap = eng.snapshot()
    twin = restored(snap)
    (new,) = execs(twin.submit(order(BUY, 10_000, type=LMT, price=1.0)))
    assert new.order_id == f"o-{snap['ids']['order'] + 1}"
    assert new.exec_id == f"x-{snap['ids']['exec'] + 1}"
    ledger, twin_ledger = eng.accounts["B"].ledger, twin.accounts["B"].ledger
    assert (twin_ledger.balance, twin_ledger.commission_paid) == (ledger.balance, ledger.commission_paid)
    assert str(twin_ledger.balance) == str(ledger.balance)
    assert twin_ledger.deal_rows() == ledger.deal_rows()


def test_restore_needs_a_fresh_engine_and_listed_symbols():
    eng = fresh()
    trade(eng)
    snap = eng.snapshot()
    with pytest.raises(UsageError, match="no account yet"):
        fresh().restore(snap)
    narrow = MatchingEngine({"EURUSD": INSTRUMENTS["EURUSD"]}, VenueConfig(**CFG))
    with pytest.raises(UsageError, match="GBPUSD"):
        narrow.restore(snap)
    with pytest.raises(UsageError, match="complete snapshot"):
        MatchingEngine(INSTRUMENTS).restore(eng.snapshot(since=snap["marks"]))


def _durable(snap: dict) -> dict:
    """What the store keeps of a full snapshot."""
    return {k: v for k, v in snap.items() if k not in ("quotes", "depths", "marks")}


def test_store_round_trip_on_a_wal_file(tmp_path):
    eng = fresh()
    trade(eng)
    path = tmp_path / "state.sqlite3"
    store = Store(path)
    assert store.journal_mode == "wal"
    snap = eng.snapshot()
    assert store.save(snap) > 0
    assert store.save(eng.snapshot(since=snap["marks"])) == 0  # nothing changed: nothing written
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    loaded = Store(path).load()
    assert loaded == _durable(snap)
    twin = MatchingEngine(INSTRUMENTS, VenueConfig(**CFG))
    twin.restore(loaded)
    for sym, q in eng.quotes.items():  # a restarted server gets fresh quotes from its market
        twin.on_market(q)
    assert views(twin) == views(eng)
    assert later(twin) == later(eng)


def test_deltas_saved_step_by_step_load_as_the_whole(tmp_path):
    """Saving only what changed, after every step, adds up to the full state."""
    eng = fresh()
    store = Store(tmp_path / "s.sqlite3")
    snap = eng.snapshot()
    store.save(snap)
    marks = snap["marks"]
    written = []

    def step(replies=None) -> None:
        nonlocal marks
        delta = eng.snapshot(since=marks)
        marks = delta["marks"]
        written.append(store.save(delta))

    eng.submit = _after(eng.submit, step)
    eng.on_market = _after(eng.on_market, step)
    trade(eng)
    later(eng)
    store.close()
    assert Store(tmp_path / "s.sqlite3").load() == _durable(MatchingEngine.snapshot(eng))
    assert 0 in written  # a quote that changed nothing wrote nothing


def _after(fn, then):
    def wrapped(*args, **kw):
        out = fn(*args, **kw)
        then()
        return out
    return wrapped


def test_memory_store_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    eng = fresh()
    trade(eng)
    store = Store(MEMORY)
    store.save(eng.snapshot())
    assert store.load()["accounts"].keys() == {"A", "B"}
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_an_empty_store_loads_none(tmp_path):
    assert Store(tmp_path / "new.sqlite3").load() is None


def test_save_cost_stays_small_for_a_delta_with_a_long_history(tmp_path):
    """The server saves every half second: a delta must not cost in the history's size."""
    eng = fresh()
    for i in range(2000):
        eng.submit(order(BUY if i % 2 else SELL, 10_000))
    store = Store(tmp_path / "big.sqlite3")
    snap = eng.snapshot()
    store.save(snap)
    eng.submit(order(BUY, 10_000))
    delta = eng.snapshot(since=snap["marks"])
    assert sum(len(a["orders"]) for a in delta["accounts"].values()) == 1
    assert sum(len(a["deals"]) for a in delta["accounts"].values()) == 1
    assert 0 < store.save(delta) < 10
