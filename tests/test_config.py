"""YAML run files: a good one loads, a bad one stops with the dotted key."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import attrs
import pytest

from engine.config import (
    DEFAULT_INSTRUMENTS,
    BacktestConfig,
    InstrumentConfig,
    LoginConfig,
    RunConfig,
    StrategyConfig,
    load_config,
    structure,
)
from engine.errors import ConfigError
from risk.limits import RiskLimits

STRATEGY = """\
strategies:
  - class: strategies.sma_cross:SmaCross
    symbols: [EURUSD]
"""

FULL = """\
account: acc_123
currency: EUR
balance: 50000
instruments:
  EURUSD: {leverage: 50}
  ETHUSDT: {lot_step: 0.001, price_precision: 2, leverage: 2}
strategies:
  - class: strategies.sma_cross:SmaCross
    name: fast_sma
    symbols: [EURUSD, GBPUSD]
    params: {fast: 10, slow: 50}
  - class: strategies.mean_revert:MeanRevert
    symbols: [USDJPY]
risk: {max_order_qty: 100000, max_position: 200000, max_orders_per_s: 5, order_burst: 10,
       daily_loss_limit: 500, kill_switch: false}
backtest:
  feed: data/eurusd.jsonl.gz
  latency_ms: 5
  commission_per_million: 20
  strict: true
  out: results
  depth: {levels: 3}
venue:
  url: wss://trader.example/api/v1/ws
  login: {username: trader, password: "hunter2-literal"}
  cancel_on_stop: false
