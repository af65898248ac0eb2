"""The demo replayed offline on other days: its windows, the history the forecaster reads, the days, the scores."""

import math
from dataclasses import replace

import numpy as np

from infra.core.features_table import ServiceWindow
from infra.core.scaling import QuantileForecast, predictive, predictive_knobs, reactive, reactive_knobs
from infra.demo_days import (
    HPA_TARGETS,
    DemoShape,
    VariantScore,
    history_until,
    hpa_as_safe,
    score,
    slice_windows,
    variants,
    weekdays_before,
    within_slo,
)
from infra.policy_replay import simulate_rounds
from infra.trace_time import TraceTime
from training.series import RateSeries

SHAPE = DemoShape(duration_s=40.0, window_s=10.0, landed_after_s=3.0, interval_s=1.0, capacity_rps=20.0,
                  startup_s=20.0, initial=2, min_replicas=1, max_replicas=10, speedup=60.0, scale=1.0, quantile=0.9,
                  headroom=0.0, slo=0.005, horizon_min=40)
TT = TraceTime(wall0=0.0, trace0=0.0, speedup=60.0, scale=1.0)  # rate factor 60


def test_the_slice_is_cut_into_the_demos_windows_after_an_hour_of_minute_windows() -> None:
    values = np.arange(200, dtype=float) / 100  # trace req/s, one per minute
    values[130:133] = np.nan  # 3 of window 1's 10 minutes missing: 70 % < 80 %, not a window
    w = slice_windows(values, 120, SHAPE, TT)
    before = [x for x in w if x.end_s <= 0]
    assert len(before) == 60 and before[-1] == ServiceWindow(-1, 0, round(1.19 * 60), 1.19 * 60)
    after = [x for x in w if x.start_s >= 0]
    assert [(x.start_s, x.end_s) for x in after] == [(0, 10), (20, 30), (30, 40)]
    assert math.isclose(after[0].rate, values[120:130].mean() * 60)
    assert after[0].requests == round(after[0].rate * 10)


def test_the_forecaster_reads_the_trace_before_the_slice_and_then_only_landed_window_means() -> None:
    values = np.arange(200, dtype=float)
    w = slice_windows(values, 120, SHAPE, TT)
    seen, end = history_until(values, 120, w, 20.0, TT, SHAPE)  # windows ending by wall 20 s have landed
    assert end == 140
    np.testing.assert_array_equal(seen[:120], values[:120])  # the past as it was, minute by minute
    assert np.allclose(seen[120:130], values[120:130].mean()) and np.allclose(seen[130:140], values[130:140].mean())
    assert np.isnan(seen[140:]).all()  # nothing of what has not landed
    _, end0 = history_until(values, 120, w, 0.0, TT, SHAPE)
    assert end0 == 120


def test_a_forecast_of_the_rise_scales_ahead_of_the_windows_and_the_reactive_policy_waits_for_them() -> None:
    # 15 req/s, rising to 45 from wall 30; capacity 20, startup 20 s, windows land 3 s after they close
    w = [ServiceWindow(10 * k, 10 * (k + 1), (15 if k < 3 else 45) * 10, 15.0 if k < 3 else 45.0) for k in range(6)]
    rise = np.array([[15.0 if m < 30 else 45.0] for m in range(120)])  # one level, per trace minute from 0

    def forecast_at(newest_end: float | None) -> QuantileForecast:
        return QuantileForecast(start_s=0.0, step_s=60.0, levels=(0.9,), values=rise)

    rounds = [float(t) for t in range(60)]
    ahead = simulate_rounds(predictive, rounds, w, TT, predictive_knobs(quantile=0.9, feedback_gain=0.0), 20.0, 20.0,
                            1.0, 2, 3.0, forecast_at)
    late = simulate_rounds(reactive, rounds, w, TT, reactive_knobs(target_utilization=1.0, feedback_gain=0.0), 20.0,
                           20.0, 1.0, 2, 3.0)
    first_up = min(t for t, n in ahead if n >= 3)
    assert first_up <= 10  # ordered a startup before the rise at 30
    assert min(t for t, n in late if n >= 3) >= 43  # the first window of the rise closes at 40, lands at 43
    assert dict(ahead)[59.0] == 3  # 45 / 20 -> 3


