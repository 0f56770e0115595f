"""Durable state of the paper-trading server: the matching engine's snapshot in SQLite.

A restart must lose no balance, position, order or history (issue 3, item 7).
The server saves ``MatchingEngine.snapshot`` here and, at its next start,
``restore``s what ``load`` returns. One file, WAL journal, ``synchronous =
NORMAL``: a commit is durable against the process dying (the WAL is in the
OS's hands); on power loss the last commits may go, the file stays
consistent. ``":memory:"`` keeps it in memory (``triotrade sim --memory``).

Tables (a few plain columns to read by hand plus the record as JSON):
``accounts``, ``positions`` (open, replaced per account when they change),
``orders`` (upserted; ``seq`` keeps creation order), ``deals`` and
``closed_positions`` (appended, never changed), ``meta`` (venue clock, id
counters, resting book, DAY list, SL/TP holders). Quotes are not kept: a
restarted server takes fresh ones from its market. No password or token is
ever part of a snapshot.

``save`` takes a full snapshot or a delta (``snapshot(since=...)``) and
writes, in one transaction, only rows that differ from what this ``Store``
wrote or read before; a save with nothing changed touches nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from typing import Any

__all__ = ["MEMORY", "Store"]

MEMORY = ":memory:"
SCHEMA = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    seq INTEGER PRIMARY KEY, account_id TEXT NOT NULL UNIQUE, currency TEXT NOT NULL,
    balance TEXT NOT NULL, realized_pnl TEXT NOT NULL, commission_paid TEXT NOT NULL,
    dirty INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS positions (
    account_id TEXT NOT NULL, idx INTEGER NOT NULL, position_id TEXT NOT NULL,
    symbol TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (account_id, idx));
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY, order_id TEXT NOT NULL UNIQUE, account_id TEXT NOT NULL,
    symbol TEXT NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS orders_by_account ON orders (account_id, seq);
CREATE TABLE IF NOT EXISTS deals (
    account_id TEXT NOT NULL, idx INTEGER NOT NULL, deal_id TEXT NOT NULL, symbol TEXT NOT NULL,
    ts TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (account_id, idx));
CREATE TABLE IF NOT EXISTS closed_positions (
    account_id TEXT NOT NULL, idx INTEGER NOT NULL, position_id TEXT NOT NULL,
    symbol TEXT NOT NULL, closed_at TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (account_id, idx));
"""

_META_KEYS = ("version", "clock", "ids", "book", "day", "sltp")


def _j(x: Any) -> str:
    return json.dumps(x, separators=(",", ":"))


