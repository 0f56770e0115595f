"""The edges: recorded feeds (``replay``, ``feedgen``) and venues (``sim``)."""

from adapters.replay import FeedReader, FeedStats, merge

__all__ = ["FeedReader", "FeedStats", "merge"]
