"""Replica policies: pure functions of a `ScalingContext` returning (desired, reason, state).

Bounds, step limits, stabilization, cooldown, max_unavailable and the fallback floor are not
here: `guardrails.decide` applies them the same way to every policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from infra.core.scaling.context import PolicyResult, ScalingContext

Policy = Callable[[ScalingContext], PolicyResult]
EPS = 1e-9


def _replicas(rate: float, per_replica: float) -> int:
    return max(0, math.ceil(rate / per_replica - EPS))


def predictive(ctx: ScalingContext) -> PolicyResult:
    """Provision for the forecast `quantile` of demand, times (1 + headroom + feedback correction).

    A replica asked for now serves only from now + startup, so scaling up is for the peak of
    [now + startup, now + startup + interval), when it will be ready and before the next decision
    can add more. Replicas already there are kept for the peak until then, [now, now + startup):
    one removed now could not be back in time. So desired = max(far, min(current, near))."""
    k = ctx.knobs
    ready_at = ctx.now_s + ctx.startup_s
    until = ready_at + ctx.interval_s
    fc = ctx.forecast
    far = None if fc is None else fc.peak(k.quantile, ready_at, until)
    near = None if fc is None or ctx.startup_s <= 0 else fc.peak(k.quantile, ctx.now_s, ready_at)
    if far is None or (near is None and ctx.startup_s > 0):
        return PolicyResult(ctx.current, "predictive: no forecast covering the next "
                            f"{ctx.startup_s + ctx.interval_s:.0f} s, holding", ctx.state)
    factor = 1.0 + k.headroom + ctx.state.correction
    up = _replicas(far * factor, ctx.capacity)
    keep = 0 if near is None else _replicas(near * factor, ctx.capacity)
    want = max(up, min(ctx.current, keep))
    why = (f"predictive: p{k.quantile * 100:g} {far:.1f} req/s when a new replica is ready"
           + ("" if near is None else f", peak {near:.1f} req/s until then")
           + f", x {factor:.3f} / {ctx.capacity:g} req/s -> {want}")
    return PolicyResult(want, why, ctx.state)


def reactive(ctx: ScalingContext) -> PolicyResult:
    """Kubernetes HPA's ratio rule on the observed rate: desired = ceil(current x observed / (current x
    capacity x target)), no change while the ratio is within 1 +- tolerance. The feedback correction
    lowers the effective target the same way it raises the predictive headroom."""
    k = ctx.knobs
    seen = ctx.observed_rate
    if seen is None or not math.isfinite(seen):
        return PolicyResult(ctx.current, "reactive: no observed rate, holding", ctx.state)
    per_replica = ctx.capacity * k.target_utilization / (1.0 + ctx.state.correction)
    if ctx.current > 0:
        ratio = seen / (ctx.current * per_replica)
        if abs(ratio - 1.0) <= k.tolerance:
            return PolicyResult(ctx.current, f"reactive: {seen:.1f} req/s is {ratio:.2f} of target, within "
                                f"tolerance {k.tolerance:g}", ctx.state)
    want = _replicas(seen, per_replica)
    return PolicyResult(want, f"reactive: {seen:.1f} req/s / ({per_replica:.2f} req/s per replica at target "
                        f"{k.target_utilization:g}) -> {want}", ctx.state)


def static(n: int) -> Policy:
    """Always `n` replicas (the guardrails still apply)."""
    if n < 0:
        raise ValueError(f"static:{n}: a replica count cannot be negative")

    def policy(ctx: ScalingContext) -> PolicyResult:
        return PolicyResult(n, f"static: {n}", ctx.state)

    return policy


def policy_by_name(name: str) -> Policy:
    """`predictive`, `reactive` (or `hpa`), or `static:N`."""
    if name == "predictive":
        return predictive
    if name in ("reactive", "hpa"):
        return reactive
    if name.startswith("static:"):
        try:
            return static(int(name.removeprefix("static:")))
        except ValueError as exc:
            raise ValueError(f"{name!r}: expected static:N with N a whole number of replicas") from exc
    raise ValueError(f"unknown policy {name!r}: use predictive, hpa (reactive) or static:N")
