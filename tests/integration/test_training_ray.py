"""`foresight train` through a real local Ray, into the registry folder and ClickHouse `model_versions`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from infra.core.db import client
from infra.core.model_registry import MODEL_FILE, SMOKE_FILE, SmokeCase, read_manifest, registry_root
from infra.core.settings import Settings


def write_trace(path: Path, days: int, seed: int = 0) -> None:
    """Per-second Poisson counts around a daily cycle, in the NASA file's format."""
    t = np.arange(days * 86400)
    rate = 2 + 1.5 * np.sin(2 * np.pi * t / 86400)
    counts = np.random.default_rng(seed).poisson(rate)
    path.write_text(" ".join(map(str, counts.tolist())))


def test_train_on_local_ray_registers_a_small_model(stack: Settings, tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    write_trace(trace, days=4)
    proc = subprocess.run(
        [sys.executable, "-m", "infra.cli", "train", "--source", f"file:{trace}", "--start", "2024-03-04T00:00:00",
         "--epochs", "2", "--hidden", "32"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    path = Path(summary["path"])
    try:
        check_registered(stack, path, summary)
    finally:  # a toy model must not stay the stack's newest forecaster (a later `./run demo` would serve it)
        shutil.rmtree(path, ignore_errors=True)


def check_registered(stack: Settings, path: Path, summary: dict[str, object]) -> None:
    assert path.parent == registry_root(stack.state) / "forecast"
    manifest = read_manifest(path)
    assert manifest.version == summary["version"] and manifest.forecast is not None
    assert manifest.metrics["best_epoch"] in (1, 2)
    assert set(manifest.metrics["holdout"]["5"]) == {"model", "seasonal_naive"}
    smoke = SmokeCase.model_validate_json((path / SMOKE_FILE).read_text())
    module = torch.jit.load(str(path / MODEL_FILE))
    out = module(torch.tensor(smoke.inputs["history"], dtype=torch.float32),
                 torch.tensor(smoke.inputs["next_minute"], dtype=torch.float64))
    assert out.shape == (1, manifest.forecast.horizon, len(manifest.forecast.quantiles))
    assert torch.allclose(out, torch.tensor(smoke.output), rtol=smoke.rtol, atol=smoke.atol)

    assert summary["model_versions"] is True
    cl = client(stack.clickhouse, stack.clickhouse.database)
    try:
        rows = cl.execute(f"SELECT kind, data_fingerprint, path FROM {stack.clickhouse.database}.model_versions "
                          "WHERE version = %(v)s", {"v": manifest.version})
    finally:
        cl.disconnect()
    assert rows == [("forecast", manifest.data_fingerprint, str(path))]
