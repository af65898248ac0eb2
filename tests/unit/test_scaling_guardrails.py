"""Guardrails of the shared replica policy (infra.core.scaling): every bound, window, cooldown and step limit."""

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from infra.core.scaling import (
    PolicyResult,
    ScalingContext,
    ScalingKnobs,
    ScalingState,
    decide,
    feedback,
    reactive_knobs,
    removable,
    static,
)


def ctx(current: int = 10, ready: int | None = None, now: float = 1000.0, observed: float | None = None,
        state: ScalingState | None = None, fallback: bool = False, **knobs: Any) -> ScalingContext:
    return ScalingContext(now_s=now, interval_s=15.0, startup_s=30.0, capacity=10.0, current=current,
                          ready=current if ready is None else ready, observed_rate=observed, forecast=None,
                          knobs=ScalingKnobs(**knobs), state=state or ScalingState(), fallback=fallback)


def test_min_and_max_replicas_bound_the_recommendation() -> None:
    assert decide(static(0), ctx(min_replicas=2)).desired == 2
    d = decide(static(50), ctx(max_replicas=12))
    assert d.desired == 12 and d.raw == 50 and "min/max replicas" in d.reason


def test_no_limits_by_default() -> None:
    assert decide(static(100), ctx(current=3)).desired == 100
    assert decide(static(1), ctx(current=30)).desired == 1


def test_scale_up_step_limit_is_the_larger_of_pods_and_percent() -> None:
    k: dict[str, Any] = dict(scale_up_pods=4, scale_up_percent=100.0, scale_up_period_s=15.0)
    assert decide(static(100), ctx(current=2, **k)).desired == 6  # 4 pods > 100% of 2
    assert decide(static(100), ctx(current=10, **k)).desired == 20  # 100% of 10 > 4 pods


def test_step_limit_counts_changes_already_made_in_the_period() -> None:
    k: dict[str, Any] = dict(scale_up_pods=4, scale_up_period_s=60.0)
    first = decide(static(100), ctx(current=2, now=0.0, **k))
    assert first.desired == 6
    second = decide(static(100), ctx(current=6, now=30.0, state=first.state, **k))
    assert second.desired == 6 and "scale-up step limit" in second.reason  # the 4 of this period are spent
    third = decide(static(100), ctx(current=6, now=60.0, state=second.state, **k))
    assert third.desired == 10  # a new period


def test_scale_down_step_limit() -> None:
    k: dict[str, Any] = dict(scale_down_pods=1, scale_down_percent=10.0, scale_down_period_s=60.0)
    assert decide(static(0), ctx(current=30, **k)).desired == 27
    assert decide(static(0), ctx(current=5, **k)).desired == 4


def test_scale_down_stabilization_takes_the_highest_recommendation_of_the_window() -> None:
    state = ScalingState()
    out = []
    for i, want in enumerate([20, 5, 5, 5, 5, 5, 5]):
        d = decide(static(want), ctx(current=20, now=60.0 * i, state=state, scale_down_stabilization_s=300.0))
        state = d.state
        out.append(d.desired)
    # the 20 recommended at t=0 holds until it leaves the 300 s window (at t=300).
    assert out == [20, 20, 20, 20, 20, 5, 5]


def test_scale_up_stabilization_takes_the_lowest_recommendation_of_the_window() -> None:
    first = decide(static(5), ctx(current=5, now=0.0, scale_up_stabilization_s=60.0))
    d = decide(static(9), ctx(current=5, now=30.0, state=first.state, scale_up_stabilization_s=60.0))
    assert d.desired == 5 and "scale-up stabilization" in d.reason
    d = decide(static(9), ctx(current=5, now=61.0, state=d.state, scale_up_stabilization_s=60.0))
    assert d.desired == 9


def test_cooldown_holds_scale_down_after_an_action_but_not_scale_up() -> None:
    up = decide(static(12), ctx(current=10, now=0.0, cooldown_s=120.0))
    assert up.desired == 12 and up.state.last_action_s == 0.0
    held = decide(static(8), ctx(current=12, now=60.0, state=up.state, cooldown_s=120.0))
    assert held.desired == 12 and "cooldown" in held.reason
    assert decide(static(15), ctx(current=12, now=60.0, state=up.state, cooldown_s=120.0)).desired == 15
    assert decide(static(8), ctx(current=12, now=120.0, state=up.state, cooldown_s=120.0)).desired == 8