"""


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> RunConfig:
    return load_config(write(tmp_path, text), env=env or {})


def load_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return info.value


# --------------------------------------------------------------------------
# Good files


def test_full_file_loads(tmp_path):
    cfg = load(tmp_path, FULL)
    assert (cfg.account, cfg.currency, cfg.balance) == ("acc_123", "EUR", 50000.0)
    fast, mean = cfg.strategies
    assert fast == StrategyConfig(
        class_="strategies.sma_cross:SmaCross", name="fast_sma", symbols=("EURUSD", "GBPUSD"),
        params={"fast": 10, "slow": 50},
    )
    assert (mean.effective_name, mean.params) == ("meanrevert", {})
    assert cfg.risk == RiskLimits(
        max_order_qty=100000, max_position=200000, max_orders_per_s=5, order_burst=10,
        daily_loss_limit=500,
    )
    bt = cfg.backtest
    assert (bt.latency_ms, bt.commission_per_million, bt.strict) == (5, 20, True)
    assert (bt.depth.levels, bt.depth.size, bt.depth.step_ticks) == (3, 1_000_000, 1)
    assert cfg.venue.url == "wss://trader.example/api/v1/ws"
    assert cfg.venue.login == LoginConfig(username="trader", password="hunter2-literal")
    assert (cfg.venue.cancel_on_stop, cfg.venue.ping_interval_s, cfg.venue.dead_after_s) == (False, 10, 10)


def test_minimal_file_takes_defaults(tmp_path):
    cfg = load(tmp_path, STRATEGY)
    assert (cfg.account, cfg.currency, cfg.balance) == ("acc_1", "USD", 100_000.0)
    assert cfg.risk == RiskLimits() and cfg.backtest is None and cfg.venue is None
    assert cfg.strategies[0].symbols == ("EURUSD",)


def test_config_is_frozen(tmp_path):
    cfg = load(tmp_path, STRATEGY)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.balance = 1


# --------------------------------------------------------------------------
# Bad files: each names its dotted key

BAD = [
    # unknown keys
    (STRATEGY + "strategy: {}\n", "strategy", "unknown key"),
    (STRATEGY + "risk: {max_order_quantity: 5}\n", "risk.max_order_quantity", "unknown key"),
    (STRATEGY + "backtest: {feed: a.jsonl, latency: 5}\n", "backtest.latency", "unknown key"),
    (STRATEGY + "backtest: {feed: a.jsonl, depth: {level: 5}}\n", "backtest.depth.level", "unknown key"),
    (STRATEGY + "  - {class: 'a:B', symbols: [], param: {}}\n", "strategies[1].param", "unknown key"),
    (STRATEGY + "venue: {url: 'wss://h/ws', login: {user: u, password: p}}\n", "venue.login.user", "unknown key"),
    (STRATEGY + "instruments: {EURUSD: {leverag: 5}}\n", "instruments.EURUSD.leverag", "unknown key"),
    # wrong types
    (STRATEGY + "risk: {max_order_qty: lots}\n", "risk.max_order_qty", "expected a number, got str"),
    (STRATEGY + "risk: {max_order_qty: '100000'}\n", "risk.max_order_qty", "got str"),
    (STRATEGY + "risk: {max_open_orders: 2.5}\n", "risk.max_open_orders", "expected int, got float"),
    (STRATEGY + "risk: {kill_switch: 'yes'}\n", "risk.kill_switch", "expected true or false"),
    (STRATEGY + "risk: [1, 2]\n", "risk", "expected a mapping, got a list"),
    (STRATEGY + "balance: .nan\n", "balance", "finite"),
    (STRATEGY + "currency: 978\n", "currency", "expected a string, got int"),
    (STRATEGY + "backtest: {feed: a.jsonl, strict: 1}\n", "backtest.strict", "expected true or false, got int"),
    (STRATEGY + "backtest: {feed: [a.jsonl, 7]}\n", "backtest.feed[1]", "expected a string, got int"),
    ("strategies:\n  - {class: 'a:B', symbols: EURUSD}\n", "strategies[0].symbols", "expected a list, got str"),
    ("strategies:\n  - {class: 'a:B', symbols: [EURUSD, [GBPUSD]]}\n", "strategies[0].symbols[1]", "got a list"),
    ("strategies:\n  - {class: 'a:B', symbols: [], params: [fast]}\n", "strategies[0].params", "expected a mapping"),
    ("strategies: {class: 'a:B'}\n", "strategies", "expected a list"),
    # missing required
    ("account: acc_1\n", "strategies", "missing"),
    ("strategies:\n  - {class: 'a:B'}\n", "strategies[0].symbols", "missing"),
    ("strategies:\n  - {symbols: [EURUSD]}\n", "strategies[0].class", "missing"),
    (STRATEGY + "backtest: {latency_ms: 5}\n", "backtest.feed", "missing"),
    (STRATEGY + "venue: {login: {username: u, password: p}}\n", "venue.url", "missing"),
    (STRATEGY + "venue: {url: 'wss://h/ws', login: {username: u}}\n", "venue.login.password", "missing"),
    # bad values (validators)
    (STRATEGY + "risk: {max_order_qty: -1}\n", "risk.max_order_qty", "> 0"),
    (STRATEGY + "risk: {max_open_orders: 0}\n", "risk.max_open_orders", ">= 1"),
    (STRATEGY + "risk: {order_burst: 10}\n", "risk.order_burst", "needs max_orders_per_s"),
    (STRATEGY + "backtest: {feed: a.jsonl, latency_ms: -5}\n", "backtest.latency_ms", ">= 0"),
    (STRATEGY + "backtest: {feed: []}\n", "backtest.feed", "at least one"),
    (STRATEGY + "backtest: {feed: a.jsonl, depth: {levels: 0}}\n", "backtest.depth.levels", ">= 1"),
    (STRATEGY + "instruments: {EURUSD: {lot_step: 0}}\n", "instruments.EURUSD.lot_step", "> 0"),
    (STRATEGY + "instruments: {GOLD: {lot_step: 1}}\n", "instruments.GOLD.quote_currency", "missing"),
    (STRATEGY + "venue: {url: 'https://h/ws'}\n", "venue.url", "ws:// or wss://"),
    (STRATEGY + "venue: {url: 'ws://trader.example/ws'}\n", "venue.url", "loopback"),
    (STRATEGY + "venue: {url: 'wss://h/ws', ping_interval_s: 0}\n", "venue.ping_interval_s", "> 0"),
    ("strategies: []\n", "strategies", "at least one"),
    ("strategies:\n  - {class: strategies.sma_cross.SmaCross, symbols: []}\n", "strategies[0].class", "module:Class"),
    ("strategies:\n  - {class: 'a:Sma', symbols: []}\n  - {class: 'b:Sma', symbols: []}\n",
     "strategies[1].name", "duplicate strategy name 'sma'"),
    # the file itself
    (STRATEGY + "account: acc_1\naccount: acc_2\n", "account", "given twice"),
    (STRATEGY + "risk:\n  max_position: 5\n  max_position: 6\n", "risk.max_position", "given twice (lines 5 and 6)"),
    ("strategies:\n  - {class: 'a:B', symbols: [], class: 'c:D'}\n", "strategies[0].class", "given twice"),
    ("- just\n- a list\n", "", "expected a mapping"),
]


@pytest.mark.parametrize("text, key, detail", BAD, ids=[k or "<top>" for _, k, _ in BAD])
def test_bad_file_names_the_key(tmp_path, text, key, detail):
    err = load_error(tmp_path, text)
    assert err.key == key
    assert detail in err.detail
    assert str(err).startswith(f"{key}: ") if key else True


def test_every_problem_is_reported(tmp_path):
    err = load_error(tmp_path, STRATEGY + "currency: 5\nrisk: {max_order_qty: x, typo: 1}\n")
    assert err.key == "risk.typo"  # an unknown key first: it is the likeliest cause
    assert "2 more" in err.detail and "risk.max_order_qty" in err.detail and "currency" in err.detail


def test_invalid_yaml_names_the_line(tmp_path):
    err = load_error(tmp_path, STRATEGY + "risk: {max_order_qty: 5\n")
    assert "not valid YAML" in str(err) and "line" in str(err)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", env={})


# --------------------------------------------------------------------------
# ${ENV} interpolation and secrets


def test_env_interpolation(tmp_path):
    env = {"ACCOUNT": "acc_9", "HOST": "trader.example", "QTY": "25000", "KILL": "true",
           "USER": "me", "PW": "pa$$:word #1"}
    cfg = load(tmp_path, STRATEGY + """\
