"""The deployment that evaluates the weights model, apart from the HTTP ingress.

A deployment of its own so it can be scaled, and later swapped for a learned model, without
touching the API; `@serve.batch` folds concurrent requests into one tensor evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel
from ray import serve

from serving.models.latency_weights import MODEL_NAME, MODEL_VERSION, LatencyWeights, features_tensor
from serving.schemas import InstanceFeatures


class ModelInfo(BaseModel):
    kind: Literal["weights"] = "weights"
    model: str
    version: str


@dataclass(frozen=True)
class Weighed:
    """Weights of one request, with the model that produced them (it may change between calls)."""

    model: ModelInfo
    weights: list[int]


class WeightsModelReplica:
    def __init__(self) -> None:
        # One thread: batches are tiny and the replica shares a small machine with Ray.
        torch.set_num_threads(1)
        self._model = LatencyWeights().eval()
        self._info = ModelInfo(model=MODEL_NAME, version=MODEL_VERSION)

    def info(self) -> ModelInfo:
        return self._info

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def weigh(self, requests: list[list[InstanceFeatures]]) -> list[Weighed]:
        """Weights per request, each in the order of the instances it was given."""
        sizes = [len(instances) for instances in requests]
        features = torch.cat([features_tensor(instances) for instances in requests])
        groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        with torch.inference_mode():
            weights = self._model(features, groups)
        return [Weighed(self._info, chunk.tolist()) for chunk in torch.split(weights, sizes)]


# Call form, not a decorator: type checkers then see a Deployment (with `.bind`), not the class.
# max_ongoing_requests is above max_batch_size, or batches could never fill. Requests take
# milliseconds, so stopping need not wait Serve's default 2s poll / 20s drain.
# Shared by every deployment of the app: half a CPU each on the 2-core default head.
DEPLOYMENT_OPTIONS: dict[str, object] = {
    "ray_actor_options": {"num_cpus": 0.5},
    "max_ongoing_requests": 256,
    "graceful_shutdown_wait_loop_s": 0.5,
    "graceful_shutdown_timeout_s": 5.0,
}
WeightsModel = serve.deployment(name="WeightsModel", **DEPLOYMENT_OPTIONS)(WeightsModelReplica)  # type: ignore[arg-type]
