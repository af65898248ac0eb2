"""The risk deployment: the registry's newest valid `risk` version, or the peer-deviation baseline.

Each request is one service; a learned model reads the health features of its instances
(infra.core.health_features) and names the inputs that drove each score (attributions,
serving.models.health_models); the baseline compares each instance with its peers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ray import serve

from serving.instances_body import COLUMN, Rows, instances_array, raw_values, rows_of, window_check
from serving.models import health_models, peer_risk
from serving.registry_loader import LoadedVersion, RegistryReplica
from serving.schemas import InstanceFeatures, ModelStatus

logger = logging.getLogger(__name__)

RISK_COLUMNS = tuple(name for name, _, _ in peer_risk.SIGNALS)
BASELINE_COLUMNS = [COLUMN[name] for name in RISK_COLUMNS]


@dataclass(frozen=True)
class Scored:
    model: str
    version: str
    risks: list[float]
    reasons: list[list[str]]
    note: str | None = None  # why the baseline answered, or what was assumed
    operating_point: tuple[float, float] | None = None  # (drain_above, sustained_s) from the manifest


def operating_point(loaded: LoadedVersion) -> tuple[float, float] | None:
    """The manifest's drain point (threshold, consecutive windows) as (threshold, seconds): the windows
    are the model's own length, the controller's rounds may be another."""
    op = loaded.manifest.metrics.get("operating_point") if loaded.manifest.metrics else None
    if not op or loaded.manifest.health is None:
        return None
    return float(op["drain_above"]), float(op["drain_after"]) * loaded.manifest.health.window_s


def risk_array(instances: list[InstanceFeatures]) -> np.ndarray:
    """One row per instance, columns as in `peer_risk.SIGNALS` (float32, shape [n, signals])."""
    return instances_array(instances, RISK_COLUMNS)


class RiskModelReplica(RegistryReplica):
    kind = "risk"

    def __init__(self, registry_root: Path, poll_s: float) -> None:
        torch.set_num_threads(1)
        self._start_registry(registry_root, poll_s)

    def status(self) -> ModelStatus:
        loaded = self._loaded()
        if loaded is None or loaded.manifest.health is None:
            return ModelStatus(kind="risk", model=peer_risk.MODEL_NAME, version=peer_risk.MODEL_VERSION,
                               refused=self.refused_models())
        health = loaded.manifest.health
        return ModelStatus(kind="risk", model=loaded.manifest.name, version=loaded.version,
                           loaded_at=loaded.loaded_at, columns=health.columns, horizon_s=health.horizon_s,
                           refused=self.refused_models())

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)  # no wait: requests carry many instances
    async def score(self, requests: list[np.ndarray | Rows]) -> list[Scored]:
        return self.score_batch(requests)

    def score_batch(self, requests: list[np.ndarray | Rows]) -> list[Scored]:
        """Each request is one service (rows: columns as `instances_body.COLUMNS`, with their window
        length), scored on its own."""
        loaded = self._loaded()
        return [self._one(loaded, rows_of(request)) for request in requests]

    def _one(self, loaded: LoadedVersion | None, request: Rows) -> Scored:
        note = None
        if loaded is not None and loaded.manifest.health is not None:
            use, note = window_check(request.window_s, loaded.manifest.health.window_s, "risk", loaded.version)
            if use:
                try:
                    scored = self._learned(loaded, request.features)
                    return Scored(scored.model, scored.version, scored.risks, scored.reasons, note,
                                  operating_point(loaded))
                except Exception:  # a version that passed its smoke check can still fail on some input
                    logger.exception("risk model %s failed on a request; answering from the baseline",
                                     loaded.version)
                    note = f"risk model {loaded.version} failed on this request: answered from the baseline"
        baseline = self._baseline(request.features)
        return Scored(baseline.model, baseline.version, baseline.risks, baseline.reasons, note)

    @staticmethod
    def _learned(loaded: LoadedVersion, rows: np.ndarray) -> Scored:
        assert loaded.manifest.health is not None
        risks, reasons = health_models.risk_answer(loaded.module, raw_values(rows),
                                                   loaded.manifest.health.columns)
        return Scored(loaded.manifest.name, loaded.version, risks, reasons)

    @staticmethod
    def _baseline(rows: np.ndarray) -> Scored:
        with torch.inference_mode():
            features = torch.from_numpy(np.ascontiguousarray(rows[:, BASELINE_COLUMNS]))
            z = peer_risk.deviation_z(features)
            return Scored(peer_risk.MODEL_NAME, peer_risk.MODEL_VERSION, peer_risk.risk_scores(z).tolist(),
                          peer_risk.reasons(features, z))


RiskModel = serve.deployment(name="RiskModel")(RiskModelReplica)