class Store:
    """A snapshot store on one SQLite file (or ``":memory:"``).

    Args:
        path: the database file (created if missing) or ``MEMORY``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self.journal_mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._accounts: dict[str, tuple] = {}  # what the table holds, as last written/read
        self._positions: dict[str, str] = {}
        self._orders: dict[str, str] = {}  # working orders only: finished ones never change
        self._deals: dict[str, int] = {}  # rows held per account
        self._closed: dict[str, int] = {}
        self._meta: dict[str, str] = {}
        self.saves = 0
        self.rows_written = 0

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------ save

    def save(self, snapshot: Mapping) -> int:
        """Write a snapshot (full or delta) in one transaction; returns the
        number of rows written (0: nothing had changed, nothing was done)."""
        db = self._db
        rows = 0
        began = False

        def begin() -> None:
            nonlocal began
            if not began:
                db.execute("BEGIN")
                began = True

        try:
            for aid, a in snapshot["accounts"].items():
                row = (a["currency"], a["balance"], a["realized_pnl"], a["commission_paid"],
                       int(a["dirty"]))
                if self._accounts.get(aid) != row:
                    begin()
                    db.execute(
                        "INSERT INTO accounts (account_id, currency, balance, realized_pnl,"
                        " commission_paid, dirty) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id)"
                        " DO UPDATE SET currency = excluded.currency, balance = excluded.balance,"
                        " realized_pnl = excluded.realized_pnl,"
                        " commission_paid = excluded.commission_paid, dirty = excluded.dirty",
                        (aid, *row))
                    self._accounts[aid] = row
                    rows += 1
                positions = _j(a["positions"])
                if self._positions.get(aid) != positions:
                    begin()
                    db.execute("DELETE FROM positions WHERE account_id = ?", (aid,))
                    db.executemany(
                        "INSERT INTO positions VALUES (?, ?, ?, ?, ?)",
                        [(aid, i, p["position_id"], p["symbol"], _j(p))
                         for i, p in enumerate(a["positions"])])
                    self._positions[aid] = positions
                    rows += 1 + len(a["positions"])
                rows += self._append(aid, a["deals_from"], a["deals"], self._deals, "deals",
                                     lambda d: (d[0], d[3], d[9]), begin)
                rows += self._append(aid, a["closed_from"], a["closed"], self._closed,
                                     "closed_positions", lambda c: (c[0], c[1], c[6]), begin)
                changed = []
                for o in a["orders"]:
                    data = _j(o)
                    oid = o["order_id"]
                    if self._orders.get(oid) != data:
                        changed.append((oid, aid, o["symbol"], o["status"], data))
                        if o["status"] in ("NEW", "PARTIALLY_FILLED", "AMENDED"):
                            self._orders[oid] = data
                        else:
                            self._orders.pop(oid, None)
                if changed:
                    begin()
                    db.executemany(
                        "INSERT INTO orders (order_id, account_id, symbol, status, data)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (order_id) DO UPDATE SET"
                        " status = excluded.status, data = excluded.data", changed)
                    rows += len(changed)
            meta = {k: _j(snapshot[k]) for k in _META_KEYS}
            meta["schema"] = _j(SCHEMA)
            new_meta = [(k, v) for k, v in meta.items() if self._meta.get(k) != v]
            if new_meta and (rows or any(k != "clock" for k, _ in new_meta)
                             or "clock" not in self._meta):
                # the clock alone moves with every quote: saved along with a change
                begin()
                db.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                               " SET value = excluded.value", new_meta)
                self._meta.update(new_meta)
                rows += len(new_meta)
            if began:
                db.execute("COMMIT")
        except BaseException:
            if began:
                db.execute("ROLLBACK")
            # what this object believes the tables hold is now unknown: trust nothing
            self._accounts.clear(), self._positions.clear(), self._orders.clear()
            self._deals.clear(), self._closed.clear(), self._meta.clear()
            raise
        self.saves += 1
        self.rows_written += rows
        return rows

    def _append(self, aid, start, items, held, table, cols, begin) -> int:
        """Insert the rows of ``items`` (rows ``start``...) the table lacks."""
        have = held.get(aid)
        if have is None:
            have = held[aid] = self._db.execute(
                f"SELECT COUNT(*) FROM {table} WHERE account_id = ?", (aid,)).fetchone()[0]
        skip = max(0, have - start)
        new = items[skip:]
        if not new:
            return 0
        if start + skip > have:
            raise ValueError(f"{table} of {aid!r}: a delta from row {start} after {have} rows")
        begin()
        self._db.executemany(
            f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?)",
            [(aid, have + i, *cols(x), _j(x)) for i, x in enumerate(new)])
        held[aid] = have + len(new)
        return len(new)

    # ------------------------------------------------------------ load

    def load(self) -> dict | None:
        """The full snapshot the tables hold (no quotes), or None if empty."""
        db = self._db
        meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
        if "version" not in meta:
            return None
        if meta.get("schema") != SCHEMA:
            raise ValueError(f"{self.path}: store schema {meta.get('schema')}, expected {SCHEMA}")
        accounts: dict[str, dict] = {}
        for aid, cur, bal, rpnl, comm, dirty in db.execute(
            "SELECT account_id, currency, balance, realized_pnl, commission_paid, dirty"
            " FROM accounts ORDER BY seq"
        ):
            self._accounts[aid] = (cur, bal, rpnl, comm, dirty)
            accounts[aid] = {
                "account_id": aid, "currency": cur, "balance": bal, "realized_pnl": rpnl,
                "commission_paid": comm, "dirty": bool(dirty), "positions": [],
                "deals_from": 0, "deals": [], "closed_from": 0, "closed": [], "orders": [],
            }
        for aid, data in db.execute("SELECT account_id, data FROM positions ORDER BY account_id, idx"):
            accounts[aid]["positions"].append(json.loads(data))
        for aid, a in accounts.items():
            self._positions[aid] = _j(a["positions"])
        for table, key, held in (("deals", "deals", self._deals),
                                 ("closed_positions", "closed", self._closed)):
            for aid, data in db.execute(f"SELECT account_id, data FROM {table} ORDER BY account_id, idx"):
                accounts[aid][key].append(json.loads(data))
            for aid, a in accounts.items():
                held[aid] = len(a[key])
        for aid, status, data in db.execute("SELECT account_id, status, data FROM orders ORDER BY seq"):
            accounts[aid]["orders"].append(json.loads(data))
            if status in ("NEW", "PARTIALLY_FILLED", "AMENDED"):
                self._orders[json.loads(data)["order_id"]] = data
        self._meta = {k: _j(v) for k, v in meta.items()}
        return {"full": True, "accounts": accounts, **{k: meta[k] for k in _META_KEYS}}
