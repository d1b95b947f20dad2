"""Field-ownership policy (the module ``decision``, to be split by concern)."""

from shared.core.policy.decision import OPERATIONS, Decision, Policy, PolicyDecision, PolicyReason, ReasonCode

__all__ = ["OPERATIONS", "Decision", "Policy", "PolicyDecision", "PolicyReason", "ReasonCode"]
