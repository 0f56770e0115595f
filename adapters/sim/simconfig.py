"""The paper-trading server's configuration: one YAML file -> one frozen value.

Validated by ``engine.config.structure``, so an unknown key, a wrong type or a
value out of range stops the server before it starts, with the dotted key
(``users[0].accounts``, ``market.synthetic.rate_per_s``). ``${NAME}`` is read
from the environment. Passwords never sit in the file in clear: a user gives
either ``password_hash`` (``adapters.sim.auth.hash_password``'s format) or
``password_env``, the name of a variable holding the password, hashed at start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs

from adapters.sim.auth import User, hash_password
from adapters.sim.hub import HubConfig
from adapters.sim.matching import SyntheticDepth, VenueConfig
from adapters.sim.store import MEMORY
from engine.config import (
    InstrumentConfig, SyntheticDepthConfig, instrument_map, interpolate, merge_instrument_defaults,
    non_empty, non_negative, positive, read_yaml, resolve_path, structure,
)
from engine.errors import ConfigError
from engine.instruments import Instrument

__all__ = [
    "AccountConfig", "AuthSettings", "MarketConfig", "ReplayMarket", "ServerSettings", "SimConfig",
    "SyntheticMarket", "UserConfig", "VenueSettings", "embedded_sim_config", "load_sim_config",
    "sim_config_from_dict",
]


DEFAULT_STORE = "sim-state.sqlite3"
"""The durable state's file name, next to the config file, unless ``store`` says."""


@attrs.frozen(kw_only=True)
class UserConfig:
    """A login. Exactly one of ``password_hash`` and ``password_env``."""

    username: str
    accounts: tuple[str, ...] = attrs.field(validator=non_empty)
    password_hash: str | None = attrs.field(default=None, repr=False)
    password_env: str | None = None

    def to_user(self, env: Mapping[str, str]) -> User:
        if self.password_env is not None:
            password = env.get(self.password_env)
            if password is None:
                raise ConfigError(f"users.{self.username}.password_env",
                                  f"environment variable {self.password_env} is not set")
            return User(self.username, hash_password(password), self.accounts)
        return User(self.username, self.password_hash, self.accounts)


@attrs.frozen(kw_only=True)
class AccountConfig:
    id: str
    currency: str = "USD"
    balance: float = attrs.field(default=100_000.0, validator=non_negative)


@attrs.frozen(kw_only=True)
class SyntheticMarket:
    """A seeded generator (``adapters.sim.market.synthetic_schedule``)."""

    symbols: tuple[str, ...] = attrs.field(validator=non_empty)
    seed: int = 1
    rate_per_s: float = attrs.field(default=20.0, validator=positive)
    depth: int = attrs.field(default=0, validator=[non_negative, attrs.validators.le(50)])


@attrs.frozen(kw_only=True)
class ReplayMarket:
    """Recorded feeds; ``speed`` null replays as fast as the slowest client reads.

    ``step: true`` (lock-step, for tests): each event waits until released by
    ``SimServer.step(n)`` or ``POST /admin/faults {"action": "step", "events": n}``,
    and ``speed`` is ignored, so a client can finish reacting to one quote
    before the next one exists (the live/backtest parity test)."""

    feed: tuple[str, ...] = attrs.field(validator=non_empty)
    speed: float | None = attrs.field(default=1.0, validator=positive)
    loop: bool = True
    step: bool = False


@attrs.frozen(kw_only=True)
class MarketConfig:
    """Exactly one source."""

    synthetic: SyntheticMarket | None = None
    replay: ReplayMarket | None = None

    def __attrs_post_init__(self) -> None:
        if (self.synthetic is None) == (self.replay is None):
            raise ValueError("synthetic or replay: give exactly one market source")


@attrs.frozen(kw_only=True)
class VenueSettings:
    latency_ms: float = attrs.field(default=0, validator=non_negative)
    commission_per_million: float = attrs.field(default=0, validator=non_negative)
    stop_out_level: float | None = attrs.field(default=None, validator=positive)
    depth: SyntheticDepthConfig | None = None

    def to_venue(self) -> VenueConfig:
        d = self.depth
        synth = None if d is None else SyntheticDepth(d.levels, d.size, d.step_ticks)
        return VenueConfig(self.latency_ms, self.commission_per_million, self.stop_out_level, synth)


@attrs.frozen(kw_only=True)
class AuthSettings:
    """``secret_env`` names the variable holding the HS256 key (>= 32 bytes);
    unset (or the variable missing): a random key per start."""

    token_lifetime_s: int = attrs.field(default=3600, validator=positive)
    secret_env: str | None = "TRIOTRADE_SIM_SECRET"

    @property
    def lifetime(self) -> timedelta:
        return timedelta(seconds=self.token_lifetime_s)


