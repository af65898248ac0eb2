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
    hpa_knobs,
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


def test_the_demo_runs_both_policies_as_configured_on_the_trace_clock(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.closed_loop import trace_autoscaler
    from infra.trace_time import TraceTime

    monkeypatch.chdir(tmp_path)  # no foresight.toml: the defaults
    s = load_settings()
    svc = s.pool.service(s.demo.loop_service)
    assert svc is not None
    tt = TraceTime(wall0=1000.0, trace0=807_782_400.0, speedup=s.demo.speedup, scale=s.demo.scale)
    auto = trace_autoscaler(s, svc, tt, 1470)
    scaled = auto.services[svc.name].config
    assert isinstance(scaled, AutoscaledService)
    bounds = {"min_replicas": svc.min_replicas, "max_replicas": svc.max_replicas}
    # the presets as an operator runs them, in trace seconds: HPA's 300 s stabilization is 300 trace seconds
    assert scaled.knobs == s.demo.predictive_knobs(**bounds)
    assert scaled.knobs.quantile == s.demo.quantile and scaled.knobs.headroom == s.demo.headroom
    assert scaled.reactive == reactive_knobs(**bounds)
    # its shadow is Kubernetes' HPA: the same knobs without the feedback the fallback keeps
    assert auto.services[svc.name].shadow_knobs == hpa_knobs(**bounds)
    assert scaled.startup_s == svc.startup_delay_s * s.demo.speedup
    assert scaled.capacity_rps == pytest.approx(svc.capacity_rps / (s.demo.speedup * s.demo.scale))
    assert auto.cfg.interval_s == s.demo.autoscale_interval_s * s.demo.speedup and auto.cfg.history_minutes == 1470
    assert auto.clock() == pytest.approx(tt.now(), abs=5 * s.demo.speedup)
