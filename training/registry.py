"""Writes model versions into the registry folder (layout and readers in `infra.core.model_registry`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from infra.core.model_registry import (
    MANIFEST_FILE,
    MODEL_FILE,
    SMOKE_FILE,
    TMP_PREFIX,
    ModelManifest,
    SmokeCase,
    file_checksums,
)


def new_version(fingerprint: str, now: datetime | None = None) -> str:
    """Sortable by creation time; the hash tells apart two versions saved in one second."""
    now = now or datetime.now(UTC)
    salt = hashlib.sha256(f"{fingerprint}{now.isoformat()}{os.getpid()}".encode()).hexdigest()[:8]
    return f"{now:%Y%m%dT%H%M%SZ}-{salt}"


def _tolist(value: torch.Tensor) -> list[Any]:
    listed = value.detach().cpu().tolist()
    return listed if isinstance(listed, list) else [listed]


def record_smoke(module: torch.jit.ScriptModule, inputs: dict[str, torch.Tensor]) -> SmokeCase:
    with torch.inference_mode():
        output = module(**inputs)
    return SmokeCase(inputs={k: _tolist(v) for k, v in inputs.items()}, output=_tolist(output))


def write_version(
    root: Path,
    module: torch.jit.ScriptModule,
    manifest: ModelManifest,
    smoke_inputs: dict[str, torch.Tensor],
) -> Path:
    """Save one version atomically: readers see the whole folder or none of it.

    The manifest written carries the SHA-256 of the module and the smoke case (`files`)."""
    final = root / manifest.kind / manifest.version
    if final.exists():
        raise FileExistsError(f"model version {manifest.kind}/{manifest.version} already exists at {final}")
    tmp = final.with_name(TMP_PREFIX + manifest.version)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        torch.jit.save(module, str(tmp / MODEL_FILE))
        smoke = record_smoke(module, smoke_inputs)
        (tmp / SMOKE_FILE).write_text(smoke.model_dump_json())
        manifest = manifest.model_copy(update={"files": file_checksums(tmp)})
        (tmp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
        for name in (MODEL_FILE, SMOKE_FILE, MANIFEST_FILE):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def fingerprint(*parts: Any) -> str:
    """A stable hash of the training data description (and, if given, its bytes)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