@attrs.frozen(kw_only=True)
class ServerSettings:
    """Transport settings (PROTOCOL sections 2 and 6).

    Attributes:
        ping_interval_s: server pings on every WebSocket.
        send_buffer_limit: unsent bytes a connection may hold ...
        slow_reader_s: ... for longer than this before it is closed with 1008.
        max_login_body: largest login request body (413 above).
        admin: serve the loopback-only fault control under ``/admin/``.
        shutdown_grace_s: how long closing WebSockets (1001) may take at shutdown.
        save_interval_s: how often changed state goes to the store.
    """

    ping_interval_s: float = attrs.field(default=10.0, validator=positive)
    send_buffer_limit: int = attrs.field(default=256 * 1024, validator=positive)
    slow_reader_s: float = attrs.field(default=5.0, validator=positive)
    max_login_body: int = attrs.field(default=16 * 1024, validator=positive)
    admin: bool = False
    shutdown_grace_s: float = attrs.field(default=2.0, validator=positive)
    save_interval_s: float = attrs.field(default=0.5, validator=positive)
    """How often changed state is written to the store (and once more at shutdown)."""


@attrs.frozen(kw_only=True)
class SimConfig:
    users: tuple[UserConfig, ...] = attrs.field(validator=non_empty)
    accounts: tuple[AccountConfig, ...] = attrs.field(validator=non_empty)
    market: MarketConfig
    instruments: dict[str, InstrumentConfig] = attrs.field(factory=dict)
    venue: VenueSettings = attrs.field(factory=VenueSettings)
    hub: HubConfig = attrs.field(factory=HubConfig)
    auth: AuthSettings = attrs.field(factory=AuthSettings)
    server: ServerSettings = attrs.field(factory=ServerSettings)
    store: str | None = None
    """The SQLite file of the durable state (``adapters.sim.store``), relative
    to the config file; ``":memory:"`` keeps nothing. Unset: ``sim-state.sqlite3``
    next to the config file, or in memory for a config built without a file."""

    def instrument_map(self) -> dict[str, Instrument]:
        return instrument_map(self.instruments)


def _check(config: SimConfig) -> None:
    """Cross-field rules ``structure`` cannot see."""
    ids = [a.id for a in config.accounts]
    for i, a in enumerate(ids):
        if a in ids[:i]:
            raise ConfigError(f"accounts[{i}].id", f"account {a!r} given twice")
    names = [u.username for u in config.users]
    for i, u in enumerate(config.users):
        if u.username in names[:i]:
            raise ConfigError(f"users[{i}].username", f"user {u.username!r} given twice")
        if (u.password_hash is None) == (u.password_env is None):
            raise ConfigError(f"users[{i}]", "give exactly one of password_hash and password_env")
        for j, acc in enumerate(u.accounts):
            if acc not in ids:
                raise ConfigError(f"users[{i}].accounts[{j}]", f"no account {acc!r} in accounts")
    instruments = config.instrument_map()
    if config.market.synthetic is not None:
        for j, s in enumerate(config.market.synthetic.symbols):
            if s not in instruments:
                raise ConfigError(f"market.synthetic.symbols[{j}]", f"no instrument {s!r}")


def sim_config_from_dict(
    data: Any, *, base_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
) -> SimConfig:
    """``load_sim_config`` for parsed YAML (``env=None``: no interpolation)."""
    if not isinstance(data, Mapping):
        raise ConfigError("", "expected a mapping at the top of the file")
    if env is not None:
        data = interpolate(data, env)
    config = structure(SimConfig, merge_instrument_defaults(data), "")
    _check(config)
    if base_dir is not None and config.store != MEMORY:
        config = attrs.evolve(config, store=resolve_path(config.store or DEFAULT_STORE, base_dir))
    replay = config.market.replay
    if base_dir is not None and replay is not None:
        feed = tuple(resolve_path(f, base_dir) for f in replay.feed)
        config = attrs.evolve(config, market=attrs.evolve(
            config.market, replay=attrs.evolve(replay, feed=feed)))
    return config


def load_sim_config(path: str | os.PathLike, env: Mapping[str, str] = os.environ) -> SimConfig:
    """Read, interpolate and validate a sim YAML file.

    Raises:
        ConfigError: unreadable, not YAML, or any key wrong (named, dotted).
    """
    path = Path(path)
    return sim_config_from_dict(read_yaml(path), base_dir=path.resolve().parent, env=env)


def embedded_sim_config(
    *, account: str, currency: str, balance: float, symbols: tuple[str, ...], username: str,
    password: str, instruments: Mapping[str, InstrumentConfig] | None = None,
    rate_per_s: float = 20.0, seed: int = 7, venue: Mapping[str, Any] | None = None,
) -> SimConfig:
    """The simulator ``triotrade run --venue sim`` starts beside a run: one
    user and the run's account, a seeded synthetic market on the run's
    symbols, state in memory, a random token key."""
    hashed = hash_password(password, iterations=10_000)  # a per-run throwaway password
    data = {
        "users": [{"username": username, "password_hash": hashed, "accounts": [account]}],
        "accounts": [{"id": account, "currency": currency, "balance": balance}],
        "instruments": {s: attrs.asdict(i) for s, i in (instruments or {}).items()},
        "market": {"synthetic": {"symbols": list(symbols), "seed": seed, "rate_per_s": rate_per_s}},
        "venue": dict(venue or {}),
        "auth": {"secret_env": None},
        "server": {"shutdown_grace_s": 0.5},
        "store": MEMORY,
    }
    return sim_config_from_dict(data)
