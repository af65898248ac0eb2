"""Turn a trained model (forecaster, health model) into a registry version (manifest, smoke case, TorchScript)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from infra.core.model_registry import ForecastSpec, HealthSpec, ModelManifest
from training.fit import TrainConfig, windows
from training.registry import fingerprint, new_version, write_version
from training.series import RateSeries

MODEL_NAME = "mlp-quantile"


def data_fingerprint(series: RateSeries, description: dict[str, Any]) -> str:
    """The source description plus the series' bytes: same data, same fingerprint."""
    return fingerprint(description, np.nan_to_num(series.values, nan=-1.0).astype(np.float32).tobytes())


def smoke_inputs(series: RateSeries, history_len: int) -> dict[str, torch.Tensor]:
    """The series' latest history (missing minutes as 0: the smoke file is JSON, which has no NaN)."""
    end = np.array([len(series)])
    hist = np.nan_to_num(windows(series.values, end, history_len), nan=0.0)
    nxt = series.unix_of(end)
    return {"history": torch.from_numpy(hist), "next_minute": torch.from_numpy(np.nan_to_num(nxt, nan=0.0))}


def publish(root: Path, module: torch.jit.ScriptModule, history_len: int, cfg: TrainConfig, data_fp: str,
            metrics: dict[str, Any], series: RateSeries, extra_config: dict[str, Any] | None = None
            ) -> tuple[Path, ModelManifest]:
    now = datetime.now(UTC)
    manifest = ModelManifest(
        kind="forecast",
        version=new_version(data_fp, now),
        name=MODEL_NAME,
        created_at=now,
        forecast=ForecastSpec(history_len=history_len, horizon=cfg.horizon, step_s=60, quantiles=cfg.quantiles),
        config={**cfg.model_dump(), **(extra_config or {})},
        data_fingerprint=data_fp,
        metrics=metrics,
    )
    path = write_version(root, module, manifest, smoke_inputs(series, history_len))
    return path, manifest


def publish_health(root: Path, kind: Literal["risk", "latency"], module: torch.nn.Module, name: str,
                   spec: HealthSpec, config: dict[str, Any], data_fp: str, metrics: dict[str, Any],
                   smoke_x: np.ndarray) -> tuple[Path, ModelManifest]:
    """Script a health module and write it as a version of `kind` (contract: infra.core.model_registry)."""
    now = datetime.now(UTC)
    manifest = ModelManifest(kind=kind, version=new_version(data_fp, now), name=name, created_at=now, health=spec,
                             config=config, data_fingerprint=data_fp, metrics=metrics)
    scripted = torch.jit.script(module.eval())
    path = write_version(root, scripted, manifest, {"x": torch.from_numpy(np.ascontiguousarray(smoke_x,
                                                                                                dtype=np.float32))})
    return path, manifest
