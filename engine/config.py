"""The run configuration: one YAML file -> one frozen attrs value.

A typo in a config must stop the run before it starts, with the key that is
wrong: unknown keys are rejected, types are strict (``"5"`` is not an int,
``yes`` is not a string), and every problem becomes a ``ConfigError`` whose
``key`` is the dotted path (``risk.max_order_qty``, ``strategies[0].symbols``).

``${NAME}`` in a string is replaced from the environment (``$${`` writes a
literal ``${``). A value that came from the environment is text, so it is
converted to the field's type (``max_order_qty: ${MAX_QTY}`` works); its value
never appears in an error, since it may be a secret. Relative ``feed`` and
``out`` paths are taken from the YAML file's directory.

``structure(cls, data, key)`` is the one validator of YAML-shaped input; the
strategy base class uses it for strategy parameters.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, get_args, get_origin
from urllib.parse import urlsplit

import attrs
import cattrs
import yaml
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from engine.errors import ConfigError
from engine.instruments import Instrument, dec
from risk.limits import RiskLimits

# --------------------------------------------------------------------------
# Validators (their messages start with the field name: that is how an
# error finds its key)


def _min(low: float, *, strict: bool = False):
    def check(_inst, attribute, value) -> None:
        if value is None:
            return
        if not math.isfinite(value) or (value <= low if strict else value < low):
            raise ValueError(f"{attribute.name} must be {'>' if strict else '>='} {low}, got {value!r}")

    return check


def non_empty(_inst, attribute, value) -> None:
    if not value:
        raise ValueError(f"{attribute.name} needs at least one entry")


positive = _min(0, strict=True)
non_negative = _min(0)
_ge1 = _min(1)


def _class_path(_inst, attribute, value: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        raise ValueError(f"class must be 'module:Class', got {value!r}")


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _ws_url(_inst, attribute, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{attribute.name} must be a ws:// or wss:// URL, got {value!r}")
    host = parts.hostname
    if parts.scheme == "ws" and not (host in _LOOPBACK or host.startswith("127.")):
        raise ValueError(f"{attribute.name}: ws:// is only for loopback hosts; use wss:// for {host}")


# --------------------------------------------------------------------------
# Schema


@attrs.frozen(kw_only=True)
class InstrumentConfig:
    """An instrument's terms; fields left out of YAML keep the built-in default.

    Currencies left out are read from the symbol (``EURUSD``: EUR/USD,
    ``BTCUSDT``: BTC/USDT).
    """

    quote_currency: str | None = None
    base_currency: str | None = None
    lot_step: float = attrs.field(default=1, validator=positive)
    price_precision: int = attrs.field(default=5, validator=[non_negative, attrs.validators.le(12)])
    leverage: float = attrs.field(default=1, validator=positive)
    conversion_rate: float | None = attrs.field(default=None, validator=positive)

    def to_instrument(self, symbol: str) -> Instrument:
        """The ``Instrument`` for ``symbol``. Raises ConfigError if its quote
        currency is neither given nor readable from the symbol."""
        base, quote = _split_symbol(symbol)
        quote = self.quote_currency or quote
        if quote is None:
            raise ConfigError(
                f"instruments.{symbol}.quote_currency",
                f"missing, and cannot be read from the symbol {symbol!r}",
            )
        return Instrument(
            symbol=symbol,
            quote_currency=quote,
            lot_step=dec(self.lot_step),
            price_precision=self.price_precision,
            leverage=dec(self.leverage),
            base_currency=self.base_currency or base,
            conversion_rate=self.conversion_rate,
        )


_QUOTES = ("USDT", "USDC", "USD", "EUR", "JPY", "GBP", "CHF", "AUD", "CAD", "NZD", "BTC")


def _split_symbol(symbol: str) -> tuple[str | None, str | None]:
    """(base, quote) read from a symbol name, or (None, None)."""
    if len(symbol) == 6 and symbol.isalpha() and symbol.isupper():
        return symbol[:3], symbol[3:]
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return None, None


def _fx(symbol: str) -> InstrumentConfig:
    return InstrumentConfig(
        quote_currency=symbol[3:], base_currency=symbol[:3], lot_step=1000,
        price_precision=3 if symbol.endswith("JPY") else 5, leverage=30,
    )


DEFAULT_INSTRUMENTS: Mapping[str, InstrumentConfig] = MappingProxyType(
    {s: _fx(s) for s in ("EURUSD", "GBPUSD", "AUDUSD", "NZDUSD", "USDJPY", "USDCHF", "EURGBP")}
    | {
        "BTCUSDT": InstrumentConfig(
            quote_currency="USDT", base_currency="BTC", lot_step=0.00001, price_precision=2, leverage=5
        )
    }
)
"""Built-in terms; YAML ``instruments:`` entries are merged over them key by key."""


@attrs.frozen(kw_only=True)
class StrategyConfig:
    """One strategy of the run. YAML key ``class`` (``module:Class``)."""

    class_: str = attrs.field(validator=_class_path)
    name: str | None = None
    symbols: tuple[str, ...]
    params: dict[str, Any] = attrs.field(factory=dict)

    @property
    def effective_name(self) -> str:
        """``name``, else the class name in lower case (as ``Strategy`` does)."""
        return self.name or self.class_.rpartition(":")[2].lower()


@attrs.frozen(kw_only=True)
class SyntheticDepthConfig:
    levels: int = attrs.field(default=5, validator=[_ge1, attrs.validators.le(50)])
    size: float = attrs.field(default=1_000_000, validator=positive)
    step_ticks: int = attrs.field(default=1, validator=_ge1)


@attrs.frozen(kw_only=True)
class BacktestConfig:
    """YAML ``feed``: one path or a list; relative paths are from the YAML file."""

    feed: tuple[str, ...] = attrs.field(validator=non_empty)
    latency_ms: float = attrs.field(default=0, validator=non_negative)
    commission_per_million: float = attrs.field(default=0, validator=non_negative)
    strict: bool = False
    equity_sample_s: float = attrs.field(default=60, validator=positive)
    out: str | None = None
    depth: SyntheticDepthConfig | None = None
    stop_out_level: float | None = attrs.field(default=None, validator=positive)


@attrs.frozen(kw_only=True)
class LoginConfig:
    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class VenueSection:
    """A live Trader server (``triotrade run``).

    Attributes:
        url: ``wss://host/api/v1/ws`` (``ws://`` on loopback only).
        login: the credentials, as ``${NAME}`` references to the environment.
        account: the account id at this venue, if not the top-level ``account``.
        cancel_on_stop: cancel the strategies' working orders when the run stops.
        ping_interval_s / dead_after_s: PROTOCOL 2's liveness rule: ping after
            this much silence, give the connection up after as much again.
    """

    url: str = attrs.field(validator=_ws_url)
    login: LoginConfig | None = None
    account: str | None = None
    cancel_on_stop: bool = True
    ping_interval_s: float = attrs.field(default=10, validator=positive)
    dead_after_s: float = attrs.field(default=10, validator=positive)


@attrs.frozen(kw_only=True)
class RunConfig:
    account: str = "acc_1"
    currency: str = "USD"
    balance: float = attrs.field(default=100_000.0, validator=non_negative)
    instruments: dict[str, InstrumentConfig] = attrs.field(factory=dict)
    strategies: tuple[StrategyConfig, ...] = attrs.field(validator=non_empty)
    risk: RiskLimits = attrs.field(factory=RiskLimits)
    backtest: BacktestConfig | None = None
    venue: VenueSection | None = None

    def instrument_map(self) -> dict[str, Instrument]:
        return instrument_map(self.instruments)


def instrument_map(overrides: Mapping[str, InstrumentConfig]) -> dict[str, Instrument]:
    """Every instrument: the built-in ones, with a config's over them."""
    terms = {**DEFAULT_INSTRUMENTS, **overrides}
    return {symbol: cfg.to_instrument(symbol) for symbol, cfg in terms.items()}


