"""What-if replay: recorded demand from ClickHouse through the simulator with any policy, beside what
the controller actually did over the same range (its recorded scaler decisions).

Both run through the same simulator (`training.autoscale.simulate`): the chosen policy through the
shared guardrails, the recorded decisions as a schedule (the count set nearest each minute's start,
with the same startup delay), so replica-seconds and under-provisioned minutes compare like for like.
A predictive replay forecasts each minute with a registered forecast model from the demand history
before it, as the live controller would have been answered.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from clickhouse_driver import Client
from pydantic import BaseModel, ConfigDict, Field

from infra.core.decisions_table import ScaleDecision, read_scale_decisions
from infra.core.features_table import read_minute_requests
from infra.core.model_registry import MODEL_FILE, list_versions, read_manifest
from infra.core.scaling import PolicyResult, ScalingContext, ScalingKnobs, policy_by_name
from training.autoscale import STEP_S, Forecasts, ScalingSpec, SimResult, simulate
from training.fit import forecast
from training.series import RateSeries

Tick = Callable[[int], None]


class WhatIfConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str
    start_s: int = Field(description="Range start, epoch seconds (rounded down to the minute).")
    end_s: int = Field(description="Range end, epoch seconds, exclusive.")
    policy: str = Field(description="predictive | hpa (reactive) | static:N")
    spec: ScalingSpec
    knobs: ScalingKnobs


class RunResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    replica_seconds: float
    underprov_minutes: int
    underprov_pct: float
    actions: int
    minutes: int


class WhatIfResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str
    start_s: int
    end_s: int
    minutes_with_data: int
    policy: RunResult
    recorded: RunResult | None = Field(description="What the controller did; None without scaler decisions.")
    recorded_decisions: int
    replica_seconds_vs_recorded: float | None
    forecast_model: str | None = Field(description="`forecast@version` that forecast a predictive replay.")
    notes: list[str] = Field(default_factory=list)


def demand_grid(rows: list[tuple[int, int]], start_s: int, n: int) -> np.ndarray:
    """req/s per minute of [start_s, start_s + n minutes) from (minute, requests) rows; NaN where no window."""
    values = np.full(n, np.nan)
    for minute, requests in rows:
        i = (minute - start_s) // STEP_S
        if 0 <= i < n:
            values[i] = requests / STEP_S
    return values


def recorded_schedule(decisions: list[ScaleDecision], start_s: int, n: int) -> np.ndarray:
    """Replicas the controller had set at each minute (the last decision before the minute's middle), -1 before
    its first decision."""
    out = np.full(n, -1, dtype=np.int64)
    if not decisions:
        return out
    times = np.array([d.ts_ms / 1000.0 for d in decisions])
    counts = np.array([round(d.after) for d in decisions])
    mids = start_s + STEP_S * np.arange(n) + STEP_S / 2
    idx = np.searchsorted(times, mids, side="right") - 1
    out[idx >= 0] = counts[idx[idx >= 0]]
    first = decisions[0]
    if first.ts_ms / 1000.0 >= start_s and first.before is not None:  # the count it found is the count before it
        out[idx < 0] = round(first.before)
    return out


def schedule_policy(schedule: np.ndarray) -> Callable[[ScalingContext], PolicyResult]:
    """The recorded counts as a policy (the simulator's clock counts minutes of the range from 0)."""

    def policy(ctx: ScalingContext) -> PolicyResult:
        want = int(schedule[int(ctx.now_s // STEP_S)])
        return PolicyResult(ctx.current if want < 0 else want, "recorded", ctx.state)

    return policy


def newest_forecast_model(models_root: Path) -> Path | None:
    versions = list_versions(models_root, "forecast")
    return models_root / "forecast" / versions[-1] if versions else None


def model_forecasts(version_dir: Path, values: np.ndarray, grid_start_s: int, first: int,
                    tick: Tick | None = None, chunk: int = 1440) -> tuple[Forecasts, str]:
    """Forecasts made at the start of each minute from `first` on, from the history before it."""
    manifest = read_manifest(version_dir)
    if manifest.forecast is None:
        raise ValueError(f"{version_dir} is not a forecast model")
    module = torch.jit.load(str(version_dir / MODEL_FILE))
    series = RateSeries(values=values, start_unix_s=float(grid_start_s),
                        second_index=np.arange(len(values)) * STEP_S, n_seconds=len(values) * STEP_S)
    origins = np.arange(first, len(values))
    parts = []
    for i in range(0, len(origins), chunk):
        parts.append(forecast(module, series, origins[i: i + chunk], manifest.forecast.history_len))
        if tick is not None:
            tick(min(chunk, len(origins) - i))
    out = np.concatenate(parts) if parts else np.zeros((0, manifest.forecast.horizon, len(manifest.forecast.quantiles)))
    return Forecasts(values=out, levels=tuple(manifest.forecast.quantiles)), f"forecast@{manifest.version}"


def _each_minute(tick: Tick | None) -> Callable[[int], None] | None:
    if tick is None:
        return None
    bar = tick
    return lambda _minute: bar(1)


def _run(name: str, res: SimResult) -> RunResult:
    under = round(res.underprov_pct * res.minutes / 100.0)
    return RunResult(name=name, replica_seconds=res.replica_seconds, underprov_minutes=under,
                     underprov_pct=res.underprov_pct, actions=res.actions, minutes=res.minutes)


def whatif(client: Client, database: str, cfg: WhatIfConfig, models_root: Path,
           progress: Callable[[str, int], Tick] | None = None) -> WhatIfResult:
    """Replay `cfg.service`'s demand of [start_s, end_s) with `cfg.policy` and with the recorded decisions.

    `progress(label, total)` returns a tick(n) callback (a progress bar) for the long steps."""
    start = cfg.start_s - cfg.start_s % STEP_S
    n = math.ceil((cfg.end_s - start) / STEP_S)
    if n <= 0:
        raise ValueError(f"empty range: --from must be before --to ({cfg.start_s} >= {cfg.end_s})")
    policy = policy_by_name(cfg.policy)
    notes: list[str] = []
    fcs: Forecasts | None = None
    model_name: str | None = None
    history = 0
    version_dir = None
    if cfg.policy == "predictive":
        version_dir = newest_forecast_model(models_root)
        if version_dir is None:
            raise ValueError(f"no forecast model registered under {models_root}: train one with `foresight train` "
                             "or replay with --policy hpa / static:N")
        spec = read_manifest(version_dir).forecast
        history = spec.history_len if spec is not None else 0
        if spec is not None and cfg.knobs.quantile not in spec.quantiles:
            raise ValueError(f"the model forecasts quantiles {spec.quantiles}, not {cfg.knobs.quantile}: "
                             "pass --quantile with one of them")
    grid_start = start - history * STEP_S
    rows = read_minute_requests(client, database, cfg.service, grid_start, start + n * STEP_S)
    values = demand_grid(rows, grid_start, history + n)
    demand = values[history:]
    if not np.isfinite(demand).any():
        raise ValueError(f"no feature windows of service {cfg.service!r} between {start} and {cfg.end_s}: "
                         "check the service name and the range (UTC)")
    if version_dir is not None:
        tick = progress("forecasting", n) if progress else None
        fcs, model_name = model_forecasts(version_dir, values, grid_start, history, tick)
    tick = progress(f"replaying {cfg.policy}", n) if progress else None
    res = simulate(demand, policy, cfg.knobs, cfg.spec, fcs, on_minute=_each_minute(tick))
    decisions = read_scale_decisions(client, database, cfg.service, start, start + n * STEP_S)
    recorded = None
    if decisions:
        schedule = recorded_schedule(decisions, start, n)
        initial = int(schedule[0]) if schedule[0] >= 0 else None
        if initial is None:
            notes.append("no decision at or before the range start: the recorded run starts where the policy's does")
        tick = progress("replaying the recorded decisions", n) if progress else None
        rec = simulate(demand, schedule_policy(schedule), ScalingKnobs(min_replicas=0), cfg.spec,
                       initial=initial, on_minute=_each_minute(tick))
        recorded = _run("recorded", rec)
    else:
        notes.append(f"no scaler decisions of {cfg.service!r} recorded in ClickHouse `decisions` for this range")
    ratio = (round(res.replica_seconds / recorded.replica_seconds, 3)
             if recorded is not None and recorded.replica_seconds else None)
    return WhatIfResult(service=cfg.service, start_s=start, end_s=start + n * STEP_S,
                        minutes_with_data=int(np.isfinite(demand).sum()), policy=_run(cfg.policy, res),
                        recorded=recorded, recorded_decisions=len(decisions), replica_seconds_vs_recorded=ratio,
                        forecast_model=model_name, notes=notes)
