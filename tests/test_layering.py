"""The sans-IO core stays sans-IO (DESIGN rule 1).

Book, risk gate, matching engine and strategies are synchronous and
deterministic: they import no event loop, no socket, no wall clock and no
randomness. This reads their source (it imports nothing), so a forbidden
import anywhere in a module, even inside a function, fails here with the
file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = frozenset({"trio", "trio_websocket", "socket", "asyncio", "time", "random"})
"""Top-level modules the core must not import (``import time.x`` counts too)."""

IO_MODULES = frozenset({"engine/runtime.py", "engine/cli.py"})
"""The only modules of ``engine/`` that may touch trio and the network."""

ALLOWED: dict[str, frozenset[str]] = {}
"""Narrow exceptions, by module (none today)."""

WALL_CLOCK_CALLS = frozenset({"now", "utcnow", "today", "fromtimestamp", "utcfromtimestamp"})
"""``datetime.now()`` and friends: the wall clock without ``import time``."""

WALL_CLOCK_ALLOWED = frozenset({"engine/clock.py"})
"""``WallClock`` lives here; it is handed to the core, never read by it."""


def core_modules() -> list[str]:
    paths = [p for p in (ROOT / "engine").glob("*.py")]
    for package in ("risk", "strategies"):
        paths += (ROOT / package).rglob("*.py")
    paths += [ROOT / "adapters/sim" / name for name in ("matching.py", "accounts.py")]
    paths.append(ROOT / "adapters/trader_ws/session.py")
    rel = {p.relative_to(ROOT).as_posix() for p in paths if p.is_file()}
    return sorted(rel - IO_MODULES)


def forbidden_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every forbidden import in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def wall_clock_calls(source: str) -> list[tuple[int, str]]:
    """(line, call) of every ``datetime.now()``-like call in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in WALL_CLOCK_CALLS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in {"datetime", "date"}
        ):
            found.append((node.lineno, f"{node.func.value.id}.{node.func.attr}()"))
    return found


def test_the_core_is_found():
    modules = core_modules()
    assert {"engine/events.py", "engine/codec.py", "engine/clock.py"} <= set(modules)
    assert not IO_MODULES & set(modules)


@pytest.mark.parametrize("module", core_modules())
def test_core_module_imports_no_io(module):
    allowed = ALLOWED.get(module, frozenset())
    bad = [
        (n, m) for n, m in forbidden_imports((ROOT / module).read_text(encoding="utf-8"))
        if m.split(".")[0] not in allowed
    ]
    assert not bad, f"{module} imports {', '.join(f'{m} (line {n})' for n, m in bad)}"


@pytest.mark.parametrize("module", sorted(set(core_modules()) - WALL_CLOCK_ALLOWED))
def test_core_module_reads_no_wall_clock(module):
    bad = wall_clock_calls((ROOT / module).read_text(encoding="utf-8"))
    assert not bad, f"{module} reads the wall clock: {', '.join(f'{c} (line {n})' for n, c in bad)}"


@pytest.mark.parametrize(
    "source, hits",
    [
        ("import trio", [(1, "trio")]),
        ("import os, socket", [(1, "socket")]),
        ("import time as t", [(1, "time")]),
        ("from random import choice", [(1, "random")]),
        ("from trio_websocket._impl import x", [(1, "trio_websocket._impl")]),
        ("def f():\n    import asyncio\n", [(2, "asyncio")]),
        ("import timeit, randomness, triotrade", []),
        ("from . import time", []),
        ("from engine.clock import VirtualClock", []),
    ],
)
def test_scanner_sees_every_import_form(source, hits):
    assert forbidden_imports(source) == hits


def test_scanner_sees_wall_clock_calls():
    src = "from datetime import datetime\nx = datetime.now(tz)\ny = self.clock.now\nz = date.today()\n"
    assert wall_clock_calls(src) == [(2, "datetime.now()"), (4, "date.today()")]
