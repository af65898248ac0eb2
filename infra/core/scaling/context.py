"""What a replica policy is given and what it returns: one context object in, (desired, reason, state) out.

The same objects are built by the backtest's simulator (one minute at a time, from a recorded
trace) and by the live autoscaler (every interval, from ClickHouse features and /v1/forecast), so
a policy cannot tell them apart. The context and the state are frozen dataclasses, not pydantic
models, because the simulator builds one per simulated minute (millions in a tuning run); the
knobs are a validated pydantic model, checked once where they are configured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class ScalingKnobs(BaseModel):
    """Everything an operator tunes about one service's replica policy and its guardrails.

    The defaults are neutral (no step limit, no stabilization, no cooldown, no feedback);
    `reactive_knobs` and `predictive_knobs` give each policy's usual settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_utilization: float = Field(1.0, gt=0, le=1.5, description="Reactive: share of a replica's capacity "
                                      "each replica should run at (HPA's target).")
    tolerance: float = Field(0.1, ge=0, description="Reactive: no change while observed / target is within "
                             "1 +- tolerance (HPA's --horizontal-pod-autoscaler-tolerance).")
    quantile: float = Field(0.99, gt=0, lt=1, description="Predictive: forecast quantile of demand to provision for.")
    headroom: float = Field(0.0, gt=-1, description="Predictive: extra share over that quantile (0.1 = 10% more).")
    min_replicas: int = Field(1, ge=0, description="Fewest replicas.")
    max_replicas: int = Field(100_000, ge=1, description="Most replicas.")
    scale_up_pods: int | None = Field(None, ge=0, description="Step limit: replicas added per scale-up period "
                                      "(the larger of this and the percent limit applies; both None: no limit).")
    scale_up_percent: float | None = Field(None, ge=0, description="Step limit: percent of the replicas at the "
                                           "period's start added per scale-up period.")
    scale_up_period_s: float = Field(15.0, gt=0, description="Scale-up step-limit period (seconds).")
    scale_down_pods: int | None = Field(None, ge=0, description="Step limit: replicas removed per scale-down period.")
    scale_down_percent: float | None = Field(None, ge=0, description="Step limit: percent of the replicas at the "
                                             "period's start removed per scale-down period.")
    scale_down_period_s: float = Field(15.0, gt=0, description="Scale-down step-limit period (seconds).")
    scale_up_stabilization_s: float = Field(0.0, ge=0, description="Scale up only to the lowest recommendation "
                                            "of this window.")
    scale_down_stabilization_s: float = Field(0.0, ge=0, description="Scale down only to the highest "
                                              "recommendation of this window.")
    cooldown_s: float = Field(0.0, ge=0, description="No scale-down for this long after any scale action "
                              "(scale-ups are never held: holding them would trade misses for nothing).")
    max_unavailable: float = Field(1.0, gt=0, le=1, description="Most share of ready instances removed at once "
                                   "(at least one); the same meaning as the registry layer's drain limit.")
    slo: float = Field(0.005, ge=0, lt=1, description="Feedback: share of intervals allowed to be "
                       "under-provisioned (observed rate above ready x capacity).")
    feedback_gain: float = Field(0.0, ge=0, description="Feedback: how far a minute moves the headroom correction: "
                                 "+ gain x (1 - slo) per minute missed, - gain x slo per minute covered, scaled by "
                                 "interval / 60 s so it means the same at any interval (0: off).")
    correction_min: float = Field(-0.5, gt=-1, description="Feedback: lowest correction.")
    correction_max: float = Field(2.0, ge=0, description="Feedback: highest correction.")

    @model_validator(mode="after")
    def _ordered(self) -> ScalingKnobs:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.correction_min > self.correction_max:
            raise ValueError("correction_min > correction_max")
        return self


FEEDBACK_GAIN = 0.01  # chosen on the NASA backtest: lands on the SLO within 0.02 point; larger gains cost more


def hpa_knobs(target_utilization: float = 0.8, **overrides: Any) -> ScalingKnobs:
    """Kubernetes HPA as it ships: tolerance 0.1, 300 s scale-down stabilization, `behavior` step limits up by
    max(4 pods, 100%) per 15 s and down by 100% per 15 s, and no feedback (HPA has none). What a shadow HPA or
    an HPA what-if runs, so that "HPA" in a comparison means Kubernetes' HPA."""
    base: dict[str, Any] = dict(target_utilization=target_utilization, tolerance=0.1, scale_down_stabilization_s=300.0,
                                scale_up_pods=4, scale_up_percent=100.0, scale_up_period_s=15.0,
                                scale_down_percent=100.0, scale_down_period_s=15.0)
    return ScalingKnobs(**{**base, **overrides})