account: ${ACCOUNT}
risk: {max_order_qty: "${QTY}", max_open_orders: "${QTY}", kill_switch: "${KILL}"}
venue:
  url: wss://${HOST}/api/v1/ws
  login: {username: "${USER}", password: "${PW}"}
  account: "$${NOT_A_VAR}"
""", env)
    assert cfg.account == "acc_9" and type(cfg.account) is str
    assert cfg.venue.url == "wss://trader.example/api/v1/ws"
    assert (cfg.risk.max_order_qty, cfg.risk.max_open_orders, cfg.risk.kill_switch) == (25000.0, 25000, True)
    assert cfg.venue.login == LoginConfig(username="me", password="pa$$:word #1")
    assert cfg.venue.account == "${NOT_A_VAR}"


def test_missing_env_var_names_key_and_variable_only(tmp_path):
    env = {"TRADER_USER": "someone-secret-ish"}
    err = load_error(tmp_path, STRATEGY + """\
venue:
  url: wss://h/ws
  login: {username: "${TRADER_USER}", password: "${TRADER_PASSWORD}"}
""", env)
    assert err.key == "venue.login.password"
    assert "TRADER_PASSWORD" in err.detail and "not set" in err.detail
    assert "someone-secret-ish" not in str(err)


def test_env_value_of_wrong_type_is_not_shown(tmp_path):
    err = load_error(tmp_path, STRATEGY + "risk: {max_open_orders: '${N}'}\n", {"N": "hunter2"})
    assert err.key == "risk.max_open_orders" and "expected int" in err.detail
    assert "hunter2" not in str(err)


SECRET = "s3cr3t-P4ss"


@pytest.mark.parametrize("password", [SECRET, "${PW}"])
def test_password_never_shown(tmp_path, password):
    env = {"PW": SECRET}
    venue = f"venue:\n  url: wss://h/ws\n  login: {{username: u, password: '{password}'}}\n"
    cfg = load(tmp_path, STRATEGY + venue, env)
    assert cfg.venue.login.password == SECRET
    for text in (repr(cfg), str(cfg), repr(cfg.venue), str(cfg.venue.login)):
        assert SECRET not in text and "username='u'" in text
    # an error anywhere near it (a bad sibling, an unknown key, bad YAML) does not show it either
    for bad in (
        venue + "  ping_interval_s: -1\n",
        venue.replace("username: u", "username: u, token: x"),
        venue.replace("username: u", "username: 5"),
        venue.replace(f"'{password}'}}", f"'{password}' oops}}"),
    ):
        err = load_error(tmp_path, STRATEGY + bad, env)
        assert SECRET not in str(err) and SECRET not in repr(err)


# --------------------------------------------------------------------------
# Paths and instruments


def test_relative_feed_and_out_resolve_against_the_yaml_dir(tmp_path, monkeypatch):
    conf_dir = tmp_path / "configs"
    conf_dir.mkdir()
    monkeypatch.chdir(tmp_path)  # not the YAML's directory
    absolute = str(tmp_path / "abs.jsonl")
    path = write(conf_dir, STRATEGY + f"backtest:\n  feed: [../data/a.jsonl.gz, b.jsonl, {absolute}]\n  out: out\n")
    bt = load_config(path, env={}).backtest
    assert [Path(p) for p in bt.feed] == [
        conf_dir / "../data/a.jsonl.gz", conf_dir / "b.jsonl", tmp_path / "abs.jsonl"
    ]
    assert Path(bt.feed[0]).resolve() == (tmp_path / "data/a.jsonl.gz").resolve()
    assert Path(bt.out) == conf_dir / "out"


def test_one_feed_path_is_a_tuple_of_one(tmp_path):
    assert load(tmp_path, STRATEGY + "backtest: {feed: a.jsonl}\n").backtest.feed == (str(tmp_path / "a.jsonl"),)


def test_instrument_overrides_merge_with_defaults(tmp_path):
    cfg = load(tmp_path, STRATEGY + """\
