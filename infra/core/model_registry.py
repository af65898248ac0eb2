"""The model registry contract between training (writer) and serving (reader).

It lives in the foundation, not in either stage, so that serving loads models without importing
training (torch training code, statsmodels, Ray Train) and training writes them without knowing
serving: the folder layout is the contract, like a table schema.

A version is a folder `<state>/models/<kind>/<version>/` holding:

- `model.pt`: a TorchScript module, so serving needs no training code to run it;
- `manifest.json`: a `ModelManifest` (what the module expects, how it was trained, its
  backtest metrics, the training data fingerprint);
- `smoke.json`: a `SmokeCase`, one input with the output the module gave when it was saved.
  Serving replays it before a version goes into service, which catches truncated or
  mismatched files that still load.

Versions sort by name in creation order (`YYYYMMDDTHHMMSSZ-<hash>`); a folder appears under
its final name only once complete (written under a `.tmp-` name, then renamed), so a reader
never sees half a version.

Forecast modules (`kind="forecast"`) take `forward(history, next_minute)`:
- `history`: float32 `[batch, history_len]`, requests per second averaged per 1-minute step,
  oldest first; NaN marks a missing minute.
- `next_minute`: float64 `[batch]`, the Unix time (seconds) of the first forecast minute, or
  NaN when the series has no known timestamps (calendar features are then left out).
and return float32 `[batch, horizon, len(quantiles)]` in requests per second, quantiles in
manifest order, non-decreasing along the last axis.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ModelKind = Literal["forecast", "risk", "latency"]

MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
SMOKE_FILE = "smoke.json"
TMP_PREFIX = ".tmp-"


class ForecastSpec(BaseModel):
    """What a forecast module reads and returns."""

    model_config = ConfigDict(extra="forbid")

    history_len: int = Field(gt=0, description="Minutes of history the module reads.")
    horizon: int = Field(gt=0, description="Minutes it forecasts, one step per minute.")
    step_s: int = Field(60, gt=0, description="Seconds per step.")
    quantiles: list[float] = Field(description="Quantile levels of the last output axis, ascending.")


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: ModelKind
    version: str
    name: str = Field(description="Architecture, e.g. `mlp-quantile`.")
    created_at: datetime
    format: Literal["torchscript"] = "torchscript"
    forecast: ForecastSpec | None = Field(None, description="Set for kind `forecast`.")
    config: dict[str, Any] = Field(default_factory=dict, description="Training configuration.")
    data_fingerprint: str = Field(description="Hash of the training data (series and range).")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Backtest metrics on held-out data.")


class SmokeCase(BaseModel):
    """One recorded call of the module; serving replays it before a version goes live."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, list[Any]] = Field(description="Keyword arguments of `forward`, as nested lists.")
    output: list[Any] = Field(description="What the module returned for them, as nested lists.")
    rtol: float = 1e-4
    atol: float = 1e-4


def registry_root(state_dir: Path) -> Path:
    return state_dir / "models"


def list_versions(root: Path, kind: ModelKind) -> list[str]:
    """Complete versions of `kind`, oldest first."""
    folder = root / kind
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX))


def read_manifest(version_dir: Path) -> ModelManifest:
    return ModelManifest.model_validate_json((version_dir / MANIFEST_FILE).read_text())