def test_weekdays_before_skip_weekends_short_days_and_the_start_of_the_trace() -> None:
    days = 40
    values = np.ones(days * 1440)
    first = (days - 1) * 1440  # the last day
    values[first - 3 * 1440:first - 3 * 1440 + 480] = np.nan  # a Tuesday without data
    # minute 0 is Monday 1995-07-03 00:00 UTC
    series = RateSeries(values=values, start_unix_s=804_729_600.0, second_index=np.arange(days * 1440) * 60,
                        n_seconds=days * 1440 * 60)
    shape = replace(SHAPE, duration_s=480.0)
    got = weekdays_before(series, first, 50, shape)
    weekday = [int(((series.start_unix_s or 0) / 86400 + d // 1440 + 3) % 7) for d in got]
    assert all(w < 5 for w in weekday) and first - 3 * 1440 not in got
    assert min(got) >= 9 * 1440 and got == sorted(got, reverse=True)
    assert weekdays_before(series, first, 2, shape) == got[:2]


def test_scores_compare_policies_at_the_same_safety_and_leave_out_load_beyond_max_replicas() -> None:
    day1 = {"predictive a": (100.0, 0.0), "predictive b": (90.0, 5.0), "hpa 0.8 (the shadow's)": (80.0, 20.0),
            "hpa 0.5": (120.0, 4.0)}
    day2 = {"predictive a": (100.0, 2.0), "predictive b": (90.0, 5.0), "hpa 0.8 (the shadow's)": (80.0, 20.0),
            "hpa 0.5": (120.0, 0.0)}
    s = score([(day1, 0.0), (day2, 0.0)], slo=0.005, duration_s=480.0)
    assert s["predictive a"] == VariantScore(days=2, days_within_slo=2, underprov_pct=round(100 * 2 / 960, 3),
                                             replica_seconds=200, vs_hpa_usual=1.25)
    assert s["hpa 0.5"].days_within_slo == 1
    assert within_slo(s, 0.5) == {"predictive": "predictive a", "hpa": "hpa 0.5"}
    assert within_slo(s, 0.1) == {"predictive": None, "hpa": None}
    # a is safer than every HPA target; b (10 s of 960) is matched by hpa 0.5 (4 s), not by hpa 0.8 (40 s)
    assert hpa_as_safe(s) == {"predictive a": None, "predictive b": "hpa 0.5"}
    # a day with 100 s beyond reach (over max_replicas): every variant is short there, and it is not judged
    day3 = {n: (rs + 500, under + 100) for n, (rs, under) in day1.items()}
    with_peak = score([(day1, 0.0), (day3, 100.0)], slo=0.005, duration_s=480.0)
    assert with_peak["predictive a"].underprov_pct == 0 and with_peak["predictive a"].days_within_slo == 2
    assert with_peak["hpa 0.5"].underprov_pct == round(100 * 8 / (960 - 100), 3)


def test_the_variants_cover_the_demos_preset_the_served_quantiles_and_the_hpa_targets() -> None:
    names = [v.name for v in variants(SHAPE, (0.5, 0.9, 0.99))]
    assert names[0] == "predictive q0.9 +0% (the demo's)"
    assert "predictive q0.9 +0%" not in names and "predictive q0.99 +20%" in names
    other = [v.name for v in variants(replace(SHAPE, quantile=0.99, headroom=0.1), (0.9, 0.99))]
    assert other[0] == "predictive q0.99 +10% (the demo's)" and "predictive q0.99 +10%" not in other
    assert "predictive q0.9 +0%" in other and len(other) == 6 + len(HPA_TARGETS)
    assert not any(n.startswith("predictive q0.5") for n in names)  # below the SLO's reach, not offered
    assert "hpa 0.8 (the shadow's)" in names and "hpa 0.3" in names
    # HPA is Kubernetes' (no feedback), the predictive policy keeps its feedback
    gains = {v.name: v.knobs.feedback_gain for v in variants(SHAPE, (0.9, 0.99))}
    assert all(g == 0 for n, g in gains.items() if n.startswith("hpa")) and gains[names[0]] > 0
