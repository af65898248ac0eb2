"""The one feature derivation the health models (kinds `risk` and `latency`) are trained and served on.

Training (ClickHouse `features` rows) and serving (`/v1/risk`, `/v1/weights` bodies) both call
`derive` on one service's latest per-instance windows, so a model never sees columns computed
two ways. Pure numpy, no I/O: the callers read the windows.

Each row is one instance; the columns (`COLUMNS`, stable names, the manifest lists the ones a
model reads, in its order) are:

- its own values: log-scaled latencies, error rate, in-flight (HAProxy sessions), queue, the
  backend's resource gauge and busy share, its requests and its share of the service's requests;
- its peer-relative values: `<signal>_vs_peers` = ln((x + floor) / (m + floor)) where m is the
  median of the *other* instances of the service (0: like its peers; ln 2: twice theirs). The
  floor keeps near-zero peers from turning noise into huge ratios. A lone instance reads 0;
- the load it would receive next (`log_offered`, `offered_vs_current`): at training time the next
  window's request count, at serving time the load the caller expects it to get (default: what
  it got in this window).

Counts (requests, offered) are per window: a model is trained on one window length
(`HealthSpec.window_s`) and must be served windows of that length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# The raw per-instance values `derive` reads (missing ones read 0), as in serving.schemas.InstanceFeatures.
RAW_FIELDS = ("requests", "error_rate", "latency_p50_ms", "latency_p99_ms", "sessions", "queue", "resource", "busy")

# Peer-relative signals with the floor added to both sides of their ratio.
PEER_FLOORS: dict[str, float] = {
    "latency_p50_ms": 1.0, "latency_p99_ms": 1.0, "error_rate": 0.01, "sessions": 1.0, "queue": 1.0,
    "resource": 0.05, "busy": 0.05,
}
PEER_NAMES = {"latency_p50_ms": "p50", "latency_p99_ms": "p99", "error_rate": "error", "sessions": "sessions",
              "queue": "queue", "resource": "resource", "busy": "busy"}

OWN_COLUMNS = ("log_p50_ms", "log_p99_ms", "error_rate", "log_sessions", "log_queue", "resource", "busy",
               "log_requests", "request_share")
PEER_COLUMNS = tuple(f"{PEER_NAMES[s]}_vs_peers" for s in PEER_FLOORS)
LOAD_COLUMNS = ("log_offered", "offered_vs_current")
COLUMNS: tuple[str, ...] = OWN_COLUMNS + PEER_COLUMNS + LOAD_COLUMNS
COLUMN_INDEX = {name: i for i, name in enumerate(COLUMNS)}

# Default inputs of each kind: risk does not depend on the load to come; latency does.
RISK_COLUMNS: tuple[str, ...] = OWN_COLUMNS + PEER_COLUMNS
LATENCY_COLUMNS: tuple[str, ...] = COLUMNS
LATENCY_OUTPUTS = ("p50_ms", "p99_ms")


def _raw(values: Mapping[str, np.ndarray | list[float]], name: str, n: int) -> np.ndarray:
    given = values.get(name)
    if given is None:
        return np.zeros(n, dtype=np.float64)
    x = np.asarray(given, dtype=np.float64).reshape(-1)
    if x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} values, requests has {n}")
    return np.clip(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)


def median_of_others(x: np.ndarray) -> np.ndarray:
    """For each i, the median of x without x[i]; x itself when there is no other value. O(n log n)."""
    n = x.shape[0]
    if n < 2:
        return x.copy()
    order = np.argsort(x, kind="stable")
    s = x[order]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    m = n - 1  # values left once x[i] is removed; their k-th smallest is s[k] below rank, s[k + 1] from it
    lo, hi = (m - 1) // 2, m // 2
    at_lo = s[lo + (lo >= rank)]
    at_hi = s[hi + (hi >= rank)]
    return (at_lo + at_hi) / 2.0


def derive(values: Mapping[str, np.ndarray | list[float]], offered: np.ndarray | list[float] | None = None,
           columns: Sequence[str] = COLUMNS) -> np.ndarray:
    """float32 [n, len(columns)]: one service's instances (`values` keyed by `RAW_FIELDS`), NaN-free.

    `offered`: requests each instance is expected to receive in the next window (default: its
    requests in this one). `columns` picks and orders the output (names from `COLUMNS`).
    """
    if "requests" not in values:
        raise ValueError("values must have `requests` (one per instance)")
    n = np.asarray(values["requests"]).reshape(-1).shape[0]
    raw = {name: _raw(values, name, n) for name in RAW_FIELDS}
    raw["error_rate"] = np.minimum(raw["error_rate"], 1.0)
    requests = raw["requests"]
    load = requests if offered is None else _raw({"offered": offered}, "offered", n)
    total = requests.sum()
    share = requests / total if total > 0 else np.full(n, 1.0 / max(n, 1))
    out = {
        "log_p50_ms": np.log1p(raw["latency_p50_ms"]),
        "log_p99_ms": np.log1p(raw["latency_p99_ms"]),
        "error_rate": raw["error_rate"],
        "log_sessions": np.log1p(raw["sessions"]),
        "log_queue": np.log1p(raw["queue"]),
        "resource": raw["resource"],
        "busy": raw["busy"],
        "log_requests": np.log1p(requests),
        "request_share": share,
        "log_offered": np.log1p(load),
        "offered_vs_current": np.log1p(load) - np.log1p(requests),
    }
    for signal, floor in PEER_FLOORS.items():
        x = raw[signal]
        out[f"{PEER_NAMES[signal]}_vs_peers"] = np.log((x + floor) / (median_of_others(x) + floor))
    try:
        matrix = np.stack([out[name] for name in columns], axis=1) if columns else np.zeros((n, 0))
    except KeyError as exc:
        raise ValueError(f"unknown health feature column {exc.args[0]!r}; known: {', '.join(COLUMNS)}") from None
    return matrix.astype(np.float32).reshape(n, len(columns))


def unknown_columns(columns: Sequence[str]) -> list[str]:
    """Names in `columns` that `derive` does not produce (a manifest from a newer feature set)."""
    return [c for c in columns if c not in COLUMN_INDEX]
