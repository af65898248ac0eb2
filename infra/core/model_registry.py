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

The manifest lists the SHA-256 of `model.pt` and `smoke.json` (`files`); a reader checks them
(`verify_files`) before `torch.jit.load`, so a file swapped or altered after training (the
registry is a shared folder) is refused instead of unpickled and run.

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

Health modules (`kind="risk"` and `kind="latency"`) take `forward(x)`:
- `x`: float32 `[n, len(health.columns)]`, one row per instance of one service, the columns named
  in the manifest's `health.columns`, in that order, as `infra.core.health_features.derive`
  computes them (the one derivation shared by training and serving; a reader refuses a version
  naming a column it does not know).
and return
- risk: float32 `[n]`, the probability in [0, 1] that the instance fails (error rate above 1 % in
  a window, or unresponsive) within `health.horizon_s`; calibration is folded into the module.
- latency: float32 `[n, 2]`, the predicted p50 and p99 (ms, `health.outputs` = ["p50_ms", "p99_ms"])
  of the instance's next window at the load given in the `log_offered` column; 0 <= p50 <= p99.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ModelKind = Literal["forecast", "risk", "latency"]

MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
SMOKE_FILE = "smoke.json"
TMP_PREFIX = ".tmp-"
CHECKED_FILES = (MODEL_FILE, SMOKE_FILE)


class ForecastSpec(BaseModel):
    """What a forecast module reads and returns."""

    model_config = ConfigDict(extra="forbid")

    history_len: int = Field(gt=0, description="Minutes of history the module reads.")
    horizon: int = Field(gt=0, description="Minutes it forecasts, one step per minute.")
    step_s: int = Field(60, gt=0, description="Seconds per step.")
    quantiles: list[float] = Field(description="Quantile levels of the last output axis, ascending.")


class HealthSpec(BaseModel):
    """What a health module (risk, latency) reads and returns; see the module docstring."""

    model_config = ConfigDict(extra="forbid")

    columns: list[str] = Field(min_length=1, description="Input feature names (infra.core.health_features), "
                                                         "in the order of `x`'s columns.")
    window_s: float = Field(gt=0, description="Length (s) of the per-instance windows the features were "
                                              "computed on; counts are per window.")
    horizon_s: float | None = Field(None, gt=0, description="Risk: seconds ahead the probability covers.")
    outputs: list[str] = Field(default_factory=list, description="Latency: the output columns, "
                                                                "[\"p50_ms\", \"p99_ms\"].")


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: ModelKind
    version: str
    name: str = Field(description="Architecture, e.g. `mlp-quantile`.")
    created_at: datetime
    format: Literal["torchscript"] = "torchscript"
    forecast: ForecastSpec | None = Field(None, description="Set for kind `forecast`.")
    health: HealthSpec | None = Field(None, description="Set for kinds `risk` and `latency`.")
    config: dict[str, Any] = Field(default_factory=dict, description="Training configuration.")
    data_fingerprint: str = Field(description="Hash of the training data (series and range).")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Backtest metrics on held-out data.")
    files: dict[str, str] = Field(default_factory=dict, description="SHA-256 (hex) of each file of the version "
                                  "but the manifest itself; checked before the module is loaded.")


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


class FileCheckError(ValueError):
    """A version's file is missing from the manifest's checksums, or does not match them."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(version_dir: Path) -> dict[str, str]:
    """What a writer puts in `ModelManifest.files`."""
    return {name: sha256_file(version_dir / name) for name in CHECKED_FILES}


def verify_files(version_dir: Path, manifest: ModelManifest) -> None:
    """Raise FileCheckError unless every checked file has its manifest checksum."""
    for name in CHECKED_FILES:
        expected = manifest.files.get(name)
        if expected is None:
            raise FileCheckError(f"manifest has no SHA-256 of {name} (a version written before checksums, "
                                 "or tampered with): retrain to replace it")
        try:
            actual = sha256_file(version_dir / name)
        except OSError as exc:
            raise FileCheckError(f"{name} unreadable: {exc.strerror or exc}") from exc
        if not hmac.compare_digest(actual, expected.lower()):
            raise FileCheckError(f"{name} SHA-256 {actual[:16]}... differs from the manifest's {expected[:16]}...")
