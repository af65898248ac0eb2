"""Autoscaling simulator: the shared replica policies (infra.core.scaling) replayed over a demand series.

Model: minute i has demand d[i] req/s (trace rate x scale). Replicas serve `capacity` req/s
each. A scale-up started at minute i is ready `ceil(startup_s / 60)` minutes later (a replica
counts only for whole minutes it is ready); a scale-down is immediate (pending replicas are
cancelled first). The policy is asked once a minute, at its start, through
`infra.core.scaling.decide` exactly as the live autoscaler asks it: a `ScalingContext` with the
demand of the minute before as the observed rate and the forecast made at the start of the
minute. A minute is under-provisioned when d[i] > ready x capacity; bursts inside a minute are
left to queues. Replica-seconds count every started replica, ready or not. Minutes without data
(NaN demand) are neither judged nor billed, but the replicas carry on through them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from infra.core.scaling import (
    Policy,
    QuantileForecast,
    ScalingContext,
    ScalingDecision,
    ScalingKnobs,
    ScalingState,
    decide,
    predictive,
)

STEP_S = 60


class ScalingSpec(BaseModel):
    """What the service is, as opposed to how it is scaled (the knobs)."""

    model_config = ConfigDict(extra="forbid")

    capacity: float = Field(gt=0, description="Requests per second one replica serves.")
    startup_s: float = Field(ge=0, description="Seconds from scale-up to a ready replica.")

    @property
    def delay_min(self) -> int:
        return math.ceil(self.startup_s / STEP_S)


class SimResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    underprov_pct: float
    replica_seconds: float
    actions: int
    minutes: int
    knob: str | None = None
    knob_value: float | None = None


class Forecasts(BaseModel):
    """values[i, k, j]: quantile levels[j] of demand for minute i + k, made at the start of minute i."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    values: np.ndarray
    levels: tuple[float, ...]

    def at(self, minute: int) -> QuantileForecast:
        return QuantileForecast(start_s=float(minute * STEP_S), step_s=float(STEP_S), levels=self.levels,
                                values=self.values[minute])


@dataclass
class Trace:
    """What `simulate` records minute by minute besides the totals."""

    ready: list[int] = field(default_factory=list)
    decisions: list[ScalingDecision] = field(default_factory=list)
    underprov: list[bool] = field(default_factory=list)
    seen: list[tuple[int, int]] = field(default_factory=list)  # (started, ready) before each decision


def context(minute: int, demand: np.ndarray, spec: ScalingSpec, knobs: ScalingKnobs, current: int, ready: int,
            state: ScalingState, forecasts: Forecasts | None) -> ScalingContext:
    """The context the policy sees at the start of `minute`: exactly what the live controller builds."""
    seen = float(demand[minute - 1]) if minute > 0 else math.nan
    return ScalingContext(now_s=float(minute * STEP_S), interval_s=float(STEP_S), startup_s=spec.startup_s,
                          capacity=spec.capacity, current=current, ready=ready,
                          observed_rate=seen if math.isfinite(seen) else None,
                          forecast=None if forecasts is None else forecasts.at(minute), knobs=knobs, state=state)


def simulate(demand: np.ndarray, policy: Policy, knobs: ScalingKnobs, spec: ScalingSpec,
             forecasts: Forecasts | None = None, trace: Trace | None = None,
             on_minute: Callable[[int], None] | None = None, initial: int | None = None) -> SimResult:
    """Run `policy` (through the guardrails) over `demand`; `trace`, when given, records each minute.
    It starts with `initial` ready replicas (default: enough for the first minute)."""
    delay = spec.delay_min
    pending: deque[tuple[int, int]] = deque()  # (minute it becomes ready, count), oldest first
    start = demand[0] if len(demand) and np.isfinite(demand[0]) else 0.0
    if initial is None:
        initial = min(max(math.ceil(start / spec.capacity), knobs.min_replicas), knobs.max_replicas)
    ready = initial
    state = ScalingState()
    under = counted = actions = 0
    replica_min = 0
    for i, d in enumerate(demand):
        while pending and pending[0][0] <= i:
            ready += pending.popleft()[1]
        total = ready + sum(c for _, c in pending)
        ready_before = ready
        decision = decide(policy, context(i, demand, spec, knobs, total, ready, state, forecasts))
        want, state = decision.desired, decision.state
        if want > total:
            actions += 1
            if delay == 0:
                ready += want - total
            else:
                pending.append((i + delay, want - total))
        elif want < total:
            actions += 1
            drop = total - want
            while drop and pending:
                when, count = pending.pop()
                take = min(count, drop)
                drop -= take
                if count > take:
                    pending.append((when, count - take))
            ready -= drop
        short = bool(d == d and d > ready * spec.capacity + 1e-9)
        if trace is not None:
            trace.seen.append((total, ready_before))
            trace.ready.append(ready)
            trace.decisions.append(decision)
            trace.underprov.append(short)
        if d == d:  # judged and billed only where there is data
            counted += 1
            under += int(short)
            replica_min += ready + sum(c for _, c in pending)
        if on_minute is not None:
            on_minute(i)
    return SimResult(underprov_pct=round(100.0 * under / max(counted, 1), 4),
                     replica_seconds=float(replica_min * STEP_S), actions=actions, minutes=counted)


def oracle(demand: np.ndarray, spec: ScalingSpec, trace: Trace | None = None) -> SimResult:
    """ceil(demand / capacity) for the minute itself, ready at once: the bound no policy beats. It is the
    predictive policy given the true demand as its forecast, with startup 0 and no guardrails."""
    perfect = Forecasts(values=demand[:, None, None], levels=(0.5,))
    knobs = ScalingKnobs(quantile=0.5, min_replicas=1)
    return simulate(demand, predictive, knobs, spec.model_copy(update={"startup_s": 0.0}), perfect, trace)


def tune(make: Callable[[float], ScalingKnobs], policy: Policy, grid: Sequence[float], demand: np.ndarray,
         spec: ScalingSpec, slo_pct: float, forecasts: Forecasts | None = None,
         on_run: Callable[[], None] | None = None) -> tuple[float, SimResult]:
    """The knob value with the fewest replica-seconds among those meeting the SLO on `demand`
    (or, when none does, the one closest to it), and its result."""
    results = []
    for k in grid:
        results.append((k, simulate(demand, policy, make(k), spec, forecasts)))
        if on_run is not None:
            on_run()
    meeting = [(k, r) for k, r in results if r.underprov_pct <= slo_pct]
    if meeting:
        return min(meeting, key=lambda kr: kr[1].replica_seconds)
    return min(results, key=lambda kr: (kr[1].underprov_pct, kr[1].replica_seconds))
