"""Scale-down stabilization of the predictive preset: a flapping recommendation does not flap the replicas.

The closed-loop demo's autoscaler once went 3 -> 2 -> 3 on a forecast dip. The predictive preset now
carries HPA's scale-down window (the highest recommendation of the last 300 s), applied by the one
guardrail wrapper, so the backtest's simulator and the live loop hold alike. No server involved.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from infra.core.scaling import (
    PolicyResult,
    ScalingContext,
    ScalingDecision,
    ScalingState,
    decide,
    predictive,
    predictive_knobs,
    reactive_knobs,
)
from infra.core.settings import AutoscaledService, load_settings
from training.autoscale import Forecasts, ScalingSpec, Trace, simulate

INTERVAL = 15.0


def scripted(wants: Sequence[int]) -> list[ScalingDecision]:
    """Decide once per interval with the predictive preset, the policy recommending `wants` in turn, the
    replicas following each decision (as the scaler would)."""
    knobs = predictive_knobs(min_replicas=1, max_replicas=10)
    state, current, out = ScalingState(), wants[0], []
    for i, want in enumerate(wants):

        def policy(ctx: ScalingContext, want: int = want) -> PolicyResult:
            return PolicyResult(want, f"scripted {want}", ctx.state)

        d = decide(policy, ScalingContext(now_s=i * INTERVAL, interval_s=INTERVAL, startup_s=20.0, capacity=10.0,
                                          current=current, ready=current, observed_rate=None, forecast=None,
                                          knobs=knobs, state=state))
        state, current = d.state, d.desired
        out.append(d)
    return out


def test_the_predictive_preset_has_hpas_scale_down_window_and_no_scale_up_delay() -> None:
    k = predictive_knobs()
    assert k.scale_down_stabilization_s == 300.0
    assert k.scale_up_stabilization_s == 0.0 and k.scale_up_pods is None and k.scale_up_percent is None


def test_flapping_recommendations_within_the_window_stay_at_the_highest() -> None:
    decisions = scripted([3, 2, 3, 2, 3, 2])
    assert [d.desired for d in decisions] == [3] * 6
    assert [d.raw for d in decisions] == [3, 2, 3, 2, 3, 2]
    assert "scale-down stabilization 300 s" in decisions[1].reason


def test_a_sustained_lower_recommendation_scales_down_after_the_window() -> None:
    decisions = scripted([3] + [2] * 24)  # one 3 at t=0, then 2 every 15 s
    desired = [d.desired for d in decisions]
    # held while the 3 is within the last 300 s (t < 300), down at t = 300 when it leaves the window
    assert desired[:20] == [3] * 20
    assert all("scale-down stabilization" in d.reason for d in decisions[1:20])
    assert desired[20] == 2 and decisions[20].limited_by == ()
    assert desired[20:] == [2] * 5


def test_scale_up_is_not_delayed() -> None:
    decisions = scripted([3, 2, 2, 6])
    assert [d.desired for d in decisions] == [3, 3, 3, 6]
    assert decisions[3].limited_by == ()


def test_the_backtest_simulator_holds_the_same_way() -> None:
    # forecasts for 3, 2, 3, 2, ... replicas' worth of demand: the simulated count does not flap
    levels = (0.99,)
    minutes, horizon = 10, 8
    per_minute = np.array([25.0 if i % 2 == 0 else 15.0 for i in range(minutes + horizon)])
    values = np.stack([per_minute[i:i + horizon, None] for i in range(minutes)])
    trace = Trace()
    simulate(np.full(minutes, 15.0), predictive, predictive_knobs(min_replicas=1), ScalingSpec(capacity=10,
             startup_s=0), Forecasts(values=values, levels=levels), trace, initial=3)
    assert {d.raw for d in trace.decisions} == {2, 3}  # the forecast alone would flap
    assert trace.ready == [3] * minutes


def test_the_demo_compresses_both_policies_clocks_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.closed_loop import demo_settings

    monkeypatch.chdir(tmp_path)  # no foresight.toml: the defaults
    s = load_settings()
    svc = s.pool.service(s.demo.loop_service)
    assert svc is not None
    scaled = demo_settings(s, svc).autoscaler.services[0]
    assert isinstance(scaled, AutoscaledService)
    f = s.demo.interval_s / 15.0  # HPA's 15 s round onto the demo's round
    assert scaled.knobs.scale_down_stabilization_s == pytest.approx(300.0 * f) == 100.0
    assert scaled.reactive.scale_down_stabilization_s == pytest.approx(300.0 * f)
    assert scaled.knobs.scale_down_period_s == pytest.approx(predictive_knobs().scale_down_period_s * f)
    assert scaled.reactive.scale_up_period_s == pytest.approx(reactive_knobs().scale_up_period_s * f)
    assert scaled.knobs.scale_down_pods == predictive_knobs().scale_down_pods  # the rest is the preset
    assert (scaled.knobs.min_replicas, scaled.knobs.max_replicas) == (svc.min_replicas, svc.max_replicas)


def test_compress_time_scales_every_duration_and_nothing_else() -> None:
    from infra.core.scaling import compress_time
    from infra.core.scaling.context import TIME_KNOBS

    k = reactive_knobs(cooldown_s=30.0, scale_up_stabilization_s=60.0)
    c = compress_time(k, 0.5)
    for name in TIME_KNOBS:
        assert getattr(c, name) == getattr(k, name) * 0.5
    rest = set(type(k).model_fields) - set(TIME_KNOBS)
    assert {n: getattr(c, n) for n in rest} == {n: getattr(k, n) for n in rest}
    with pytest.raises(ValueError, match="> 0"):
        compress_time(k, 0)