# --------------------------------------------------------------------------
# Loading


def load_config(path: str | os.PathLike, env: Mapping[str, str] = os.environ) -> RunConfig:
    """Read, interpolate, validate and resolve one YAML run file.

    Raises:
        ConfigError: the file cannot be read or parsed, or any value is
            unknown, missing, of the wrong type or out of range.
    """
    path = Path(path)
    return config_from_dict(read_yaml(path), base_dir=path.resolve().parent, env=env)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a key given twice, or bad YAML, is a ConfigError that
    says where but never quotes the line (it may hold a secret)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read {path}: {exc}") from None
    try:
        _refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"{path}: not valid YAML: {exc.problem}{where}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path}: not valid YAML ({type(exc).__name__})") from None


def config_from_dict(
    data: Any, *, base_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
) -> RunConfig:
    """``load_config`` for already parsed YAML (``env=None``: no interpolation)."""
    if not isinstance(data, Mapping):
        raise ConfigError("", f"expected a mapping at the top of the file, got {_kind(data)}")
    if env is not None:
        data = interpolate(data, env)
    config = structure(RunConfig, data, "")
    _check_strategy_names(config)
    config.instrument_map()  # raises ConfigError for an instrument without a currency
    if base_dir is not None and config.backtest is not None:
        bt = config.backtest
        config = attrs.evolve(
            config,
            backtest=attrs.evolve(
                bt,
                feed=tuple(resolve_path(p, base_dir) for p in bt.feed),
                out=None if bt.out is None else resolve_path(bt.out, base_dir),
            ),
        )
    return config


