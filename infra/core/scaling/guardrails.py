"""One guardrail wrapper for every replica policy: `decide(policy, ctx)`.

In order: the feedback correction is updated from the last interval's outcome; the policy
recommends; min/max bound it; the stabilization windows smooth it (scale down only to the
highest recommendation of the window, up only to the lowest, as Kubernetes' HPA); a scale-down
waits out the cooldown after any action; step limits cap the change per period (the larger of
the pods and percent limits, as HPA `behavior` with selectPolicy Max); max_unavailable caps the
ready instances removed at once; in fallback the count never drops below ready while load rises;
min/max again. Each guardrail that changes the number says so in the reason.
"""

from __future__ import annotations

import math
from dataclasses import replace

from infra.core.scaling.context import ScalingContext, ScalingDecision, ScalingKnobs, ScalingState
from infra.core.scaling.policies import Policy


def removable(ready: int, max_unavailable: float) -> int:
    """Ready instances that may be removed at once: that share of them, rounded down, at least one."""
    return max(1, math.floor(max_unavailable * ready + 1e-9))


def feedback(state: ScalingState, observed: float | None, capacity: float, knobs: ScalingKnobs,
             interval_s: float = 60.0) -> ScalingState:
    """Adaptive conformal-style correction (Gibbs & Candes' ACI, on the headroom rather than the
    quantile level): after each judged interval, correction += gain x (miss - slo). Misses raise it
    by gain x (1 - slo), every covered interval lowers it by gain x slo, so over T intervals the
    share of misses stays within (range of the correction + gain) / (gain x T) of the SLO whatever
    the traffic, the forecaster or the starting headroom."""
    if state.served is None or observed is None or not math.isfinite(observed):
        return state
    miss = observed > state.served * capacity + 1e-9
    correction = state.correction
    if knobs.feedback_gain:
        correction += knobs.feedback_gain * interval_s / 60.0 * ((1.0 if miss else 0.0) - knobs.slo)
        correction = min(max(correction, knobs.correction_min), knobs.correction_max)
    return replace(state, correction=correction, judged=state.judged + 1, misses=state.misses + int(miss))


def _step_room(changes: tuple[tuple[float, int], ...], now: float, period: float, current: int, up: bool,
               pods: int | None, percent: float | None) -> int | None:
    """Replicas that may still change in this direction within the current period (None: unlimited)."""
    if pods is None and percent is None:
        return None
    done = sum(d for t, d in changes if t > now - period and (d > 0) == up and d != 0)
    done = abs(done)
    base = current - done if up else current + done  # replicas at the start of the period
    by_pct = 0 if percent is None else (math.ceil(base * percent / 100 - 1e-9) if up
                                        else math.floor(base * percent / 100 + 1e-9))
    return max(0, max(pods or 0, by_pct) - done)


def decide(policy: Policy, ctx: ScalingContext) -> ScalingDecision:
    """Run `policy` on `ctx` and pass its recommendation through the guardrails."""
    k, now, current, ready = ctx.knobs, ctx.now_s, ctx.current, ctx.ready
    state = feedback(ctx.state, ctx.observed_rate, ctx.capacity, k, ctx.interval_s)
    raw, reason, state = policy(replace(ctx, state=state))
    limits: list[str] = []
    want = raw

    def limit(value: int, why: str) -> None:
        nonlocal want
        if value != want:
            limits.append(why)
            want = value

    limit(min(max(want, k.min_replicas), k.max_replicas), "min/max replicas")
    window = max(k.scale_up_stabilization_s, k.scale_down_stabilization_s)
    recs = (*((t, n) for t, n in state.recommendations if t > now - window), (now, want)) if window else ()
    if want < current and k.scale_down_stabilization_s:
        held = max(n for t, n in recs if t > now - k.scale_down_stabilization_s)
        limit(min(current, max(want, held)), f"scale-down stabilization {k.scale_down_stabilization_s:g} s")
    elif want > current and k.scale_up_stabilization_s:
        held = min(n for t, n in recs if t > now - k.scale_up_stabilization_s)
        limit(max(current, min(want, held)), f"scale-up stabilization {k.scale_up_stabilization_s:g} s")
    if want < current and state.last_action_s is not None and now - state.last_action_s < k.cooldown_s:
        limit(current, f"cooldown {k.cooldown_s:g} s after the last action")
    if want > current:
        room = _step_room(state.changes, now, k.scale_up_period_s, current, True, k.scale_up_pods,
                          k.scale_up_percent)
        if room is not None:
            limit(min(want, current + room), f"scale-up step limit per {k.scale_up_period_s:g} s")
    elif want < current:
        room = _step_room(state.changes, now, k.scale_down_period_s, current, False, k.scale_down_pods,
                          k.scale_down_percent)
        if room is not None:
            limit(max(want, current - room), f"scale-down step limit per {k.scale_down_period_s:g} s")
    if want < ready:
        limit(max(want, ready - removable(ready, k.max_unavailable)), f"max_unavailable {k.max_unavailable:g}")
    rising = (ctx.observed_rate is not None and state.last_observed is not None
              and ctx.observed_rate > state.last_observed)
    if ctx.fallback and rising and want < ready:
        limit(ready, "fallback: not below ready while load rises")
    limit(min(max(want, k.min_replicas), k.max_replicas), "min/max replicas")

    period = max(k.scale_up_period_s, k.scale_down_period_s)
    changes = tuple((t, d) for t, d in state.changes if t > now - period)
    last_action = state.last_action_s
    if want != current:
        changes += ((now, want - current),)
        last_action = now
    observed = ctx.observed_rate if ctx.observed_rate is not None and math.isfinite(ctx.observed_rate) else None
    state = replace(state, recommendations=recs, changes=changes, last_action_s=last_action,
                    last_observed=observed if observed is not None else state.last_observed,
                    served=min(ready, want))
    if limits:
        reason = f"{reason}; {'; '.join(limits)} -> {want}"
    if ctx.fallback:
        reason = f"fallback ({reason})"
    return ScalingDecision(want, raw, reason, state, tuple(limits))
