"""Strategies: the base class authors subclass, and the examples."""

from strategies.base import Strategy

__all__ = ["Strategy"]
