"""What the reactive policy would have cost at other HPA targets, on the demo's recorded load.

The shadow HPA decides live at HPA's default target (0.8 of each replica's capacity), which is
cheaper than the predictive policy because it is under-provisioned more often. To compare at the same
SLO, the reactive policy is run again here, offline, on the feature windows the demo recorded, at
lower targets: each at the shadow's round times, on the same clock (trace seconds) and knobs, reading
the windows that had landed by then, and with its own pool on paper, as the live shadow keeps one.
Each schedule then goes through the same `replay_schedule` as the live ones. Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import replace

from infra.core.features_table import ServiceWindow
from infra.core.scaling import ScalingContext, ScalingKnobs, ScalingState, decide, reactive, ready, resize
from infra.trace_time import TraceTime


def simulate_reactive(rounds: list[float], windows: list[ServiceWindow], tt: TraceTime, knobs: ScalingKnobs,
                      capacity_rps: float, startup_s: float, interval_s: float, initial: int,
                      landed_after_s: float) -> list[tuple[float, int]]:
    """(wall time, desired) of the reactive policy deciding at each of `rounds` (wall times) on the windows
    that ended `landed_after_s` before it (the live autoscaler reads what has reached ClickHouse), as the
    live one does: the mean rate of the windows closed since its last round, else the newest."""
    state = ScalingState()
    current = initial
    ready_at: list[float] = [-math.inf] * initial
    last_end = 0
    decided: list[tuple[float, int]] = []
    ordered = sorted(windows, key=lambda w: w.end_s)
    for k, t in enumerate(rounds):
        seen = [w for w in ordered if w.end_s <= t - landed_after_s]
        fresh = [w for w in seen if w.end_s > last_end] or seen[-1:]
        observed = None
        if fresh:
            last_end = max(w.end_s for w in fresh)
            seconds = sum(w.end_s - w.start_s for w in fresh)
            observed = sum(w.requests for w in fresh) / seconds if seconds > 0 else fresh[-1].rate
        if k == 0:  # as the live loop seeds a first round: the current count as just recommended
            state = replace(state, recommendations=((tt.trace(t), current),))
        decision = decide(reactive, ScalingContext(
            now_s=tt.trace(t), interval_s=interval_s * tt.speedup, startup_s=startup_s * tt.speedup,
            capacity=capacity_rps, current=current, ready=ready(ready_at, t), observed_rate=observed,
            forecast=None, knobs=knobs, state=state))
        state = decision.state
        ready_at = resize(ready_at, decision.desired, t, startup_s)
        current = decision.desired
        decided.append((t, current))
    return decided


def cheapest_at_least_as_safe(sweep: dict[float, tuple[float, float]], underprov_s: float) -> float | None:
    """The target of `sweep` (target -> (replica-seconds, under-provisioned seconds)) with the fewest
    replica-seconds among those under-provisioned no longer than `underprov_s`; None when none is."""
    safe = [(rs, target) for target, (rs, under) in sweep.items() if under <= underprov_s]
    return min(safe)[1] if safe else None
