"""Each package's ``__init__`` is its public contract (STYLE rule 7)."""

import importlib

import pytest

CONTRACTS = {
    "engine": {"ConfigError", "ErrorCode", "EventKind", "FeedError", "IllegalTransition", "Instrument",
               "OrderStatus", "OrderType", "PositionSide", "Reason", "Side", "TimeInForce",
               "TriotradeError", "UsageError", "VirtualClock", "WallClock", "WireError"},
    "risk": {"Approved", "Decision", "DenialReason", "Denied", "RiskGate", "RiskLimits", "RiskView",
             "TradingState", "WorkingOrderLike"},
    "strategies": {"Strategy"},
    "adapters": {"FeedReader", "FeedStats", "merge"},
    "adapters.sim": {"MatchingEngine", "Reply", "SyntheticDepth", "VenueConfig"},
}


@pytest.mark.parametrize("package", sorted(CONTRACTS))
def test_package_exports_exactly_its_contract(package):
    module = importlib.import_module(package)
    assert set(module.__all__) == CONTRACTS[package]
    for name in module.__all__:
        assert getattr(module, name) is not None
