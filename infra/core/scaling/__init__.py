"""Replica policies shared by the backtest's simulator (training) and the live autoscaler (lb_adapters).

    decision = decide(predictive, ScalingContext(...))   # or reactive, static(3), policy_by_name(...)
    decision.desired, decision.reason, decision.state     # pass decision.state to the next call
"""

from infra.core.scaling.context import (
    FEEDBACK_GAIN,
    PolicyResult,
    QuantileForecast,
    ScalingContext,
    ScalingDecision,
    ScalingKnobs,
    ScalingState,
    hpa_knobs,
    predictive_knobs,
    reactive_knobs,
)
from infra.core.scaling.guardrails import decide, feedback, removable
from infra.core.scaling.paper_pool import ready, replay_schedule, resize
from infra.core.scaling.policies import Policy, policy_by_name, predictive, reactive, static

__all__ = [
    "FEEDBACK_GAIN",
    "Policy",
    "PolicyResult",
    "QuantileForecast",
    "ScalingContext",
    "ScalingDecision",
    "ScalingKnobs",
    "ScalingState",
    "decide",
    "feedback",
    "hpa_knobs",
    "policy_by_name",
    "predictive",
    "predictive_knobs",
    "reactive",
    "reactive_knobs",
    "ready",
    "removable",
    "replay_schedule",
    "resize",
    "static",
]
