"""Peer-deviation risk: the baseline `/v1/risk` answers with until a risk model exists.

An instance is at risk when it is worse than the other instances of its service on a signal
where higher is worse (p99 latency, error rate, queue, the resource gauge). Each signal's deviation is a robust
z-score against the service's median, scaled by the MAD (with floors, so identical peers do not
turn a 1 ms difference into an alarm). Risk is `1 - exp(-z_max / SCALE_Z)` over the worst signal,
in [0, 1); reasons name each signal at or above `REASON_Z`. Peers failing together score 0:
this baseline sees outliers, not a service-wide outage.

The resource gauge (the share of a resource that a leak exhausts) is the one signal that moves
before clients notice: latency, errors and queue grow only once the instance is already slow.
Without it a 75 s leak reached risk 0.8 as late as 65 s in, after its first requests had timed
out. Its floor, 0.03 of the resource, puts risk 0.8 (z 9.7) at 0.29 above peers that use none.
"""

from __future__ import annotations

import torch

MODEL_NAME = "peer-deviation"
MODEL_VERSION = "baseline"

# Column order of the risk feature tensor: signal name, absolute floor of its scale, unit.
SIGNALS: tuple[tuple[str, float, str], ...] = (
    ("latency_p99_ms", 5.0, "ms"),
    ("error_rate", 0.02, ""),
    ("queue", 1.0, ""),
    ("resource", 0.03, ""),
)
RELATIVE_FLOOR = 0.1  # scale is at least 10% of the peers' median
MAD_TO_SIGMA = 1.4826
REASON_Z = 3.0
SCALE_Z = 6.0


def deviation_z(features: torch.Tensor) -> torch.Tensor:
    """Robust z-score of each instance on each signal, against its peers: [n, signals], >= 0."""
    n = features.shape[0]
    if n < 2:
        return torch.zeros_like(features)
    median = features.median(dim=0).values
    mad = (features - median).abs().median(dim=0).values
    floors = torch.tensor([floor for _, floor, _ in SIGNALS], dtype=features.dtype)
    scale = torch.maximum(torch.maximum(mad * MAD_TO_SIGMA, median.abs() * RELATIVE_FLOOR), floors)
    return ((features - median) / scale).clamp_min(0.0)


def risk_scores(z: torch.Tensor) -> torch.Tensor:
    """Risk in [0, 1) from the worst signal's z-score, one per instance."""
    worst = z.max(dim=1).values if z.shape[1] else torch.zeros(z.shape[0])
    return 1.0 - torch.exp(-worst / SCALE_Z)


def reasons(features: torch.Tensor, z: torch.Tensor) -> list[list[str]]:
    """Human-readable reasons per instance: each signal at or above REASON_Z, worst first."""
    n = features.shape[0]
    if n < 2:
        return [["no peers to compare with"] for _ in range(n)]
    median = features.median(dim=0).values.tolist()
    out: list[list[str]] = [[] for _ in range(n)]
    rows, cols = torch.nonzero(z >= REASON_Z, as_tuple=True)
    flagged = sorted(zip(rows.tolist(), cols.tolist(), strict=True), key=lambda rc: -float(z[rc[0], rc[1]]))
    for row, col in flagged:
        name, _, unit = SIGNALS[col]
        value = float(features[row, col])
        out[row].append(f"{name} {value:.3g}{unit} vs peers' median {median[col]:.3g}{unit} "
                        f"(z={float(z[row, col]):.1f})")
    return out
