"""Weight policy: from predicted weights and the current ones to guarded changes. Pure arithmetic.

Guardrails: weights stay in [min_weight, 256] so latency alone never drains an instance; a change
moves at most `max_step`; changes under `deadband` are ignored to avoid flapping the balancer.
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


def decide_weights(predicted: dict[str, int], current: dict[str, int], cfg: AdapterSettings) -> list[WeightChange]:
    """Changes for instances HAProxy knows; predictions for unknown instances are ignored."""
    changes = []
    for instance in sorted(predicted.keys() & current.keys()):
        want = min(max(predicted[instance], cfg.min_weight), HAPROXY_MAX_WEIGHT)
        have = current[instance]
        step = max(-cfg.max_step, min(cfg.max_step, want - have))
        after = have + step
        if abs(after - have) < cfg.deadband:
            continue
        reason = f"predicted weight {predicted[instance]}"
        if want != predicted[instance]:
            reason += f", clamped to {want}"
        if after != want:
            reason += f", step limited to {cfg.max_step}"
        changes.append(WeightChange(instance, have, after, reason))
    return changes
