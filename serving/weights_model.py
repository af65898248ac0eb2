"""The deployment that evaluates the weights model, apart from the HTTP ingress.

A deployment of its own so it can be scaled, and later swapped for a learned model, without
touching the API; `@serve.batch` folds concurrent requests into one tensor evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ray import serve

from serving.models.latency_weights import MODEL_NAME, MODEL_VERSION, LatencyWeights
from serving.schemas import ModelStatus


@dataclass(frozen=True)
class Weighed:
    """Weights of one request, with the model that produced them (it may change between calls)."""

    model: str
    version: str
    weights: list[int]


class WeightsModelReplica:
    def __init__(self) -> None:
        # One thread: batches are small and the replica shares a small machine with Ray.
        torch.set_num_threads(1)
        self._model = LatencyWeights().eval()

    def status(self) -> ModelStatus:
        return ModelStatus(kind="weights", model=MODEL_NAME, version=MODEL_VERSION)

    # No wait: one request is already 1,000 rows; batching only folds in what queued meanwhile.
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def weigh(self, requests: list[np.ndarray]) -> list[Weighed]:
        """Weights per request (float32 rows, columns as `latency_weights.FEATURES`), in row order."""
        sizes = [len(features) for features in requests]
        groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        with torch.inference_mode():
            weights = self._model(torch.from_numpy(np.concatenate(requests)), groups)
        return [Weighed(MODEL_NAME, MODEL_VERSION, chunk.tolist()) for chunk in torch.split(weights, sizes)]


# Call form, not a decorator: type checkers then see a Deployment (with `.bind`), not the class.
WeightsModel = serve.deployment(name="WeightsModel")(WeightsModelReplica)
