"""The risk gate: every strategy intent passes it, and nothing denied reaches a venue.

A ruling is a value: ``Approved(intent)`` or ``Denied(intent, reason,
message)`` with a ``DenialReason`` code. ``RiskLimits`` is the YAML
``risk:`` section; ``RiskView`` is what the gate reads of the account.
"""

from risk.checks import Approved, Decision, DenialReason, Denied
from risk.gate import RiskGate, RiskView, TradingState, WorkingOrderLike
from risk.limits import RiskLimits

__all__ = [
    "Approved",
    "Decision",
    "DenialReason",
    "Denied",
    "RiskGate",
    "RiskLimits",
    "RiskView",
    "TradingState",
    "WorkingOrderLike",
]