def reactive_knobs(target_utilization: float = 0.8, **overrides: Any) -> ScalingKnobs:
    """HPA's defaults (`hpa_knobs`) plus the online feedback: the reactive policy when it acts (the fallback,
    the backtest's reactive baseline), where missing the SLO over and over should raise its headroom."""
    return hpa_knobs(target_utilization, **{"feedback_gain": FEEDBACK_GAIN, **overrides})


PREDICTIVE_SCALE_DOWN_STABILIZATION_S = 300.0  # HPA's default window, for the same reason: no flapping


def predictive_knobs(headroom: float = 0.0, quantile: float = 0.99, **overrides: Any) -> ScalingKnobs:
    """Scale up at once to the forecast; scale down only to the highest recommendation of the last 300 s
    (HPA's scale-down stabilization) and by at most max(1 replica, 10%) a minute, since a forecast dip can
    be noise and a replica removed costs a startup to get back; plus the online feedback."""
    base: dict[str, Any] = dict(headroom=headroom, quantile=quantile, scale_down_pods=1, scale_down_percent=10.0,
                                scale_down_period_s=60.0,
                                scale_down_stabilization_s=PREDICTIVE_SCALE_DOWN_STABILIZATION_S,
                                feedback_gain=FEEDBACK_GAIN)
    return ScalingKnobs(**{**base, **overrides})


@dataclass(frozen=True, slots=True)
class QuantileForecast:
    """Forecast quantiles of demand (req/s): values[k][j] is level `levels[j]` for the step starting
    at start_s + k x step_s."""

    start_s: float
    step_s: float
    levels: tuple[float, ...]
    values: np.ndarray  # [steps, levels]

    def peak(self, quantile: float, from_s: float, until_s: float) -> float | None:
        """The highest `quantile` forecast over the steps overlapping [from_s, until_s); None when a step
        in it is missing, the level is not forecast, or no step covers it."""
        try:
            j = self.levels.index(quantile)
        except ValueError:
            return None
        first = max(0, math.floor((from_s - self.start_s) / self.step_s + 1e-9))
        last = math.ceil((until_s - self.start_s) / self.step_s - 1e-9)
        if last <= first or last > len(self.values):
            return None
        column = self.values[first:last, j]
        top = float(column.max())
        return top if math.isfinite(top) else None


@dataclass(frozen=True, slots=True)
class ScalingState:
    """What a service's policy carries from one decision to the next (the controller persists it).

    recommendations: (time, replicas) the policy recommended, for the stabilization windows.
    changes: (time, delta) of the replica changes decided, for the step-limit periods.
    served: ready replicas left serving after the last decision (judged against the next observed rate).
    correction: the feedback's headroom correction, added to the policy's headroom.
    judged / misses: intervals the feedback judged and how many were under-provisioned."""

    recommendations: tuple[tuple[float, int], ...] = ()
    changes: tuple[tuple[float, int], ...] = ()
    last_action_s: float | None = None
    last_observed: float | None = None
    served: int | None = None
    correction: float = 0.0
    judged: int = 0
    misses: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScalingState:
        return cls(recommendations=tuple((float(t), int(n)) for t, n in data.get("recommendations", ())),
                   changes=tuple((float(t), int(n)) for t, n in data.get("changes", ())),
                   last_action_s=data.get("last_action_s"), last_observed=data.get("last_observed"),
                   served=data.get("served"), correction=float(data.get("correction", 0.0)),
                   judged=int(data.get("judged", 0)), misses=int(data.get("misses", 0)))


@dataclass(frozen=True, slots=True)
class ScalingContext:
    """One decision's inputs.

    current: replicas started (ready or starting); ready: those serving. observed_rate: the
    service's request rate over the last interval (None when unknown). fallback: the caller runs
    the reactive policy because predictions are stale or serving is down."""

    now_s: float
    interval_s: float
    startup_s: float
    capacity: float
    current: int
    ready: int
    observed_rate: float | None
    forecast: QuantileForecast | None
    knobs: ScalingKnobs
    state: ScalingState = field(default_factory=ScalingState)
    fallback: bool = False


class PolicyResult(NamedTuple):
    desired: int
    reason: str
    state: ScalingState


class ScalingDecision(NamedTuple):
    """What the guardrails let through: `desired` replicas, `raw` the policy asked for, the reason (the
    policy's, then each guardrail that changed it), the state to pass to the next decision."""

    desired: int
    raw: int
    reason: str
    state: ScalingState
    limited_by: tuple[str, ...]
