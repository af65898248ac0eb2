"""Backtest: train on the past, judge forecasts and autoscaling policies on the test range.

Everything tunable (the forecaster's epoch, EWMA's factor, each policy's knob) is chosen on the
training or validation range; the test range is only ever scored.

By default (`refit`) the forecaster judged on the test range is then retrained on train + validation
(everything before the test range) with the same configuration, seed and the epoch count validation
chose, so it has seen the most recent regime. Only the validation-phase model ever predicts the
validation range (to tune the predictive headroom); the refit model only predicts the test range.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from infra.core.scaling import FEEDBACK_GAIN, ScalingKnobs, predictive, predictive_knobs, reactive, reactive_knobs
from training import baselines
from training.autoscale import Forecasts, ScalingSpec, Trace, oracle, simulate, tune
from training.fit import OnEpoch, TrainConfig, TrainResult, forecast, script, targets, train
from training.metrics import (
    allocation_floor,
    centred_conditions,
    centred_mean,
    floor_table,
    horizon_table,
    mase_scale,
    past_conditions,
)
from training.progress import sim_bar
from training.series import STEP_S, RateSeries
from training.splits import Splits

Say = Callable[[str], None]


def _grid(lo: float, hi: float, step: float) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in np.arange(lo, hi + step / 2, step))


class BacktestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: float = Field(1.0, gt=0, description="Multiplies the trace's rate for the autoscaling runs.")
    spec: ScalingSpec
    slo_pct: float = Field(0.5, ge=0, description="Most under-provisioned minutes (%) a tuned policy may have.")
    horizons: tuple[int, ...] = (1, 5, 15, 30)
    train: TrainConfig = Field(default_factory=TrainConfig)
    predictive_quantile: float = Field(0.99, description="Forecast quantile the predictive policy scales for.")
    hpa_targets: tuple[float, ...] = _grid(0.2, 1.0, 0.02)
    headrooms: tuple[float, ...] = _grid(-0.4, 1.0, 0.02)
    ma_window: int = Field(10, gt=0)
    floor_half_window: int = Field(5, gt=0, description="Minutes each side of the two-sided moving average "
                                                        "reported as a reference (it sees the future).")
    feedback_gain: float = Field(FEEDBACK_GAIN, ge=0, description="Online headroom feedback of both policies "
                                 "(infra.core.scaling): correction += gain x (miss - SLO) each minute; 0: off.")
    refit: bool = Field(True, description="Retrain the forecaster on train + validation, for the epoch count "
                                          "validation chose, before scoring it on the test range.")
    breakdown: bool = Field(True, description="Also split predictive's replica-seconds above the oracle's into "
                                              "burst noise, forecaster, startup lead and scale-down guardrails "
                                              "(two more tuned variants of the policy).")


# The predictive preset's scale-down guardrails, turned off for the breakdown's counterfactual variants.
NO_SCALE_DOWN_GUARDRAILS: dict[str, Any] = dict(scale_down_stabilization_s=0.0, scale_down_pods=None,
                                                scale_down_percent=None)


@dataclass
class Backtest:
    """What a backtest found, plus the arrays the plots draw."""

    result: dict[str, Any]
    trained: TrainResult  # the model scored on the test range (the refit one when there is one)
    scripted: torch.jit.ScriptModule
    test_origins: np.ndarray
    test_forecast: np.ndarray
    replicas: dict[str, list[int]]
    demand: np.ndarray


def forecast_table(series: RateSeries, splits: Splits, cfg: BacktestConfig, module: torch.nn.Module, history: int,
                   say: Say) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Per-horizon metrics of the model and the baselines on the test range."""
    y, h, qs = series.values, cfg.train.horizon, cfg.train.quantiles
    origins = np.arange(splits.test_start, splits.end - h + 1)
    if len(origins) == 0:
        raise ValueError("the test range is shorter than the forecast horizon")
    fit_origins = np.arange(max(1440, 1), splits.val_start - h + 1)
    say("forecasting the test range: model")
    model_fc = forecast(module, series, origins, history)

    def calibrated(make: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        offsets = baselines.residual_quantiles(y, make(fit_origins), fit_origins, qs)
        return baselines.with_quantiles(make(origins), offsets, qs)

    say("baselines: seasonal naive, moving average, EWMA")
    alpha = baselines.tune_ewma(y, splits.train)
    fc = {
        "model": model_fc,
        "seasonal_naive": calibrated(lambda o: baselines.seasonal_naive(y, o, h)),
        "ewma": calibrated(lambda o: baselines.ewma(y, o, h, alpha)),
    }
    say("baselines: Holt-Winters (statsmodels fit)")
    hw = baselines.HoltWinters(y, splits.train)
    hw_fit = fit_origins[fit_origins >= hw.start + 1]
    hw_offsets = baselines.residual_quantiles(y, hw.forecast(hw_fit, h), hw_fit, qs)
    fc["holt_winters"] = baselines.with_quantiles(hw.forecast(origins, h), hw_offsets, qs)
    fc[f"moving_average_{cfg.ma_window}"] = calibrated(lambda o: baselines.moving_average(y, o, h, cfg.ma_window))
    actual = targets(y, origins, h).astype(np.float64)
    table = horizon_table(actual, fc, qs, mase_scale(y[: splits.val_start]), cfg.horizons)
    minutes = origins[:, None] + np.arange(h)[None, :]
    floor = floor_table(actual, fc["seasonal_naive"][:, :, qs.index(0.5)],
                        centred_mean(y, cfg.floor_half_window)[minutes], STEP_S, cfg.horizons)
    params = {"ewma_alpha": alpha, "holt_winters": {"alpha": hw.alpha, "beta": hw.beta, "gamma": hw.gamma,
                                                    "phi": hw.phi}}
    return {"table": table, "floor": floor, "params": params}, origins, model_fc


def _forecasts(module: torch.nn.Module, series: RateSeries, lo: int, hi: int, history: int,
               levels: tuple[float, ...], scale: float) -> Forecasts:
    """Every forecast quantile of demand, made at the start of each minute of [lo, hi)."""
    return Forecasts(values=forecast(module, series, np.arange(lo, hi), history) * scale, levels=levels)


def _periods(series: RateSeries, lo: int, hi: int, days: int) -> list[tuple[str, int, int]]:
    """Consecutive `days`-long stretches of [lo, hi) from its start, as (label, first minute, end minute)
    relative to lo; labelled by their UTC start when the series has a clock."""
    step = days * 1440
    out = []
    for a in range(0, hi - lo, step):
        unix = float(series.unix_of(np.array([lo + a]))[0])
        label = time.strftime("%Y-%m-%d %H:%M", time.gmtime(unix)) if np.isfinite(unix) else f"day {a // 1440}"
        out.append((label, a, min(a + step, hi - lo)))
    return out


def _period_rows(traces: dict[str, Trace], demand: np.ndarray, periods: list[tuple[str, int, int]]) -> list[dict]:
    """Per period: each policy's under-provisioned % and replica-seconds, and the ratios the targets use."""
    rows = []
    billed = np.isfinite(demand)
    for label, a, b in periods:
        row: dict[str, Any] = {"from": label, "minutes": int(billed[a:b].sum())}
        for name, tr in traces.items():
            ready = np.asarray(tr.ready[a:b])
            started = np.asarray([d.desired for d in tr.decisions[a:b]])
            mask = billed[a:b]
            under = np.asarray(tr.underprov[a:b])[mask]
            row[name] = {"underprov_pct": round(100.0 * float(under.mean()), 3) if len(under) else None,
                         "replica_seconds": float(np.maximum(started, ready)[mask].sum() * STEP_S)}
        for a_name, b_name in (("predictive", "hpa"), ("predictive", "oracle"), ("hpa", "oracle")):
            den = row[b_name]["replica_seconds"]
            row[f"{a_name}_vs_{b_name}"] = round(row[a_name]["replica_seconds"] / den, 3) if den else None
        rows.append(row)
    return rows


def _spread(rows: list[dict], key: str) -> dict[str, float] | None:
    vals = [r[key] for r in rows if r.get(key) is not None and r["minutes"] >= 720]
    if not vals:
        return None
    return {"min": round(min(vals), 3), "median": round(float(np.median(vals)), 3), "max": round(max(vals), 3)}


def breakdown(cfg: BacktestConfig, pred: Callable[[float], ScalingKnobs], predictive_rs: float, oracle_rs: float,
              val: tuple[np.ndarray, Forecasts], test: tuple[np.ndarray, Forecasts],
              tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Where predictive's replica-seconds above the oracle's go on the test range, in oracle units.

    Counterfactual variants of the predictive policy, each with its headroom tuned on validation and its
    online feedback on, like the policy itself (so each lands near the SLO): without the scale-down
    guardrails (stabilization and step limit), then also with startup 0 (it provisions for the
    forecast of the minute itself and bills no starting replica). The steps between them are the
    guardrails' and the startup lead's costs. The rest is split by `allocation_floor`: what a policy
    knowing what a forecaster can know of each minute (the minute before, the level of the 10 before)
    and, in-sample, the spread around it would still need (`burst_noise`, bursts only the oracle
    sees), and what the forecaster costs above that (`forecaster`). `allocation_floor_centred` is the
    same knowing the minutes on both sides, the future included.
    `integer_rounding` is the share of each that is whole replicas (ceil) rather than the fraction."""
    spec, slo = cfg.spec, cfg.slo_pct
    (val_d, val_fc), (test_d, test_fc) = val, test

    def free(headroom: float) -> ScalingKnobs:
        return pred(headroom).model_copy(update=NO_SCALE_DOWN_GUARDRAILS)

    at_once = spec.model_copy(update={"startup_s": 0.0})
    h_free, _ = tune(free, predictive, cfg.headrooms, val_d, spec, slo, val_fc, on_run=tick)
    h_now, _ = tune(free, predictive, cfg.headrooms, val_d, at_once, slo, val_fc, on_run=tick)
    r_free = simulate(test_d, predictive, free(h_free), spec, test_fc)
    trace = Trace()
    r_now = simulate(test_d, predictive, free(h_now), at_once, test_fc, trace)
    billed = np.isfinite(test_d)
    correction = np.array([d.state.correction for d in trace.decisions])
    asked = test_fc.values[:, 0, test_fc.levels.index(cfg.predictive_quantile)] * (1.0 + h_now + correction)
    fraction_now = float(np.sum(asked[billed] / spec.capacity)) * STEP_S
    fraction_oracle = float(np.sum(test_d[billed] / spec.capacity)) * STEP_S
    floor = allocation_floor(test_d, spec.capacity, slo, past_conditions(test_d))
    centred = allocation_floor(test_d, spec.capacity, slo, centred_conditions(test_d, cfg.floor_half_window))
    o = oracle_rs or 1.0
    now_x, free_x = r_now.replica_seconds / o, r_free.replica_seconds / o
    return {
        "oracle": 1.0,
        "burst_noise": None if floor is None else round(floor - 1.0, 3),
        "forecaster": round(now_x - (1.0 if floor is None else floor), 3),
        "startup_lead": round(free_x - now_x, 3),
        "scale_down_guardrails": round(predictive_rs / o - free_x, 3),
        "total": round(predictive_rs / o, 3),
        "allocation_floor": floor,
        "allocation_floor_centred": centred,
        "integer_rounding": {"oracle": round(1.0 - fraction_oracle / o, 3),
                             "startup_0": round((r_now.replica_seconds - fraction_now) / o, 3)},
        "variants": {
            "no_scale_down_guardrails": {"headroom": h_free, "underprov_pct": r_free.underprov_pct,
                                         "vs_oracle": round(free_x, 3)},
            "startup_0": {"headroom": h_now, "underprov_pct": r_now.underprov_pct, "vs_oracle": round(now_x, 3)},
        },
    }


def autoscale_table(series: RateSeries, splits: Splits, cfg: BacktestConfig, module: torch.nn.Module, history: int,
                    say: Say, test_module: torch.nn.Module | None = None,
                    ) -> tuple[dict[str, Any], dict[str, list[int]], np.ndarray]:
    """Tune each policy's knob on the validation range, judge it on the test range.

    Both policies run through `infra.core.scaling.decide`, the code the live autoscaler runs,
    with the same online feedback correction of the headroom (`cfg.feedback_gain`).

    `module` must not have been trained on the validation range: it makes the forecasts the
    headroom is tuned on. A model refit on train + validation would forecast validation minutes it
    was fitted to, look better calibrated there than it is on unseen minutes, and the tuned
    headroom would come out too small. So the headroom is tuned with the validation-phase model
    and then applied, unchanged, to `test_module` (the refit model; default: `module`) on the
    test range, where both models forecast unseen minutes."""
    spec, slo = cfg.spec, cfg.slo_pct
    demand = series.values * cfg.scale
    val_d, test_d = demand[slice(*splits.val)], demand[slice(*splits.test)]
    levels = tuple(cfg.train.quantiles)
    val_fc = _forecasts(module, series, *splits.val, history, levels, cfg.scale)
    test_fc = _forecasts(module if test_module is None else test_module, series, *splits.test, history, levels,
                         cfg.scale)
    feedback = {"slo": slo / 100.0, "feedback_gain": cfg.feedback_gain}

    def hpa(target: float) -> ScalingKnobs:
        return reactive_knobs(target, **feedback)

    def pred(headroom: float) -> ScalingKnobs:
        return predictive_knobs(headroom, cfg.predictive_quantile, **feedback)

    with sim_bar(len(cfg.hpa_targets) + len(cfg.headrooms)) as tick:
        say("tuning HPA's target utilization on the validation range")
        hpa_knob, hpa_val = tune(hpa, reactive, cfg.hpa_targets, val_d, spec, slo, on_run=tick)
        say("tuning the predictive headroom on the validation range")
        pred_knob, pred_val = tune(pred, predictive, cfg.headrooms, val_d, spec, slo, val_fc, on_run=tick)
    say("judging the policies on the test range")
    traces = {"predictive": Trace(), "hpa": Trace(), "oracle": Trace()}
    results = {
        "predictive": (simulate(test_d, predictive, pred(pred_knob), spec, test_fc, traces["predictive"]),
                       "headroom", pred_knob, pred_val),
        "hpa": (simulate(test_d, reactive, hpa(hpa_knob), spec, None, traces["hpa"]), "target_utilization",
                hpa_knob, hpa_val),
        "oracle": (oracle(test_d, spec, traces["oracle"]), None, None, None),
    }
    out: dict[str, Any] = {}
    for name, (res, knob, value, val_result) in results.items():
        row = res.model_dump(exclude={"knob", "knob_value"})
        if knob is not None:
            row.update({"knob": knob, "knob_value": value})
        if val_result is not None:
            row["val_underprov_pct"] = val_result.underprov_pct
            row["val_replica_seconds"] = val_result.replica_seconds
            row["slo_gap_points"] = round(res.underprov_pct - slo, 3)
            row["final_correction"] = round(traces[name].decisions[-1].state.correction, 4) if len(test_d) else None
        out[name] = row
    oracle_rs = out["oracle"]["replica_seconds"]
    for row in out.values():
        row["vs_oracle"] = round(row["replica_seconds"] / oracle_rs, 3) if oracle_rs else None
    days = _period_rows(traces, test_d, _periods(series, *splits.test, 1))
    weeks = _period_rows(traces, test_d, _periods(series, *splits.test, 7))
    out["per_day"] = days
    out["per_week"] = weeks
    out["per_day_spread"] = {key: _spread(days, key) for key in ("predictive_vs_hpa", "predictive_vs_oracle")}
    if cfg.breakdown:
        say("breakdown: two counterfactual variants of the predictive policy, tuned on the validation range")
        with sim_bar(2 * len(cfg.headrooms)) as tick:
            out["breakdown"] = breakdown(cfg, pred, out["predictive"]["replica_seconds"], oracle_rs,
                                         (val_d, val_fc), (test_d, test_fc), tick)
    replicas = {name: tr.ready for name, tr in traces.items()}
    return out, replicas, test_d


def _ratio(rows: dict[str, Any], a: str, b: str, key: str) -> float | None:
    if a not in rows or b not in rows or not rows[b][key]:
        return None
    return round(rows[a][key] / rows[b][key], 3)


def run_backtest(series: RateSeries, splits: Splits, cfg: BacktestConfig, say: Say,
                 on_epoch: OnEpoch | None = None) -> Backtest:
    say(f"training on minutes {splits.train}, validating on {splits.val}")
    trained = train(series, splits.train, splits.val, cfg.train, on_epoch)
    say(f"trained in {trained.seconds:.1f}s on {trained.samples} origins ({trained.device}), "
        f"best epoch {trained.best_epoch}")
    val_scripted = script(trained.module)
    history = trained.module.history_len
    final, scripted = trained, val_scripted
    before_test = (0, splits.test_start)
    if cfg.refit:
        say(f"refitting on minutes {before_test} for {trained.best_epoch} epochs")
        final = train(series, before_test, None, cfg.train, on_epoch, stop_after=trained.best_epoch)
        say(f"refit in {final.seconds:.1f}s on {final.samples} origins")
        scripted = script(final.module)
    fc, origins, model_fc = forecast_table(series, splits, cfg, scripted, history, say)
    # Headroom tuned with the validation-phase model, applied with the refit one (see autoscale_table).
    scaling, replicas, demand = autoscale_table(series, splits, cfg, val_scripted, history, say, scripted)
    unix = series.unix_of(np.array([0, splits.val_start, splits.test_start, splits.end]))
    h5 = fc["table"].get("5", {})
    result = {
        "forecast": fc["table"],
        "autoscale": scaling,
        # Not forecasters: how low the error can go on this range (see `training.metrics.floor_table`).
        "reference": fc["floor"],
        "summary": {
            "mase5_model_vs_seasonal_naive": _ratio(h5, "model", "seasonal_naive", "mase"),
            "mase5_model_vs_ewma": _ratio(h5, "model", "ewma", "mase"),
            "mase5_model_vs_holt_winters": _ratio(h5, "model", "holt_winters", "mase"),
            "replica_seconds_predictive_vs_hpa": _ratio(scaling, "predictive", "hpa", "replica_seconds"),
            "replica_seconds_predictive_vs_oracle": _ratio(scaling, "predictive", "oracle", "replica_seconds"),
            "underprov_pct_predictive": scaling["predictive"]["underprov_pct"],
            "underprov_pct_hpa": scaling["hpa"]["underprov_pct"],
            "mase5_poisson_floor_vs_seasonal_naive": fc["floor"].get("5", {}).get("poisson_floor"),
            "mase5_centred_ma_vs_seasonal_naive": fc["floor"].get("5", {}).get("centred_ma"),
        },
        "setup": {
            "scale": cfg.scale, "capacity": cfg.spec.capacity, "startup_s": cfg.spec.startup_s,
            "slo_pct": cfg.slo_pct, "predictive_quantile": cfg.predictive_quantile,
            "feedback_gain": cfg.feedback_gain,
            "minutes": {"train": list(splits.train), "val": list(splits.val), "test": list(splits.test)},
            "unix_s": [None if not np.isfinite(u) else float(u) for u in unix],
            "train_seconds": round(trained.seconds, 1), "best_epoch": trained.best_epoch,
            "baseline_params": fc["params"],
            "refit": cfg.refit,
            "refit_epochs": final.best_epoch if cfg.refit else None,
            "refit_minutes": list(before_test) if cfg.refit else None,
            "refit_samples": final.samples if cfg.refit else None,
            "refit_seconds": round(final.seconds, 1) if cfg.refit else None,
        },
    }
    return Backtest(result=result, trained=final, scripted=scripted, test_origins=origins, test_forecast=model_fc,
                    replicas=replicas, demand=demand)
