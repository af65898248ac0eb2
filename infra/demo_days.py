"""Is the demo's one run typical? Its autoscaling replayed offline on the same hours of earlier weekdays.

The live demo plays one 8-hour slice once, and one slice decides little: a single window short is 2 % of
it, and two runs of the same slice differ by several windows. Here the demo's autoscaling is replayed on the
same hours of the weekdays before the slice, and on the slice itself (reported apart, not chosen on):

- each day's forecaster is the demo's (`infra.demo_forecaster.train_before`), trained on the minutes before
  that day only;
- the load is the trace's, in the demo's windows (`streams.window_s` wall seconds, landed
  `allowed_lateness_s` + 1 s after they close), at the demo's speed-up and scale;
- the forecaster reads what the live autoscaler reads: the trace's minutes before the slice, then each
  landed window's mean spread over its minutes;
- a round each `demo.autoscale_interval_s`, the same policies, guardrails, paper pool and `replay_schedule`
  as the demo (`infra.policy_replay`).

Each variant (the predictive policy at each served quantile and headroom, Kubernetes' HPA at each target)
is scored by how many days it met the SLO, its share of under-provisioned seconds, and its
replica-seconds against HPA at its usual target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from pydantic import BaseModel, Field

from infra.core.datasets import NASA_RPS, dataset_path
from infra.core.features_table import ServiceWindow
from infra.core.scaling import (
    Policy,
    QuantileForecast,
    ScalingKnobs,
    hpa_knobs,
    predictive,
    predictive_knobs,
    reactive,
    replay_schedule,
)
from infra.core.settings import PoolServiceSettings, Settings
from infra.demo_forecaster import DAY_MIN, VALIDATION_DAYS, demo_config, demo_horizon_min, minute_at, train_before
from infra.hpa_whatif import HPA_TARGETS
from infra.policy_replay import ForecastAt, simulate_rounds
from infra.trace_time import TraceTime
from training.fit import forecast
from training.forecaster import QuantileForecaster
from training.series import RateSeries, load_trace

HPA_USUAL = hpa_knobs().target_utilization  # HPA's usual target, the shadow's
HEADROOMS = (0.0, 0.1, 0.2)
MIN_SHARE = 0.8  # a window with less of its minutes in the trace is missing: neither seen nor judged
HISTORY_WINDOWS_MIN = 60  # minutes before the slice given as 1-minute windows (the first rounds' observed load)


@dataclass(frozen=True)
class DemoShape:
    """The demo as the replay needs it, in wall seconds and wall req/s (1 trace minute = 60 / speedup s)."""

    duration_s: float
    window_s: float
    landed_after_s: float
    interval_s: float
    capacity_rps: float
    startup_s: float
    initial: int
    min_replicas: int
    max_replicas: int
    speedup: float
    scale: float
    quantile: float
    headroom: float
    slo: float
    horizon_min: int

    @property
    def window_min(self) -> int:
        return max(1, round(self.window_s * self.speedup / 60))

    @property
    def minutes(self) -> int:
        return math.ceil(self.duration_s * self.speedup / 60)


def demo_shape(s: Settings, svc: PoolServiceSettings, horizon_min: int) -> DemoShape:
    return DemoShape(duration_s=s.demo.duration_s, window_s=s.streams.window_s,
                     landed_after_s=s.streams.allowed_lateness_s + 1, interval_s=s.demo.autoscale_interval_s,
                     capacity_rps=svc.capacity_rps, startup_s=svc.startup_delay_s,
                     initial=max(svc.min_replicas, svc.replicas), min_replicas=svc.min_replicas,
                     max_replicas=svc.max_replicas, speedup=s.demo.speedup, scale=s.demo.scale,
                     quantile=s.demo.quantile, headroom=s.demo.headroom,
                     slo=s.demo.predictive_knobs().slo,
                     horizon_min=horizon_min)


@dataclass(frozen=True)
class Variant:
    name: str
    policy: Policy
    knobs: ScalingKnobs


def variants(shape: DemoShape, levels: tuple[float, ...]) -> list[Variant]:
    """The demo's own predictive setting, the predictive policy at each served quantile (0.9 and up) and
    headroom, and Kubernetes' HPA at each target (`hpa_knobs`: no feedback), all with the demo's bounds and
    usual guardrails."""
    bounds = {"min_replicas": shape.min_replicas, "max_replicas": shape.max_replicas}
    out = [Variant(f"predictive q{shape.quantile:g} +{shape.headroom:.0%} (the demo's)", predictive,
                   predictive_knobs(quantile=shape.quantile, headroom=shape.headroom, **bounds))]
    for q in (q for q in levels if q >= 0.9):
        for h in HEADROOMS:
            if (q, h) != (shape.quantile, shape.headroom):
                out.append(Variant(f"predictive q{q:g} +{h:.0%}", predictive,
                                   predictive_knobs(quantile=q, headroom=h, **bounds)))
    out += [Variant(f"hpa {t:g}" + (" (the shadow's)" if t == HPA_USUAL else ""), reactive,
                    hpa_knobs(target_utilization=t, **bounds)) for t in HPA_TARGETS]
    return out


def slice_windows(values: np.ndarray, first: int, shape: DemoShape, tt: TraceTime) -> list[ServiceWindow]:
    """The windows the stream worker would write while the demo replays minutes [first, first + shape.minutes):
    the last `HISTORY_WINDOWS_MIN` minutes before them as 1-minute windows (the history the demo writes),
    then the slice in `window_s` windows from `tt.wall0`; wall req/s."""
    out = []
    minute_s = 60 / shape.speedup
    for m in range(first - HISTORY_WINDOWS_MIN, first):
        if np.isfinite(values[m]):
            start = tt.wall0 - (first - m) * minute_s
            rate = float(values[m]) * tt.rate_factor
            out.append(ServiceWindow(round(start), round(start + minute_s), round(rate * minute_s), rate))
    wm = shape.window_min
    for k in range(math.ceil(shape.minutes / wm)):
        part = values[first + k * wm:first + (k + 1) * wm]
        ok = np.isfinite(part)
        if ok.sum() < MIN_SHARE * wm:
            continue
        rate = float(part[ok].mean()) * tt.rate_factor
        start = tt.wall0 + k * shape.window_s
        out.append(ServiceWindow(round(start), round(start + shape.window_s), round(rate * shape.window_s), rate))
    return out


def history_until(values: np.ndarray, first: int, windows: list[ServiceWindow], newest_end: float,
                  tt: TraceTime, shape: DemoShape) -> tuple[np.ndarray, int]:
    """(the per-minute series the live autoscaler would send, its end minute) once the windows ending by
    `newest_end` (wall) have landed: the trace before the slice, each landed slice window's mean over its
    minutes, nothing after."""
    minute_s = 60 / shape.speedup
    end = first + max(0, round((newest_end - tt.wall0) / minute_s))
    seen = values.copy()
    seen[first:] = np.nan
    for w in windows:
        if w.start_s >= tt.wall0 and w.end_s <= newest_end:
            a = first + round((w.start_s - tt.wall0) / minute_s)
            seen[a:a + round((w.end_s - w.start_s) / minute_s)] = w.rate / tt.rate_factor
    return seen, end


def forecasts_for(module: QuantileForecaster, series: RateSeries, first: int, windows: list[ServiceWindow],
                  tt: TraceTime, shape: DemoShape, levels: tuple[float, ...]) -> ForecastAt:
    """What the forecaster would have answered each round, by the newest landed window (cached: it changes
    once a window)."""
    cache: dict[float, QuantileForecast] = {}
    history_len = module.history_len

    def at(newest_end: float | None) -> QuantileForecast | None:
        key = tt.wall0 if newest_end is None else max(newest_end, tt.wall0)
        if key not in cache:
            values, end = history_until(series.values, first, windows, key, tt, shape)
            with torch.no_grad():
                steps = forecast(module, replace(series, values=values), np.array([end]), history_len)[0]
            cache[key] = QuantileForecast(start_s=float(series.unix_of(np.array(end))), step_s=60.0, levels=levels,
                                          values=np.asarray(steps, dtype=float) * tt.rate_factor)
        return cache[key]

    return at


def run_day(series: RateSeries, first: int, module: QuantileForecaster, levels: tuple[float, ...], shape: DemoShape,
            chosen: list[Variant]) -> tuple[dict[str, tuple[float, float]], float]:
    """(variant name -> (replica-seconds, under-provisioned seconds), seconds beyond reach) of the demo replayed
    on minutes from `first`. Beyond reach, the load is more than `max_replicas` instances serve, or more than
    the first instances serve before any added one could be ready: every variant is short there."""
    tt = TraceTime(wall0=0.0, trace0=float(series.unix_of(np.array(first))), speedup=shape.speedup, scale=shape.scale)
    windows = slice_windows(series.values, first, shape, tt)
    fc = forecasts_for(module, series, first, windows, tt, shape, levels)
    rounds = list(np.arange(0.0, shape.duration_s, shape.interval_s))
    out = {}
    for v in chosen:
        decided = simulate_rounds(v.policy, rounds, windows, tt, v.knobs, shape.capacity_rps, shape.startup_s,
                                  shape.interval_s, shape.initial, shape.landed_after_s,
                                  fc if v.policy is predictive else None)
        out[v.name] = replay_schedule(decided, shape.initial, shape.startup_s, windows, shape.capacity_rps, 0.0,
                                      shape.duration_s)
    # what no policy could cover: the most instances, asked for at the first second
    _, beyond = replay_schedule([(0.0, shape.max_replicas)], shape.initial, shape.startup_s, windows,
                                shape.capacity_rps, 0.0, shape.duration_s)
    return out, beyond


def weekdays_before(series: RateSeries, first: int, days: int, shape: DemoShape) -> list[int]:
    """Up to `days` slices at the same time of day on the weekdays before `first` (nearest first, Monday to
    Friday by the trace's clock), each with enough trace before it to train on and most of its minutes."""
    out: list[int] = []
    k = 1
    while len(out) < days:
        day = first - k * DAY_MIN
        k += 1
        if day < (VALIDATION_DAYS + 2) * DAY_MIN:
            break
        weekday = int((float(series.unix_of(np.array(day))) // 86400 + 3) % 7)  # 1970-01-01 was a Thursday
        part = series.values[day:day + shape.minutes]
        if weekday < 5 and np.isfinite(part).mean() >= MIN_SHARE:
            out.append(day)
    return out


class VariantScore(BaseModel):
    days: int
    days_within_slo: int = Field(description="Days under-provisioned at most `slo` of the seconds judged.")
    underprov_pct: float = Field(description="Under-provisioned share of all the days' seconds judged (the seconds "
                                 "beyond reach are not judged: every variant is short there).")
    replica_seconds: float
    vs_hpa_usual: float | None = Field(None, description="Replica-seconds / HPA's at its usual target (0.8).")


class DemoDays(BaseModel):
    """`foresight demo-days --json`: the demo's autoscaling on the weekdays before its slice, and on the slice."""

    slice_first_minute: int
    startup_s: float = Field(description="Wall seconds an instance took to start in the replay (at the demo's "
                             "speed-up, one wall second is `speedup` trace seconds).")
    days: list[int] = Field(description="First minute of each weekday's slice (series minutes).")
    slo_pct: float = Field(description="The SLO: most under-provisioned share of the seconds judged, in %.")
    scores: dict[str, VariantScore] = Field(description="Over the weekdays before the slice.")
    within_slo: dict[str, str | None] = Field(
        description="Per policy (predictive, hpa), the cheapest variant within the SLO over all the days (None: "
        "none was).")
    hpa_as_safe: dict[str, str | None] = Field(
        description="Per predictive variant, the cheapest HPA target under-provisioned no more over all the days "
        "(None: none was): the comparison at the same safety.")
    demo_slice: dict[str, VariantScore] = Field(description="On the demo's own slice, the same replay.")
    per_day: dict[str, dict[str, tuple[float, float]]] = Field(
        description="Day's first minute -> variant -> (replica-seconds, under-provisioned seconds).")
    beyond_reach_s: dict[str, float] = Field(
        description="Day's first minute -> seconds no policy could cover (not judged): load beyond `max_replicas` "
        "instances, or beyond the first ones before an instance asked for at the start could be ready.")


def score(per_day: list[tuple[dict[str, tuple[float, float]], float]], slo: float,
          duration_s: float) -> dict[str, VariantScore]:
    """Each variant over the days (runs, seconds beyond reach): under-provisioned share of the seconds
    judged, days within `slo`, replica-seconds, against HPA at its usual target."""
    names = list(per_day[0][0]) if per_day else []
    judged = sum(duration_s - beyond for _, beyond in per_day)
    usual = next((n for n in names if n.startswith(f"hpa {HPA_USUAL:g}")), None)
    usual_rs = sum(runs[usual][0] for runs, _ in per_day) if usual else 0.0
    out = {}
    for n in names:
        rs = sum(runs[n][0] for runs, _ in per_day)
        under = sum(max(0.0, runs[n][1] - beyond) for runs, beyond in per_day)
        within = sum(max(0.0, runs[n][1] - beyond) <= slo * (duration_s - beyond) + 1e-9 for runs, beyond in per_day)
        out[n] = VariantScore(days=len(per_day), days_within_slo=within,
                              underprov_pct=round(100 * under / max(1.0, judged), 3), replica_seconds=round(rs),
                              vs_hpa_usual=round(rs / usual_rs, 3) if usual_rs else None)
    return out


def within_slo(scores: dict[str, VariantScore], slo_pct: float) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for family in ("predictive", "hpa"):
        safe = [(v.replica_seconds, n) for n, v in scores.items()
                if n.startswith(family) and v.underprov_pct <= slo_pct + 1e-9]
        out[family] = min(safe)[1] if safe else None
    return out


def hpa_as_safe(scores: dict[str, VariantScore]) -> dict[str, str | None]:
    hpa = [(v.replica_seconds, n, v.underprov_pct) for n, v in scores.items() if n.startswith("hpa")]
    out: dict[str, str | None] = {}
    for n, v in scores.items():
        if n.startswith("predictive"):
            safe = [(rs, h) for rs, h, under in hpa if under <= v.underprov_pct + 1e-9]
            out[n] = min(safe)[1] if safe else None
    return out


def demo_days(series: RateSeries, first: int, days: int, shape: DemoShape,
              tick: Callable[[str], None] | None = None) -> DemoDays:
    """Train each day's forecaster and replay every variant on it; the demo's slice last."""
    chosen_days = weekdays_before(series, first, days, shape)
    if not chosen_days:
        raise ValueError("no weekday before the slice has enough trace before it to train a forecaster on")
    levels = tuple(demo_config(shape.horizon_min).quantiles)
    results: dict[int, tuple[dict[str, tuple[float, float]], float]] = {}
    for day in [*chosen_days, first]:
        fitted = train_before(series, day, shape.horizon_min)
        fitted.module.eval()
        results[day] = run_day(series, day, fitted.module, levels, shape, variants(shape, levels))
        if tick is not None:
            tick(f"minute {day}")
    scores = score([results[d] for d in chosen_days], shape.slo, shape.duration_s)
    return DemoDays(slice_first_minute=first, startup_s=shape.startup_s, days=chosen_days, slo_pct=100 * shape.slo,
                    scores=scores,
                    within_slo=within_slo(scores, 100 * shape.slo), hpa_as_safe=hpa_as_safe(scores),
                    demo_slice=score([results[first]], shape.slo, shape.duration_s),
                    per_day={str(d): {n: (round(rs), under) for n, (rs, under) in runs.items()}
                             for d, (runs, _) in results.items()},
                    beyond_reach_s={str(d): beyond for d, (_, beyond) in results.items()})


def demo_days_for(s: Settings, days: int, tick: Callable[[str], None] | None = None,
                  startup_s: float | None = None) -> DemoDays:
    """`demo_days` for the settings' demo: its service, slice and shape; `startup_s` (wall) in place of the
    service's startup delay, to see the comparison with faster or slower instances (the forecaster's horizon
    follows it)."""
    svc = s.pool.service(s.demo.loop_service)
    if svc is None:
        raise ValueError(f"demo.loop_service {s.demo.loop_service!r} is not in pool.services")
    if startup_s is not None:
        svc = svc.model_copy(update={"startup_delay_s": startup_s})
    series = load_trace(dataset_path(NASA_RPS))
    first = minute_at(series, s.demo.trace_start)
    return demo_days(series, first, days, demo_shape(s, svc, demo_horizon_min(s, svc.startup_delay_s)), tick)
