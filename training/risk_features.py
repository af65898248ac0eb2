"""The risk model's inputs, from per-instance feature windows, and its labels from the ground truth.

Inputs per instance window: the window's own values, the same relative to its peers (the other
instances of the service in the same window: a service-wide surge is not one instance failing), and
a short trend (the last TREND_WINDOWS windows) since a leak is a creep, not a level. Training and
evaluation derive them here from the recorded windows; a server scoring live windows must compute the
same columns in the same order (the manifest lists them).

TODO on merge with `latency`: the canonical derivation is `infra/core/health_features.py`; these
columns extend it (the trend ones are the extension) and should move there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RISK_COLUMNS: tuple[str, ...] = (
    "error_rate",           # 5xx / requests
    "log_p50",              # log1p(latency p50 ms)
    "log_p99",
    "log_sessions",         # log1p(HAProxy scur peak)
    "p50_vs_peers",         # log1p(p50) - median over the service's instances in the same window
    "p99_vs_peers",
    "sessions_vs_peers",
    "requests_vs_peers",    # log1p(requests) - the peers' median: a slow or hung instance completes fewer
    "silent",               # 1 when the instance completed nothing while sessions were open
    "p50_trend",            # p50_vs_peers now - its mean over the previous TREND_WINDOWS windows
    "sessions_trend",
    "error_trend",
)
TREND_WINDOWS = 10


def risk_inputs(windows: Any) -> Any:
    """`windows` (a pandas frame of feature rows: service, instance, window_start, requests, status_5xx,
    latency_p50_ms, latency_p99_ms, sessions_max) -> a frame with RISK_COLUMNS added, sorted by
    service, instance, window_start."""
    w = windows.sort_values(["service", "instance", "window_start"]).reset_index(drop=True).copy()
    req = w["requests"].astype(float)
    w["error_rate"] = (w["status_5xx"] / req.clip(lower=1)).astype(float)
    w["log_p50"] = np.log1p(w["latency_p50_ms"].astype(float))
    w["log_p99"] = np.log1p(w["latency_p99_ms"].astype(float))
    w["log_sessions"] = np.log1p(w["sessions_max"].astype(float))
    w["log_requests"] = np.log1p(req)
    peers = w.groupby(["service", "window_start"])
    for col, name in (("log_p50", "p50_vs_peers"), ("log_p99", "p99_vs_peers"),
                      ("log_sessions", "sessions_vs_peers"), ("log_requests", "requests_vs_peers")):
        w[name] = w[col] - peers[col].transform("median")
    w["silent"] = ((req == 0) & (w["sessions_max"] > 0)).astype(float)
    inst = w.groupby(["service", "instance"])
    for col, name in (("p50_vs_peers", "p50_trend"), ("sessions_vs_peers", "sessions_trend"),
                      ("error_rate", "error_trend")):
        before = inst[col].transform(lambda s: s.shift(1).rolling(TREND_WINDOWS, min_periods=1).mean())
        w[name] = (w[col] - before).fillna(0.0)
    return w


def label_windows(w: Any, horizon_s: float) -> Any:
    """Label each window by its end t (when a server could score it): 1 if the instance fails in (t, t+H].
    Windows ending at or after the failure are left out (`keep` = False): the instance has failed, so the
    question "will it fail" no longer applies, and what it looks like then (crashed, hung, erroring) would
    teach the model to detect failures, not predict them, inflating recall with zero lead."""
    end_ms = w["window_end"].astype(float) * 1000
    fail = w["failure_ms"].astype(float)  # NaN: the instance never fails
    w = w.copy()
    w["label"] = ((fail > end_ms) & (fail <= end_ms + horizon_s * 1000)).astype(np.float32)
    w["keep"] = ~(fail <= end_ms)
    return w


def matrix(w: Any) -> np.ndarray:
    return np.nan_to_num(w[list(RISK_COLUMNS)].to_numpy(dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
