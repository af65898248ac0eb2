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
one keeps `min_weight` (never drain the last instance).
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.core.contracts import HAPROXY_MAX_WEIGHT
from infra.core.settings import AdapterSettings


@dataclass(frozen=True)
class WeightChange:
    instance: str
    before: int | None
    after: int
    reason: str


def smooth(predicted: dict[str, int], previous: dict[str, float], alpha: float) -> dict[str, float]:
    """The weights to aim at: an exponential moving average of each instance's predictions (`alpha` the
    share of the newest). A new instance starts at its prediction; a predicted 0 is a drain and passes at
    once, and the instance starts again from its next prediction."""
    out: dict[str, float] = {}
    for instance, weight in predicted.items():
        before = previous.get(instance)
        out[instance] = float(weight) if weight <= 0 or not before else alpha * weight + (1 - alpha) * before
    return out


def decide_weights(predicted: dict[str, int], current: dict[str, int], cfg: AdapterSettings) -> list[WeightChange]:
    """Changes for instances HAProxy knows; predictions for unknown instances are ignored."""
    known = sorted(predicted.keys() & current.keys())
    zeros = {i for i in known if predicted[i] <= 0}
    # Servers that keep a positive weight whatever happens: predicted positive, or not predicted at all.
    serving = [i for i in current if i not in zeros and (i in predicted or current[i] > 0)]
    keep_last = not serving  # every serving server would go to 0: the zeros are refused
    changes = []
    for instance in known:
        have = current[instance]
        if instance in zeros and not keep_last:
            if have != 0:
                changes.append(WeightChange(instance, have, 0, f"predicted weight {predicted[instance]}: drained"))
            continue
        want = min(max(predicted[instance], cfg.min_weight), HAPROXY_MAX_WEIGHT)
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
