"""The closed-loop demo's forecaster: the production architecture, trained on the trace before the slice.

A fresh machine has no trained forecaster, and the baseline serving answers with instead (the recent
level) cannot see a morning coming. So the demo trains `training.fit`'s forecaster with the product's
defaults on NASA's minutes up to the replayed slice's first minute only (the last week of them for the
epoch choice), registers it in the stack's model registry and has serving load it: the forecast that
drives the demo has never seen the traffic it is judged on. Trained once per slice: a later run finds
the version by its data fingerprint. It takes about ten seconds on two cores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import httpx
import numpy as np

from infra.core.datasets import NASA_RPS
from infra.core.model_registry import list_versions, read_manifest, registry_root
from infra.core.settings import Settings
from training.fit import TrainConfig, TrainResult, script, train
from training.publish import data_fingerprint, publish
from training.series import RateSeries
from training.train_command import record_in_clickhouse

Say = Callable[[str], None]
DAY_MIN = 1440
VALIDATION_DAYS = 7


def minute_at(series: RateSeries, trace_second: int) -> int:
    """The series minute holding `trace_second` of the per-second trace file."""
    m = int(np.searchsorted(series.second_index, trace_second, side="right")) - 1
    if m < 0:
        raise ValueError(f"trace second {trace_second} is before the trace's first minute")
    return m


def demo_horizon_min(s: Settings, startup_s: float) -> int:
    """Trace minutes the demo's forecasts must reach: a round's forecast starts at the newest whole window (up
    to ~3 windows back) and covers a service's startup (`startup_s`, wall) and a round."""
    reach_s = startup_s + s.demo.autoscale_interval_s + 3 * s.streams.window_s
    return math.ceil(reach_s * s.demo.speedup / 60)


def demo_config(horizon_min: int) -> TrainConfig:
    """The product's defaults (`foresight train`), with a horizon that covers the demo's startup and rounds."""
    return TrainConfig(horizon=horizon_min)


def train_before(series: RateSeries, first_minute: int, horizon_min: int) -> TrainResult:
    """The demo's forecaster for a slice starting at `first_minute`: the product's defaults, trained on the
    minutes before it only, the last `VALIDATION_DAYS` of them for the epoch choice."""
    if first_minute < (VALIDATION_DAYS + 2) * DAY_MIN:
        raise ValueError(f"the slice starts {first_minute} minutes into the trace: too little before it to train on")
    val = (first_minute - VALIDATION_DAYS * DAY_MIN, first_minute)
    return train(series, (0, val[0]), val, demo_config(horizon_min))


def ensure_forecaster(s: Settings, series: RateSeries, first_minute: int, horizon_min: int,
                      say: Say) -> tuple[str, int]:
    """(version, minutes of history it reads) of the forecaster trained on `series` before `first_minute`:
    trained and published unless it is the registry's newest already (serving answers with the newest);
    serving is asked to load it now."""
    cfg = demo_config(horizon_min)
    description = {"trace": NASA_RPS, "until_minute": first_minute, "purpose": "demo"}
    fp = data_fingerprint(series, description)
    root = registry_root(s.state)
    versions = list_versions(root, "forecast")
    newest = read_manifest(root / "forecast" / versions[-1]) if versions else None
    if newest is not None and newest.data_fingerprint == fp and newest.config.get("horizon") == cfg.horizon:
        version, history_len = newest.version, newest.forecast.history_len if newest.forecast else 0
        say(f"forecaster: {version}, trained on the trace before the slice (found in the registry)")
    else:
        t = time.monotonic()
        fitted = train_before(series, first_minute, horizon_min)
        path, manifest = publish(root, script(fitted.module), fitted.module.history_len, cfg, fp,
                                 {"train_loss": fitted.train_loss, "val_loss": fitted.val_loss}, series)
        version, history_len = manifest.version, fitted.module.history_len
        why_not = record_in_clickhouse(s.clickhouse, manifest, path)
        say(f"forecaster: trained {version} on {first_minute - VALIDATION_DAYS * DAY_MIN:,} minutes of the trace "
            f"before the slice ({VALIDATION_DAYS} more days for the epoch choice) in {time.monotonic() - t:.0f} s"
            + (f"; model_versions not written: {why_not}" if why_not else ""))
    _load(s, version)
    return version, history_len


def _load(s: Settings, version: str, timeout_s: float = 60.0) -> None:
    """Ask serving to load the registry's new versions now, until the forecast kind answers with `version`."""
    headers = {"Authorization": f"Bearer {s.serving_token}"} if s.serving_token else {}
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(base_url=s.serving_url, headers=headers, timeout=30) as http:
        while time.monotonic() < deadline:
            try:
                answer = http.post("/v1/models/reload")
                answer.raise_for_status()
                models = {m["kind"]: m["version"] for m in answer.json()["models"]}
                if models.get("forecast") == version:
                    return
                last = f"serving has forecast {models.get('forecast')}; refused: {answer.json().get('refused')}"
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                last = str(exc)
            time.sleep(2)
    raise RuntimeError(f"serving did not load forecast {version} within {timeout_s:.0f} s ({last}); "
                       f"see `foresight models` and {s.state / 'logs'}")
