"""The deployment that evaluates the weights model, apart from the HTTP ingress.

The registry's newest valid `latency` version answers (weights from predicted capacity and
latency, serving.models.health_models), the inverse-latency baseline while there is none or when
the version fails on a batch. A deployment of its own so it can be scaled and reloaded without
touching the API; `@serve.batch` folds concurrent requests into one tensor evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ray import serve

from infra.core.contracts import HAPROXY_MAX_WEIGHT
from serving.instances_body import COLUMN, Rows, raw_values, rows_of, window_check
from serving.models import health_models
from serving.models.latency_weights import FEATURES, MODEL_NAME, MODEL_VERSION, LatencyWeights
from serving.registry_loader import LoadedVersion, RegistryReplica
from serving.schemas import ModelStatus

logger = logging.getLogger(__name__)

BASELINE_COLUMNS = [COLUMN[name] for name in FEATURES]


@dataclass(frozen=True)
class Weighed:
    """Weights of one request, with the model that produced them (it may change between calls)."""

    model: str
    version: str
    weights: list[int]
    reasons: list[list[str]] | None = None  # per instance, from a learned model
    note: str | None = None  # why the baseline answered, or what was assumed


class WeightsModelReplica(RegistryReplica):
    kind = "latency"

    def __init__(self, registry_root: Path, poll_s: float) -> None:
        # One thread: batches are small and the replica shares a small machine with Ray.
        torch.set_num_threads(1)
        self._model = LatencyWeights().eval()
        self._start_registry(registry_root, poll_s)

    def status(self) -> ModelStatus:
        loaded = self._loaded()
        if loaded is None or loaded.manifest.health is None:
            return ModelStatus(kind="weights", model=MODEL_NAME, version=MODEL_VERSION, refused=self.refused_models())
        return ModelStatus(kind="weights", model=loaded.manifest.name, version=loaded.version,
                           loaded_at=loaded.loaded_at, columns=loaded.manifest.health.columns,
                           refused=self.refused_models())

    # No wait: one request is already 1,000 rows; batching only folds in what queued meanwhile.
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def weigh(self, requests: list[np.ndarray | Rows]) -> list[Weighed]:
        return self.weigh_batch(requests)

    def weigh_batch(self, requests: list[np.ndarray | Rows]) -> list[Weighed]:
        """Weights per request (float32 rows, columns as `instances_body.COLUMNS`, with their window
        length), in row order."""
        loaded = self._loaded()
        if loaded is None or loaded.manifest.health is None:
            return self._baseline([rows_of(r).features for r in requests])
        return [self._one(loaded, rows_of(r)) for r in requests]

    def _one(self, loaded: LoadedVersion, request: Rows) -> Weighed:
        assert loaded.manifest.health is not None
        use, note = window_check(request.window_s, loaded.manifest.health.window_s, "latency", loaded.version)
        if use:
            try:
                weighed = self._learned(loaded, request.features)
                return Weighed(weighed.model, weighed.version, weighed.weights, weighed.reasons, note)
            except Exception:  # a version that passed its smoke check can still fail on some input
                logger.exception("latency model %s failed on a request; answering from the baseline",
                                 loaded.version)
                note = f"latency model {loaded.version} failed on this request: answered from the baseline"
        baseline = self._baseline([request.features])[0]
        return Weighed(baseline.model, baseline.version, baseline.weights, baseline.reasons, note)

    @staticmethod
    def _learned(loaded: LoadedVersion, rows: np.ndarray) -> Weighed:
        assert loaded.manifest.health is not None
        answer = health_models.capacity_weights(loaded.module, raw_values(rows),
                                                loaded.manifest.health.columns, HAPROXY_MAX_WEIGHT)
        return Weighed(loaded.manifest.name, loaded.version, answer.weights, answer.reasons)

    def _baseline(self, requests: list[np.ndarray]) -> list[Weighed]:
        sizes = [len(rows) for rows in requests]
        groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        features = np.ascontiguousarray(np.concatenate(requests)[:, BASELINE_COLUMNS])
        with torch.inference_mode():
            weights = self._model(torch.from_numpy(features), groups)
        return [Weighed(MODEL_NAME, MODEL_VERSION, chunk.tolist()) for chunk in torch.split(weights, sizes)]


# Call form, not a decorator: type checkers then see a Deployment (with `.bind`), not the class.
WeightsModel = serve.deployment(name="WeightsModel")(WeightsModelReplica)