def resolve_path(path: str, base_dir: str | os.PathLike) -> str:
    """``path`` relative to the config file's folder (absolute and ``~`` kept)."""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path(base_dir) / p)


def _check_strategy_names(config: RunConfig) -> None:
    seen: dict[str, int] = {}
    for i, s in enumerate(config.strategies):
        name = s.effective_name
        if name in seen:
            raise ConfigError(
                f"strategies[{i}].name",
                f"duplicate strategy name {name!r} (also strategies[{seen[name]}]); "
                "give each a distinct `name`",
            )
        seen[name] = i


def _refuse_duplicate_keys(node: yaml.Node | None, path: str = "", seen: set | None = None) -> None:
    """A key given twice in one mapping is an error (YAML keeps the last, silently)."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:  # an alias to a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            name, line = key_node.value, key_node.start_mark.line + 1
            if isinstance(name, str) and name in lines:
                raise ConfigError(_join(path, name), f"given twice (lines {lines[name]} and {line})")
            lines[str(name)] = line
            _refuse_duplicate_keys(value, _join(path, name), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{path}[{i}]", seen)


# --------------------------------------------------------------------------
# ${NAME} interpolation


class _EnvStr(str):
    """A string that came (in part) from the environment: text to be read as
    the field's type, and never shown in an error."""


_VAR = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")


