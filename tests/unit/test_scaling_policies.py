"""The replica policies themselves (infra.core.scaling.policies), without guardrails."""

from typing import Any

import numpy as np
import pytest

from infra.core.scaling import (
    QuantileForecast,
    ScalingContext,
    ScalingKnobs,
    ScalingState,
    policy_by_name,
    predictive,
    reactive,
    static,
)


def ctx(current: int = 10, observed: float | None = None, forecast: QuantileForecast | None = None,
        correction: float = 0.0, **knobs: Any) -> ScalingContext:
    return ScalingContext(now_s=600.0, interval_s=60.0, startup_s=60.0, capacity=20.0, current=current,
                          ready=current, observed_rate=observed, forecast=forecast, knobs=ScalingKnobs(**knobs),
                          state=ScalingState(correction=correction))


def fc(p99: list[float], start_s: float = 600.0) -> QuantileForecast:
    values = np.array([[v / 2, v] for v in p99])
    return QuantileForecast(start_s=start_s, step_s=60.0, levels=(0.5, 0.99), values=values)


def test_reactive_follows_the_hpa_ratio_rule_and_tolerance() -> None:
    k: dict[str, Any] = dict(target_utilization=0.5)  # 10 req/s per replica at target
    assert reactive(ctx(10, 100.0, **k)).desired == 10
    assert reactive(ctx(10, 105.0, **k)).desired == 10  # within 0.1
    assert reactive(ctx(10, 120.0, **k)).desired == 12
    assert reactive(ctx(10, 80.0, **k)).desired == 8
    assert reactive(ctx(10, None, **k)).desired == 10


def test_predictive_provisions_for_the_peak_until_a_new_replica_is_ready() -> None:
    # startup 60 + interval 60: the steps starting at 600 and 660; the 300 at 720 is beyond.
    assert predictive(ctx(1, forecast=fc([10.0, 95.0, 300.0]))).desired == 5
    assert predictive(ctx(1, forecast=fc([10.0, 95.0, 300.0]), headroom=0.1)).desired == 6
    assert predictive(ctx(1, forecast=fc([10.0, 95.0, 300.0]), quantile=0.5)).desired == 3


def test_predictive_holds_without_a_usable_forecast() -> None:
    assert predictive(ctx(7)).desired == 7
    assert predictive(ctx(7, forecast=fc([10.0, np.nan]))).desired == 7
    assert predictive(ctx(7, forecast=fc([10.0, 95.0]), quantile=0.9)).desired == 7  # level not forecast
    assert predictive(ctx(7, forecast=fc([10.0]))).desired == 7  # too short


def test_predictive_skips_forecast_steps_already_past() -> None:
    assert predictive(ctx(1, forecast=fc([500.0, 10.0, 20.0], start_s=540.0))).desired == 1


def test_correction_raises_predictive_and_lowers_reactive_target() -> None:
    assert predictive(ctx(1, forecast=fc([100.0, 100.0]), correction=0.2)).desired == 6
    assert reactive(ctx(10, 200.0, correction=0.25, target_utilization=1.0)).desired == 13


def test_policy_by_name() -> None:
    assert policy_by_name("predictive") is predictive
    assert policy_by_name("hpa") is reactive
    assert policy_by_name("static:3")(ctx(1)).desired == 3
    with pytest.raises(ValueError, match="static:N"):
        policy_by_name("static:x")
    with pytest.raises(ValueError, match="unknown policy"):
        policy_by_name("magic")
    with pytest.raises(ValueError):
        static(-1)


def test_predictive_does_not_scale_up_for_a_peak_over_before_a_new_replica_is_ready() -> None:
    # startup 60, interval 60: a replica asked now serves the step at 660 only.
    spike_now = fc([300.0, 40.0, 0.0])
    assert predictive(ctx(1, forecast=spike_now)).desired == 2  # 300 now cannot be met in time: 40 -> 2
    # but the replicas already there are kept for it: removing them could not be undone in time
    assert predictive(ctx(20, forecast=spike_now)).desired == 15
    assert predictive(ctx(12, forecast=spike_now)).desired == 12