def test_max_unavailable_removes_that_share_of_ready_at_least_one() -> None:
    assert removable(10, 0.25) == 2 and removable(3, 0.25) == 1 and removable(0, 0.5) == 1
    d = decide(static(1), ctx(current=10, max_unavailable=0.25))
    assert d.desired == 8 and "max_unavailable" in d.reason
    # pending (not ready) replicas are cancelled first and do not count against it
    assert decide(static(6), ctx(current=10, ready=8, max_unavailable=0.25)).desired == 6
    assert decide(static(1), ctx(current=10, ready=8, max_unavailable=0.25)).desired == 6


def test_fallback_never_drops_below_ready_while_load_rises() -> None:
    before = decide(static(10), ctx(current=10, observed=50.0))
    falling = decide(static(3), ctx(current=10, observed=40.0, state=before.state, fallback=True))
    assert falling.desired == 3 and falling.reason.startswith("fallback")
    rising = decide(static(3), ctx(current=10, observed=60.0, state=before.state, fallback=True))
    assert rising.desired == 10 and "while load rises" in rising.reason
    # not in fallback, the same rise does not hold the policy
    assert decide(static(3), ctx(current=10, observed=60.0, state=before.state)).desired == 3


def test_hpa_defaults_match_kubernetes() -> None:
    k = reactive_knobs(0.5)
    assert (k.tolerance, k.scale_down_stabilization_s, k.scale_up_pods, k.scale_up_percent,
            k.scale_up_period_s, k.scale_down_percent, k.scale_down_period_s) == (0.1, 300.0, 4, 100.0, 15.0,
                                                                                     100.0, 15.0)


def test_feedback_raises_correction_on_a_miss_and_lowers_it_otherwise() -> None:
    k: dict[str, Any] = dict(feedback_gain=0.1, slo=0.01)
    first = decide(static(2), ctx(current=2, observed=10.0, **k))  # nothing served yet: not judged
    assert first.state.judged == 0 and first.state.served == 2
    miss = decide(static(2), ctx(current=2, observed=25.0, state=first.state, **k))  # 25 > 2 x 10
    step = 0.1 * 15 / 60  # the gain is per minute; these intervals are 15 s
    assert miss.state.misses == 1 and miss.state.correction == pytest.approx(step * 0.99)
    ok = decide(static(2), ctx(current=2, observed=5.0, state=miss.state, **k))
    assert ok.state.judged == 2 and ok.state.correction == pytest.approx(step * 0.99 - step * 0.01)


def test_feedback_gain_means_the_same_at_any_interval() -> None:
    k = ScalingKnobs(feedback_gain=0.1, slo=0.0)
    state = ScalingState(served=1)
    for _ in range(4):
        state = replace(feedback(state, 50.0, 10.0, k, interval_s=15.0), served=1)
    assert state.correction == pytest.approx(feedback(ScalingState(served=1), 50.0, 10.0, k, 60.0).correction)


def test_feedback_correction_is_bounded() -> None:
    state = ScalingState(served=1, correction=1.95)
    d = decide(static(1), ctx(current=1, observed=100.0, state=state, feedback_gain=0.5, correction_max=2.0))
    assert d.state.correction == 2.0


def test_policy_sees_the_updated_correction() -> None:
    seen: list[float] = []

    def spy(c: ScalingContext) -> PolicyResult:
        seen.append(c.state.correction)
        return PolicyResult(c.current, "spy", replace(c.state))

    decide(spy, ctx(current=1, observed=50.0, state=ScalingState(served=1), feedback_gain=0.2, slo=0.0))
    assert seen == [pytest.approx(0.2 * 15 / 60)]


def test_state_round_trips_through_a_dict() -> None:
    d = decide(static(4), ctx(current=2, observed=3.0, scale_down_stabilization_s=300.0))
    assert ScalingState.from_dict(d.state.as_dict()) == d.state
    assert np.isfinite(d.state.served or 0)
