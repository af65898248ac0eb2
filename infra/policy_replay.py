"""A replica policy's rounds replayed offline on feature windows, as the live autoscaler would have run them.

Each round reads only the windows that had landed by then (`landed_after_s` after they closed), takes the
mean rate of those closed since its last round (else the newest) as the observed load, asks `forecast_at`
for the forecast a round with that newest window would have been answered (predictive policies), and
decides through the shared guardrails with its own pool on paper. Times are wall seconds, the policy's
clock is the trace's (`tt`), as in the demo. The decided counts go through `replay_schedule` like the live
ones. Pure: no I/O.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import replace

from infra.core.features_table import ServiceWindow
from infra.core.scaling import (
    Policy,
    QuantileForecast,
    ScalingContext,
    ScalingKnobs,
    ScalingState,
    decide,
    ready,
    resize,
)
from infra.trace_time import TraceTime

ForecastAt = Callable[[float | None], QuantileForecast | None]  # newest landed window's end (wall) -> forecast


def simulate_rounds(policy: Policy, rounds: list[float], windows: list[ServiceWindow], tt: TraceTime,
                    knobs: ScalingKnobs, capacity_rps: float, startup_s: float, interval_s: float, initial: int,
                    landed_after_s: float, forecast_at: ForecastAt | None = None) -> list[tuple[float, int]]:
    """(wall time, desired) of `policy` deciding at each of `rounds` (wall times). `forecast_at`'s forecasts
    are on the trace's clock and in the windows' units (req/s as `capacity_rps`)."""
    state = ScalingState()
    current = initial
    ready_at: list[float] = [-math.inf] * initial
    last_end = 0
    newest: float | None = None
    decided: list[tuple[float, int]] = []
    ordered = sorted(windows, key=lambda w: w.end_s)
    ends = [w.end_s for w in ordered]
    for k, t in enumerate(rounds):
        landed = bisect.bisect_right(ends, t - landed_after_s)  # ordered[:landed] had landed by t
        fresh = ordered[bisect.bisect_right(ends, last_end, hi=landed):landed] or ordered[max(0, landed - 1):landed]
        observed = None
        if fresh:
            last_end = max(w.end_s for w in fresh)
            newest = float(last_end)
            seconds = sum(w.end_s - w.start_s for w in fresh)
            observed = sum(w.requests for w in fresh) / seconds if seconds > 0 else fresh[-1].rate
        if k == 0:  # as the live loop seeds a first round: the current count as just recommended
            state = replace(state, recommendations=((tt.trace(t), current),))
        decision = decide(policy, ScalingContext(
            now_s=tt.trace(t), interval_s=interval_s * tt.speedup, startup_s=startup_s * tt.speedup,
            capacity=capacity_rps, current=current, ready=ready(ready_at, t), observed_rate=observed,
            forecast=None if forecast_at is None else forecast_at(newest), knobs=knobs, state=state))
        state = decision.state
        ready_at = resize(ready_at, decision.desired, t, startup_s)
        current = decision.desired
        decided.append((t, current))
    return decided
