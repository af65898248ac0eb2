"""Autoscaling simulator and policies: pure functions of a demand series, no servers.

Model: minute i has demand d[i] req/s (trace rate x scale). Replicas serve `capacity` req/s
each. A scale-up started at minute i is ready `ceil(startup_s / 60)` minutes later (a replica
counts only for whole minutes it is ready); a scale-down is immediate (pending replicas are
cancelled first). A policy is asked once a minute, at its start, knowing demand up to the
minute before. A minute is under-provisioned when d[i] > ready x capacity; bursts inside a
minute are left to queues. Replica-seconds count every started replica, ready or not. Minutes
without data (NaN demand) are neither judged nor billed, but the replicas carry on through them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

STEP_S = 60


class ScalingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capacity: float = Field(gt=0, description="Requests per second one replica serves.")
    startup_s: float = Field(ge=0, description="Seconds from scale-up to a ready replica.")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(100_000, gt=0)

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


class Policy(Protocol):
    def decide(self, minute: int, current: int, ready: int) -> int:
        """Replicas wanted from minute `minute` on, given `current` started of which `ready` serve."""
        ...


def simulate(demand: np.ndarray, policy: Policy, spec: ScalingSpec, replicas: list[int] | None = None) -> SimResult:
    """Run `policy` over `demand`; `replicas`, when a list, receives the ready count per minute."""
    delay = spec.delay_min
    pending: deque[tuple[int, int]] = deque()  # (minute it becomes ready, count), oldest first
    start = demand[0] if len(demand) and np.isfinite(demand[0]) else 0.0
    ready = min(max(math.ceil(start / spec.capacity), spec.min_replicas), spec.max_replicas)
    n_pending = 0
    under = counted = actions = 0
    replica_min = 0
    for i, d in enumerate(demand):
        while pending and pending[0][0] <= i:
            ready += pending.popleft()[1]
        n_pending = sum(c for _, c in pending)
        total = ready + n_pending
        want = min(max(policy.decide(i, total, ready), spec.min_replicas), spec.max_replicas)
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
        if replicas is not None:
            replicas.append(ready)
        if d == d:  # judged and billed only where there is data
            counted += 1
            under += int(d > ready * spec.capacity + 1e-9)
            replica_min += ready + sum(c for _, c in pending)
    return SimResult(underprov_pct=round(100.0 * under / max(counted, 1), 4),
                     replica_seconds=float(replica_min * STEP_S), actions=actions, minutes=counted)


class OraclePolicy:
    """ceil(demand / capacity) for the minute itself: run with startup 0, the bound no policy beats."""

    def __init__(self, demand: np.ndarray, capacity: float) -> None:
        self.demand, self.capacity = demand, capacity

    def decide(self, minute: int, current: int, ready: int) -> int:
        d = self.demand[minute]
        return current if d != d else math.ceil(d / self.capacity - 1e-9)


class HPAPolicy:
    """Kubernetes' HPA on the observed request rate (an AverageValue target of target x capacity
    per replica): desired = ceil(current x observed / (current x capacity x target)), nothing
    when the ratio is within the tolerance, and scale-down to the highest recommendation of the
    stabilization window (scale-up immediate, as the default `behavior`)."""

    def __init__(self, observed: np.ndarray, capacity: float, target: float, tolerance: float = 0.1,
                 stabilization_s: float = 300.0) -> None:
        self.observed, self.capacity, self.target, self.tolerance = observed, capacity, target, tolerance
        self.window: deque[int] = deque(maxlen=max(1, math.ceil(stabilization_s / STEP_S)))

    def decide(self, minute: int, current: int, ready: int) -> int:
        seen = self.observed[minute - 1] if minute > 0 else math.nan
        if seen != seen or current == 0:
            rec = current if seen != seen else math.ceil(seen / (self.capacity * self.target))
        else:
            ratio = seen / (current * self.capacity * self.target)
            rec = current if abs(ratio - 1.0) <= self.tolerance else math.ceil(seen / (self.capacity * self.target))
        self.window.append(rec)
        if rec > current:
            return rec
        return min(current, max(self.window))


class PredictivePolicy:
    """Replicas for the forecast upper quantile of demand from now until a replica started now is
    ready, times (1 + headroom); scale-down by at most `max_down` replicas (or that fraction of
    the current count, whichever is more) per minute, since forecasts of a drop can be wrong."""

    def __init__(self, upper: np.ndarray, capacity: float, headroom: float, lead_min: int,
                 max_down: int = 1, max_down_frac: float = 0.1) -> None:
        # upper[i, k]: forecast upper quantile of demand for minute i + k, made at the start of minute i.
        self.upper, self.capacity, self.headroom = upper, capacity, headroom
        self.lead = min(lead_min + 1, upper.shape[1])
        self.max_down, self.max_down_frac = max_down, max_down_frac

    def decide(self, minute: int, current: int, ready: int) -> int:
        ahead = self.upper[minute, : self.lead]
        if not np.all(np.isfinite(ahead)):
            return current
        want = math.ceil(float(ahead.max()) * (1.0 + self.headroom) / self.capacity - 1e-9)
        if want >= current:
            return want
        step = max(self.max_down, math.floor(current * self.max_down_frac))
        return max(want, current - step)


def tune(make: Callable[[float], Policy], grid: Sequence[float], demand: np.ndarray, spec: ScalingSpec,
         slo_pct: float) -> tuple[float, SimResult]:
    """The knob value with the fewest replica-seconds among those meeting the SLO on `demand`
    (or, when none does, the one closest to it), and its result."""
    results = [(k, simulate(demand, make(k), spec)) for k in grid]
    meeting = [(k, r) for k, r in results if r.underprov_pct <= slo_pct]
    if meeting:
        return min(meeting, key=lambda kr: kr[1].replica_seconds)
    return min(results, key=lambda kr: (kr[1].underprov_pct, kr[1].replica_seconds))
