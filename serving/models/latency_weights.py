"""Inverse-latency baseline: the weights every learned model has to beat.

It is a torch module, not plain Python, so the baseline runs through the same batched serving
path (tensor in, tensor out) a learned model will use, and swapping one for the other changes
no plumbing.
"""

from __future__ import annotations

import torch
from torch import nn

from infra.core.contracts import HAPROXY_MAX_WEIGHT
from serving.schemas import InstanceFeatures

MODEL_NAME = "inverse-latency"
MODEL_VERSION = "baseline"

# Column order of `features_tensor`; the model indexes by these, so keep them together.
FEATURES = ("latency_p99_ms", "latency_p50_ms", "queue", "error_rate")
P99, P50, QUEUE, ERROR_RATE = range(len(FEATURES))


def features_tensor(instances: list[InstanceFeatures]) -> torch.Tensor:
    """One row per instance, columns as in `FEATURES` (float32, shape [n, 4])."""
    rows = [[float(getattr(instance, name)) for name in FEATURES] for instance in instances]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(FEATURES))


class LatencyWeights(nn.Module):
    """Weight each instance by how soon it would answer one more request.

    Expected wait is p99 plus one median service time per queued request; a p50 of 0 means
    "not measured", so p99 stands in rather than making a queue free. Errors scale the score
    down linearly, so an instance failing everything gets 0 (drained) while any instance that
    still answers keeps at least 1: latency alone must never take an instance out of rotation.
    A p99 of 0 means no request completed in the window (idle, new, or hung): its latency is
    unknown, so it gets the median weight of its measured peers, and does not set the scale (an
    unmeasured "0 ms" would otherwise take 256 and push every measured instance down to 1).
    `floor_ms` keeps sub-millisecond noise from producing huge ratios.
    """

    def __init__(self, floor_ms: float = 1.0, max_weight: int = HAPROXY_MAX_WEIGHT) -> None:
        super().__init__()
        self.floor_ms = floor_ms
        self.max_weight = max_weight

    def forward(self, features: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Integer weights, shape [n]; `groups[i]` names the request row i belongs to.

        Weights are relative within a group only, so many requests can share one batch.
        """
        if groups is None:
            groups = torch.zeros(features.shape[0], dtype=torch.long)
        p99, p50 = features[:, P99], features[:, P50]
        service_ms = torch.where(p50 > 0, p50, p99)
        wait_ms = p99 + features[:, QUEUE] * service_ms + self.floor_ms
        healthy = 1.0 - features[:, ERROR_RATE]
        score = healthy / wait_ms

        measured = p99 > 0
        score = torch.where(measured, score, 0.0)  # an unmeasured 0 ms must not set the scale for the others
        n_groups = int(groups.max().item()) + 1 if groups.numel() else 0
        best = torch.zeros(n_groups, dtype=score.dtype).scatter_reduce(0, groups, score, "amax", include_self=False)
        best_of_row = best[groups]
        relative = torch.where(best_of_row > 0, score / best_of_row.clamp_min(torch.finfo(score.dtype).tiny), 0.0)
        weights = torch.round(relative * self.max_weight).clamp(1, self.max_weight)
        for g in torch.unique(groups[~measured]).tolist():  # rare: instances that completed no request
            peers = weights[(groups == g) & measured]
            typical = peers.median() if peers.numel() else torch.tensor(float(self.max_weight))
            weights = torch.where((groups == g) & ~measured, typical, weights)
        return torch.where(healthy > 0, weights, 0.0).to(torch.int64)
