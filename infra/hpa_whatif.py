"""What the reactive policy would have cost at other HPA targets, on the demo's recorded load.

The shadow HPA decides live at HPA's default target (0.8 of each replica's capacity), which is
cheaper than the predictive policy because it is under-provisioned more often. To compare at the same
SLO, the reactive policy is run again here, offline, on the feature windows the demo recorded, at
lower targets: each at the shadow's round times, on the same clock (trace seconds) and knobs (`hpa_knobs`),
reading the windows that had landed by then, and with its own pool on paper, as the live shadow keeps one.
Each schedule then goes through the same `replay_schedule` as the live ones. Pure: no I/O.
"""

from __future__ import annotations

from infra.core.features_table import ServiceWindow
from infra.core.scaling import ScalingKnobs, reactive
from infra.policy_replay import simulate_rounds
from infra.trace_time import TraceTime

# the what-if's HPA targets: 0.8 is HPA's usual, the shadow's; HPA as it ships (no feedback) needs the low ones
# to approach the SLO on the demo's load
HPA_TARGETS = (0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2)


def simulate_reactive(rounds: list[float], windows: list[ServiceWindow], tt: TraceTime, knobs: ScalingKnobs,
                      capacity_rps: float, startup_s: float, interval_s: float, initial: int,
                      landed_after_s: float) -> list[tuple[float, int]]:
    """(wall time, desired) of the reactive policy at each of `rounds` (`infra.policy_replay.simulate_rounds`)."""
    return simulate_rounds(reactive, rounds, windows, tt, knobs, capacity_rps, startup_s, interval_s, initial,
                           landed_after_s)


def cheapest_at_least_as_safe(sweep: dict[float, tuple[float, float]], underprov_s: float) -> float | None:
    """The target of `sweep` (target -> (replica-seconds, under-provisioned seconds)) with the fewest
    replica-seconds among those under-provisioned no longer than `underprov_s`; None when none is."""
    safe = [(rs, target) for target, (rs, under) in sweep.items() if under <= underprov_s]
    return min(safe)[1] if safe else None