instruments:
  EURUSD: {leverage: 50}
  ETHUSDT: {lot_step: 0.001, price_precision: 2}
  XAUUSD: {lot_step: 1, price_precision: 2, leverage: 20}
  GOLD: {quote_currency: USD, lot_step: 1, conversion_rate: 1.0}
""")
    inst = cfg.instrument_map()
    eur = inst["EURUSD"]
    assert (eur.leverage, eur.lot_step, eur.price_precision) == (50, 1000, 5)
    assert (eur.base_currency, eur.quote_currency) == ("EUR", "USD")
    assert set(DEFAULT_INSTRUMENTS) <= set(inst)  # untouched defaults stay
    assert (inst["USDJPY"].price_precision, inst["USDJPY"].leverage) == (3, 30)
    btc = inst["BTCUSDT"]
    assert (btc.lot_step, btc.price_precision, btc.leverage, btc.quote_currency, btc.base_currency) == (
        Decimal("0.00001"), 2, 5, "USDT", "BTC"
    )
    eth = inst["ETHUSDT"]
    assert (eth.quote_currency, eth.base_currency, eth.lot_step, eth.leverage) == ("USDT", "ETH", Decimal("0.001"), 1)
    assert (inst["XAUUSD"].base_currency, inst["XAUUSD"].quote_currency) == ("XAU", "USD")
    assert (inst["GOLD"].quote_currency, inst["GOLD"].conversion_rate) == ("USD", 1)
    assert inst["EURUSD"].round_price(1.084567) == 1.08457
    assert inst["USDJPY"].on_lot_step(2000) and not inst["USDJPY"].on_lot_step(2500)


def test_default_instruments_without_yaml(tmp_path):
    inst = load(tmp_path, STRATEGY).instrument_map()
    assert inst["GBPUSD"].lot_step == 1000 and inst["EURGBP"].quote_currency == "GBP"


# --------------------------------------------------------------------------
# structure(): the same rules for any attrs class (strategy params)


@attrs.frozen(kw_only=True)
class _Params:
    fast: int = 10
    slow: int
    threshold: float = 0.5
    symbols: tuple[str, ...] = ()


def test_structure_with_a_key_prefix():
    assert structure(_Params, {"slow": 50, "threshold": 1}, "sma.params") == _Params(slow=50, threshold=1.0)
    for data, key in [
        ({"slow": 50, "fats": 5}, "sma.params.fats"),
        ({"slow": "50"}, "sma.params.slow"),
        ({}, "sma.params.slow"),
        ({"slow": 5, "symbols": [1]}, "sma.params.symbols[0]"),
    ]:
        with pytest.raises(ConfigError) as info:
            structure(_Params, data, "sma.params")
        assert info.value.key == key


def test_structure_of_a_config_class_directly():
    bt = structure(BacktestConfig, {"feed": "x.jsonl"}, "backtest")
    assert bt.feed == ("x.jsonl",)  # no base dir: left as given
    assert structure(InstrumentConfig, {}, "instruments.X") == InstrumentConfig()