def interpolate(data: Any, env: Mapping[str, str], key: str = "") -> Any:
    """``data`` with ``${NAME}`` in every string replaced from ``env``.

    Raises:
        ConfigError: naming the key and the variable, for a variable not set.
    """
    if isinstance(data, str):
        if "${" not in data:
            return data

        def replace(m: re.Match) -> str:
            if m.group(1):  # $${NAME}: a literal ${NAME}
                return m.group(0)[1:]
            try:
                return env[m.group(2)]
            except KeyError:
                raise ConfigError(key, f"environment variable {m.group(2)} is not set") from None

        out = _VAR.sub(replace, data)
        substituted = any(not m.group(1) for m in _VAR.finditer(data))
        return _EnvStr(out) if substituted else out
    if isinstance(data, Mapping):
        return {k: interpolate(v, env, _join(key, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, f"{key}[{i}]") for i, v in enumerate(data)]
    return data


# --------------------------------------------------------------------------
# Structuring: strict types, unknown keys refused, errors with dotted keys


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def _from_env(value: Any, kind: str, parse):
    try:
        return parse(value)
    except (ValueError, ArithmeticError):
        raise TypeError(f"expected {kind}; the environment value is not one (not shown)") from None


def _int(value: Any, _t) -> int:
    if isinstance(value, _EnvStr):
        return _from_env(value, "int", int)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected int, got {_kind(value)}")
    return value


def _float(value: Any, _t) -> float:
    if isinstance(value, _EnvStr):
        value = _from_env(value, "a number", float)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {_kind(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise TypeError(f"expected a finite number, got {value}")
    return value


def _decimal(value: Any, _t) -> Decimal:
    if isinstance(value, _EnvStr):
        return _from_env(value, "a number", Decimal)
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise TypeError(f"expected a number, got {_kind(value)}")
    try:
        out = dec(value)
    except InvalidOperation:
        raise TypeError(f"expected a number, got {value!r}") from None
    if not out.is_finite():
        raise TypeError(f"expected a finite number, got {value}")
    return out


def _str(value: Any, _t) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_kind(value)}")
    return str(value)


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _bool(value: Any, _t) -> bool:
    if isinstance(value, _EnvStr) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {_kind(value)}")
    return value


def _timedelta(value: Any, _t) -> timedelta:
    """A duration given in seconds."""
    return timedelta(seconds=_float(value, float))


def _is_homogeneous_seq(t: Any) -> bool:
    origin, args = get_origin(t), get_args(t)
    return origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis)


def _seq_factory(t: Any, converter: cattrs.Converter):
    """A YAML list (never a string: ``"EURUSD"`` is not a list of letters)."""
    origin, elem = get_origin(t), get_args(t)[0]
    hook = converter.get_structure_hook(elem)

    def structure_seq(value: Any, _t) -> Any:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {_kind(value)}")
        out, errors = [], []
        for i, item in enumerate(value):
            try:
                out.append(hook(item, elem))
            except Exception as exc:  # noqa: BLE001 - collected, reported with its index
                exc.add_note(IterableValidationNote(f"Structuring {t} @ index {i}", i, elem))
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {t}", errors, origin)
        return origin(out)

    return structure_seq


def _mapping_factory(t: Any, converter: cattrs.Converter):
    inner = cattrs.cols.mapping_structure_factory(t, converter)

    def structure_mapping(value: Any, _t) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a mapping, got {_kind(value)}")
        return inner(value, t)

    return structure_mapping


def _is_mapping(t: Any) -> bool:
    return get_origin(t) in (dict, Mapping) or t is dict


def _attrs_factory(cls: type, converter: cattrs.Converter):
    """Unknown keys refused; a field ``class_`` is the YAML key ``class``."""
    renames = {
        a.name: override(rename=a.name.rstrip("_")) for a in attrs.fields(cls) if a.name.endswith("_")
    }
    if cls is BacktestConfig:
        renames["feed"] = override(struct_hook=_one_or_many)
    inner = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True, **renames)
    prepare = _PREPARE.get(cls)

    def structure_attrs(value: Any, _t) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a mapping, got {_kind(value)}")
        return inner(prepare(value) if prepare else value, cls)

    return structure_attrs


def _one_or_many(value: Any, _t) -> tuple[str, ...]:
    if isinstance(value, str):
        return (str(value),)
    return _converter.structure(value, tuple[str, ...])


def merge_instrument_defaults(data: Mapping) -> Mapping:
    """YAML ``instruments.EURUSD: {leverage: 50}`` keeps EURUSD's other defaults."""
    overrides = data.get("instruments")
    if not isinstance(overrides, Mapping):
        return data
    merged = {
        symbol: (
            {**attrs.asdict(DEFAULT_INSTRUMENTS[symbol]), **terms}
            if symbol in DEFAULT_INSTRUMENTS and isinstance(terms, Mapping)
            else terms
        )
        for symbol, terms in overrides.items()
    }
    return {**data, "instruments": merged}


