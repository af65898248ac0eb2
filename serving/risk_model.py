"""The risk deployment: peer-deviation baseline until a risk model is registered.

There is no registry contract for risk modules yet (infra.core.model_registry defines forecast's only),
so this deployment answers from the baseline and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ray import serve

from serving.instances_body import instances_array
from serving.models import peer_risk
from serving.schemas import InstanceFeatures, ModelStatus

RISK_COLUMNS = tuple(name for name, _, _ in peer_risk.SIGNALS)


@dataclass(frozen=True)
class Scored:
    model: str
    version: str
    risks: list[float]
    reasons: list[list[str]]


def risk_array(instances: list[InstanceFeatures]) -> np.ndarray:
    """One row per instance, columns as in `peer_risk.SIGNALS` (float32, shape [n, signals])."""
    return instances_array(instances, RISK_COLUMNS)


class RiskModelReplica:
    def __init__(self) -> None:
        torch.set_num_threads(1)

    def status(self) -> ModelStatus:
        return ModelStatus(kind="risk", model=peer_risk.MODEL_NAME, version=peer_risk.MODEL_VERSION)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)  # no wait: requests carry many instances
    async def score(self, requests: list[np.ndarray]) -> list[Scored]:
        """Each request is one service: its instances are compared with each other only."""
        out = []
        with torch.inference_mode():
            for rows in requests:
                features = torch.from_numpy(rows)
                z = peer_risk.deviation_z(features)
                out.append(Scored(peer_risk.MODEL_NAME, peer_risk.MODEL_VERSION,
                                  peer_risk.risk_scores(z).tolist(), peer_risk.reasons(features, z)))
        return out


RiskModel = serve.deployment(name="RiskModel")(RiskModelReplica)
