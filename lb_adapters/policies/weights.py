"""Weight policy: from predicted weights and the current ones to guarded changes. Pure arithmetic.

Guardrails: a positive prediction stays in [min_weight, 256], so latency alone never drains an
instance (the weights model answers 0 only for an instance that fails everything); a change moves
at most `max_step`; changes under `deadband` are ignored to avoid flapping the balancer.

An instance HAProxy knows but with no prediction (no recent window: idle, new, or its windows stopped)
is unknown: it moves back to `unknown_weight` rather than staying frozen at whatever its last
prediction gave it. A drained one (weight 0) stays at 0: sending it traffic to find out is the health
controller's call (re-admission), not the weight policy's. The caller holds every weight when no
instance has a window at all (the feature pipeline is down, not the instances).

A predicted 0 drains: the weight goes to 0 at once (a drain is not a nudge, so no step limit and
no deadband), unless that would leave no server of the backend with a positive weight: the last
one keeps `min_weight` (never drain the last instance), and unless the servers left lack the capacity
for the load (`OverloadGuard`, the drain policy's guard): the instance then keeps the weight that gives
it the share of the load they cannot take.

A hold (`holds`: the health controller refused to drain an instance for the same reason) caps the
instance's weight, at once like a drain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from infra.core.contracts import HAPROXY_MAX_WEIGHT
from infra.core.settings import AdapterSettings
from lb_adapters.policies.capacity import check_capacity, hold_weight


@dataclass(frozen=True)
class WeightChange:
    instance: str
    before: int | None
    after: int
    reason: str


@dataclass(frozen=True)
class OverloadGuard:
    """What the weight policy needs to refuse a drain into overload (see `policies.capacity`)."""

    capacity: Mapping[str, float | None]  # requests/s each instance can serve; None: no estimate
    load_rps: float | None
    margin: float = 1.15
    fallback_rps: float | None = None


def smooth(predicted: dict[str, int], previous: dict[str, float], alpha: float) -> dict[str, float]:
    """The weights to aim at: an exponential moving average of each instance's predictions (`alpha` the
    share of the newest). A new instance starts at its prediction; a predicted 0 is a drain and passes at
    once, and the instance starts again from its next prediction."""
    out: dict[str, float] = {}
    for instance, weight in predicted.items():
        before = previous.get(instance)
        out[instance] = float(weight) if weight <= 0 or not before else alpha * weight + (1 - alpha) * before
    return out


def decide_weights(predicted: dict[str, int], current: dict[str, int], cfg: AdapterSettings,
                   guard: OverloadGuard | None = None, holds: Mapping[str, int] | None = None) -> list[WeightChange]:
    """Changes for instances HAProxy knows; predictions for unknown instances are ignored.
    `guard`: refuse a predicted 0 that would overload the rest; `holds`: instance -> the most weight it
    may have (a drain refused for capacity)."""
    holds = holds or {}
    known = sorted(predicted.keys() & current.keys())
    zeros = {i for i in known if predicted[i] <= 0}
    # Servers that keep a positive weight whatever happens: predicted positive, or not predicted at all.
    serving = [i for i in current if i not in zeros and (i in predicted or current[i] > 0)]
    keep_last = not serving  # every serving server would go to 0: the zeros are refused
    held_zero: dict[str, tuple[int, str]] = {}
    if zeros and not keep_last and guard is not None:
        fits = check_capacity(", ".join(sorted(zeros)), serving, guard.capacity, guard.load_rps, guard.margin,
                              guard.fallback_rps)
        if not fits.allowed and fits.hold_share is not None:
            others = {i: (predicted[i] if i in predicted else current[i]) for i in serving}
            w = hold_weight(fits.hold_share / len(zeros), others, cfg.min_weight, HAPROXY_MAX_WEIGHT)
            held_zero = {i: (w, fits.reason) for i in zeros}
    changes = []
    for instance in known:
        have = current[instance]
        if instance in zeros and not keep_last and instance not in held_zero:
            if have != 0:
                changes.append(WeightChange(instance, have, 0, f"predicted weight {predicted[instance]}: drained"))
            continue
        if instance in held_zero:  # a refused drain: straight to the held weight, as a drain would be
            w, why = held_zero[instance]
            if have != w and (abs(w - have) >= cfg.deadband or have == 0):
                changes.append(WeightChange(instance, have, w, f"predicted weight {predicted[instance]}, held at {w} "
                                                               f"instead of drained: {why}"))
            continue
        want = min(max(predicted[instance], cfg.min_weight), HAPROXY_MAX_WEIGHT)
        if instance in holds and want > holds[instance]:
            w = max(cfg.min_weight, holds[instance])
            if have != w and (abs(w - have) >= cfg.deadband or have == 0):
                changes.append(WeightChange(instance, have, w, f"predicted weight {predicted[instance]}, held at {w}: "
                                                               "a drain refused because the rest lack the capacity"))
            continue
        step = max(-cfg.max_step, min(cfg.max_step, want - have))
        after = have + step
        if abs(after - have) < cfg.deadband and not (have == 0 and after > 0):
            continue
        reason = f"predicted weight {predicted[instance]}"
        if instance in zeros:
            reason += f", kept at {want}: it would leave no server with a positive weight"
        elif want != predicted[instance]:
            reason += f", clamped to {want}"
        if after != want:
            reason += f", step limited to {cfg.max_step}"
        changes.append(WeightChange(instance, have, after, reason))
    if predicted:
        for instance in sorted(current.keys() - predicted.keys()):
            have = current[instance]
            step = max(-cfg.max_step, min(cfg.max_step, cfg.unknown_weight - have))
            if have == 0 or abs(step) < cfg.deadband:
                continue
            reason = f"no recent window: unknown, back to the neutral weight {cfg.unknown_weight}"
            if have + step != cfg.unknown_weight:
                reason += f", step limited to {cfg.max_step}"
            changes.append(WeightChange(instance, have, have + step, reason))
    return changes
