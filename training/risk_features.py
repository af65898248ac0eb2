"""The risk model's inputs from recorded per-instance windows, and its labels from the ground truth.

Inputs are the canonical health features (infra.core.health_features.derive, which serving computes
on the live windows too), one service's instances of one window at a time, so each instance is
compared with its peers of that same window. No trend over past windows: serving scores the latest
window of each instance alone, and a leak shows in that window already (the backend's resource gauge,
latency and sessions against the peers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from infra.core.health_features import RISK_COLUMNS, derive


def raw_values(w: Any) -> dict[str, np.ndarray]:
    """`derive`'s raw fields from feature rows (a pandas frame of `features` columns)."""
    requests = w["requests"].to_numpy(np.float64)

    def col(name: str) -> np.ndarray:
        return w[name].to_numpy(np.float64) if name in w else np.zeros(len(w))

    return {"requests": requests, "error_rate": col("status_5xx") / np.maximum(requests, 1.0),
            "latency_p50_ms": col("latency_p50_ms"), "latency_p99_ms": col("latency_p99_ms"),
            "sessions": col("sessions_max"), "queue": col("queue_max"), "resource": col("resource_max"),
            "busy": col("busy_max")}


def risk_inputs(windows: Any, columns: Sequence[str] = RISK_COLUMNS) -> tuple[Any, np.ndarray]:
    """(`windows` sorted by service, window_start, instance; float32 [n, len(columns)] in that order)."""
    w = windows.sort_values(["service", "window_start", "instance"]).reset_index(drop=True)
    x = np.zeros((len(w), len(columns)), np.float32)
    for idx in w.groupby(["service", "window_start"], sort=False).indices.values():
        x[idx] = derive(raw_values(w.iloc[idx]), columns=columns)
    return w, x


def label_windows(w: Any, horizon_s: float) -> Any:
    """Label each window by its end t (when a server could score it): 1 if the instance has failed by t or
    fails in (t, t+H]. The risk feeds a drain, and an instance that is failing now (answering errors, hung)
    must be drained as surely as one about to fail: leaving those windows out taught the model that a window
    full of 500s is fine (it never drained an erroring instance on `bench lb`). Prediction is still what is
    judged: `foresight evaluate risk` counts a failure as caught only by an alarm before it, so these windows
    add no recall at zero lead. Every window is kept (`keep`, for callers that filter)."""
    end_ms = w["window_end"].astype(float) * 1000
    fail = w["failure_ms"].astype(float)  # NaN: the instance never fails
    w = w.copy()
    w["label"] = (fail <= end_ms + horizon_s * 1000).astype(np.float32)
    w["keep"] = True
    return w