_PREPARE = {RunConfig: merge_instrument_defaults}


def _make_converter() -> cattrs.Converter:
    c = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for t, hook in ((int, _int), (float, _float), (str, _str), (bool, _bool),
                    (Decimal, _decimal), (timedelta, _timedelta)):
        c.register_structure_hook(t, hook)
    c.register_structure_hook_factory(_is_homogeneous_seq, lambda t: _seq_factory(t, c))
    c.register_structure_hook_factory(_is_mapping, lambda t: _mapping_factory(t, c))
    c.register_structure_hook_factory(attrs.has, lambda t: _attrs_factory(t, c))
    return c


_converter = _make_converter()


def structure(cls: type, data: Any, key: str = ""):
    """Build ``cls`` (an attrs class) from YAML-shaped ``data``, strictly.

    Args:
        cls: the attrs class to build.
        data: parsed YAML (mappings, lists, scalars).
        key: the dotted path of ``data`` in its file, prefixed to error keys
            (``"sma.params"`` -> ``sma.params.fast``); "" for the top level.

    Raises:
        ConfigError: the first problem, its ``key`` the dotted path; the
            message also lists any others.
    """
    try:
        return _converter.structure(data, cls)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a ConfigError
        # an unknown key first: it is usually why another is "missing"
        problems = sorted(_problems(exc, key, cls), key=lambda p: p[1] != "unknown key")
        if not problems:  # pragma: no cover - a cattrs error we do not know
            raise ConfigError(key, str(exc)) from None
        (first_key, first), rest = problems[0], problems[1:]
        more = "; ".join(f"{k or '<top>'}: {d}" for k, d in rest)
        raise ConfigError(first_key, first + (f" (and {len(rest)} more: {more})" if rest else "")) from None


def _join(path: str, name: Any) -> str:
    return f"{path}.{name}" if path else str(name)


def _problems(exc: BaseException, path: str, cls: Any) -> Iterator[tuple[str, str]]:
    """(dotted key, what is wrong) for each leaf of a cattrs error tree."""
    if isinstance(exc, ForbiddenExtraKeysError):
        for name in sorted(exc.extra_fields, key=str):
            yield _join(path, name), "unknown key"
        return
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        owner = exc.cl if isinstance(exc, ClassValidationError) else None
        for sub in exc.exceptions:
            yield from _problems(sub, _child_path(path, sub, owner), owner)
        return
    if isinstance(exc, KeyError):
        yield path, "missing (required)"
        return
    if isinstance(exc, (ValueError, TypeError)) and not _has_location(exc) and attrs.has(cls):
        # raised by the class itself (a validator): find the field it names
        field = _field_named_in(str(exc), cls)
        yield (_join(path, field) if field else path), str(exc)
        return
    yield path, str(exc) or type(exc).__name__


def _has_location(exc: BaseException) -> bool:
    return any(
        isinstance(n, (AttributeValidationNote, IterableValidationNote))
        for n in getattr(exc, "__notes__", ())
    )


def _child_path(path: str, exc: BaseException, owner: Any) -> str:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, AttributeValidationNote):
            return _join(path, note.name.rstrip("_"))
        if isinstance(note, IterableValidationNote):
            if isinstance(note.index, int):
                return f"{path}[{note.index}]"
            return _join(path, note.index)
    return path


def _field_named_in(message: str, cls: type) -> str | None:
    """The field (by its YAML name) a validator's message starts with or quotes."""
    names = [a.name.rstrip("_") for a in attrs.fields(cls)]
    for name in names:
        if re.match(rf"'?{re.escape(name)}\b", message):
            return name
    for name in names:
        if f"'{name}'" in message:
            return name
    return None
