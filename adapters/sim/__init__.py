"""The simulated venue: THE matching engine, shared by the backtester and the
paper-trading server (PROTOCOL section 7)."""

from adapters.sim.matching import MatchingEngine, Reply, SyntheticDepth, VenueConfig

__all__ = ["MatchingEngine", "Reply", "SyntheticDepth", "VenueConfig"]
