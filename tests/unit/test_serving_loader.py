"""Registry loading without Ray: newest valid version wins, broken ones are refused, the old one stays."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from torch import nn

from infra.core.model_registry import (
    MANIFEST_FILE,
    MODEL_FILE,
    SMOKE_FILE,
    ForecastSpec,
    ModelManifest,
    file_checksums,
    read_manifest,
)
from serving.registry_loader import ModelSlot, RefusedVersion, load_version
from training.registry import new_version, write_version

QUANTILES = [0.1, 0.5, 0.9]
BASE_TIME = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class QuantileMLP(nn.Module):
    """A small forecaster honouring the registry contract: NaN-tolerant input, monotone quantiles."""

    def __init__(self, history_len: int, horizon: int, n_quantiles: int, hidden: int = 32) -> None:
        super().__init__()
        self.horizon = horizon
        self.n_quantiles = n_quantiles
        self.net = nn.Sequential(nn.Linear(history_len, hidden), nn.ReLU(), nn.Linear(hidden, horizon * n_quantiles))

    def forward(self, history: torch.Tensor, next_minute: torch.Tensor) -> torch.Tensor:
        missing = torch.isnan(history)
        observed = (~missing).sum(dim=1, keepdim=True).clamp_min(1)
        level = torch.where(missing, torch.zeros_like(history), history).sum(dim=1, keepdim=True) / observed
        scale = level.clamp_min(1e-3)
        x = torch.where(missing, torch.ones_like(history), history / scale)
        raw = self.net(x).reshape(-1, self.horizon, self.n_quantiles)
        steps = torch.cat([raw[:, :, :1], nn.functional.softplus(raw[:, :, 1:])], dim=-1)
        return (torch.cumsum(steps, dim=-1) * scale.unsqueeze(-1)).to(torch.float32)


def scripted(seed: int, history_len: int = 12, horizon: int = 4) -> torch.jit.ScriptModule:
    torch.manual_seed(seed)
    return torch.jit.script(QuantileMLP(history_len, horizon, len(QUANTILES)).eval())


def smoke_inputs(history_len: int = 12) -> dict[str, torch.Tensor]:
    history = torch.linspace(5.0, 20.0, 2 * history_len, dtype=torch.float32).reshape(2, history_len)
    history[0, 3] = float("nan")
    return {"history": history, "next_minute": torch.tensor([1.8e9, float("nan")], dtype=torch.float64)}


def register(root: Path, seed: int, offset_s: int, history_len: int = 12, horizon: int = 4,
             module: torch.jit.ScriptModule | None = None) -> str:
    """Write one forecast version whose name sorts after those with a smaller `offset_s`."""
    version = new_version(f"seed{seed}", now=BASE_TIME + timedelta(seconds=offset_s))
    manifest = ModelManifest(
        kind="forecast", version=version, name="mlp-quantile", created_at=BASE_TIME, data_fingerprint=f"seed{seed}",
        forecast=ForecastSpec(history_len=history_len, horizon=horizon, quantiles=QUANTILES))
    write_version(root, module or scripted(seed, history_len, horizon), manifest, smoke_inputs(history_len))
    return version


def register_broken(root: Path, staging: Path, seed: int, offset_s: int, how: str, resign: bool = True) -> str:
    """A version broken after writing (staged, then renamed in, as a complete folder would be).

    `resign`: the manifest's checksums are updated to the broken files (a writer that wrote bad
    files), so the loader's later checks are the ones that catch it; without, the checksums do."""
    version = register(staging, seed, offset_s)
    folder = staging / "forecast" / version
    if how == "truncated":
        data = (folder / MODEL_FILE).read_bytes()
        (folder / MODEL_FILE).write_bytes(data[: len(data) // 2])
    elif how == "smoke-mismatch":
        smoke = json.loads((folder / SMOKE_FILE).read_text())
        smoke["output"][0][0] = [v + 5.0 for v in smoke["output"][0][0]]
        (folder / SMOKE_FILE).write_text(json.dumps(smoke))
    elif how == "swapped":  # another valid module put in its place
        torch.jit.save(scripted(seed + 100), str(folder / MODEL_FILE))
    else:
        raise ValueError(how)
    if resign:
        manifest = read_manifest(folder)
        (folder / MANIFEST_FILE).write_text(manifest.model_copy(update={"files": file_checksums(folder)})
                                            .model_dump_json())
    (root / "forecast").mkdir(parents=True, exist_ok=True)
    os.rename(folder, root / "forecast" / version)
    return version


def test_empty_registry_leaves_the_baseline(tmp_path: Path) -> None:
    slot = ModelSlot(tmp_path, "forecast")
    assert slot.refresh().loaded is None
    assert slot.current is None and slot.refused == []


def test_newest_valid_version_is_loaded(tmp_path: Path) -> None:
    register(tmp_path, seed=1, offset_s=0)
    newest = register(tmp_path, seed=2, offset_s=1)
    slot = ModelSlot(tmp_path, "forecast")
    assert slot.refresh().loaded == newest
    assert slot.current is not None and slot.current.version == newest
    assert slot.current.manifest.forecast is not None and slot.current.manifest.forecast.horizon == 4


def test_broken_versions_are_refused_and_the_old_one_stays(tmp_path: Path) -> None:
    good = register(tmp_path, seed=1, offset_s=0)
    slot = ModelSlot(tmp_path, "forecast")
    slot.refresh()
    truncated = register_broken(tmp_path, tmp_path / "staging", seed=2, offset_s=1, how="truncated")
    mismatch = register_broken(tmp_path, tmp_path / "staging", seed=3, offset_s=2, how="smoke-mismatch")
    result = slot.refresh()
    assert result.loaded is None
    assert slot.current is not None and slot.current.version == good
    reasons = {r.version: r.reason for r in slot.refused}
    assert reasons.keys() == {truncated, mismatch}
    assert reasons[truncated].startswith("model.pt does not load")
    assert reasons[mismatch].startswith("smoke check failed: output differs from the recorded one")
    # Refused once, not retried on every poll.
    assert slot.refresh().refused == []


def test_a_valid_version_older_than_a_refused_newer_one_is_still_taken(tmp_path: Path) -> None:
    valid = register(tmp_path, seed=1, offset_s=0)
    broken = register_broken(tmp_path, tmp_path / "staging", seed=2, offset_s=1, how="truncated")
    slot = ModelSlot(tmp_path, "forecast")
    result = slot.refresh()
    assert result.loaded == valid
    assert [r.version for r in result.refused] == [broken]


def test_versions_older_than_the_current_one_are_ignored(tmp_path: Path) -> None:
    newer = register(tmp_path, seed=1, offset_s=10)
    slot = ModelSlot(tmp_path, "forecast")
    slot.refresh()
    register(tmp_path, seed=2, offset_s=0)
    assert slot.refresh().loaded is None
    assert slot.current is not None and slot.current.version == newer


def test_manifest_naming_another_folder_is_refused(tmp_path: Path) -> None:
    version = register(tmp_path, seed=1, offset_s=0)
    moved = tmp_path / "forecast" / "20990101T000000Z-elsewhere"
    os.rename(tmp_path / "forecast" / version, moved)
    with pytest.raises(RefusedVersion, match="manifest names forecast/"):
        load_version(moved, "forecast")


class NotMonotone(nn.Module):
    def forward(self, history: torch.Tensor, next_minute: torch.Tensor) -> torch.Tensor:
        level = torch.nan_to_num(history).mean(dim=1)
        return torch.stack([level + 1.0, level, level - 1.0], dim=-1).unsqueeze(1).expand(-1, 4, -1).contiguous()


class NaNOutput(nn.Module):
    def forward(self, history: torch.Tensor, next_minute: torch.Tensor) -> torch.Tensor:
        return torch.full((history.shape[0], 4, 3), float("nan"))


@pytest.mark.parametrize(("module", "reason"), [
    (NotMonotone(), "quantiles are not non-decreasing"),
    (NaNOutput(), "output has NaN or infinite values"),
])
def test_output_contract_is_checked_even_when_the_smoke_case_matches(
        tmp_path: Path, module: nn.Module, reason: str) -> None:
    version = register(tmp_path, seed=0, offset_s=0, module=torch.jit.script(module))
    with pytest.raises(RefusedVersion, match=reason):
        load_version(tmp_path / "forecast" / version, "forecast")


def test_horizon_mismatch_with_the_manifest_is_refused(tmp_path: Path) -> None:
    version = register(tmp_path, seed=0, offset_s=0, horizon=6, module=scripted(0, horizon=4))
    with pytest.raises(RefusedVersion, match=r"output shape \(2, 4, 3\), expected \(2, 6, 3\)"):
        load_version(tmp_path / "forecast" / version, "forecast")


def test_write_version_records_each_files_sha256(tmp_path: Path) -> None:
    version = register(tmp_path, seed=1, offset_s=0)
    folder = tmp_path / "forecast" / version
    files = read_manifest(folder).files
    assert files.keys() == {MODEL_FILE, SMOKE_FILE}
    assert files[MODEL_FILE] == hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()


def test_files_that_do_not_match_the_manifest_are_refused_before_loading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    swapped = register_broken(tmp_path, tmp_path / "staging", seed=2, offset_s=1, how="swapped", resign=False)
    smoke = register_broken(tmp_path, tmp_path / "staging", seed=3, offset_s=2, how="smoke-mismatch", resign=False)
    unsigned = register(tmp_path, seed=4, offset_s=3)
    folder = tmp_path / "forecast" / unsigned
    (folder / MANIFEST_FILE).write_text(read_manifest(folder).model_copy(update={"files": {}}).model_dump_json())
    loaded: list[str] = []
    real_load = torch.jit.load
    def recording_load(path: str, **kw: object) -> torch.jit.ScriptModule:
        loaded.append(str(path))
        return real_load(path, **kw)

    monkeypatch.setattr(torch.jit, "load", recording_load)
    slot = ModelSlot(tmp_path, "forecast")
    result = slot.refresh()
    assert result.loaded is None and slot.current is None
    reasons = {r.version: r.reason for r in result.refused}
    assert reasons[swapped].startswith("model.pt SHA-256") and "differs from the manifest" in reasons[swapped]
    assert reasons[smoke].startswith("smoke.json SHA-256")
    assert reasons[unsigned].startswith("manifest has no SHA-256 of model.pt")
    assert loaded == []  # no file was unpickled


def test_a_reload_on_one_replica_is_followed_by_every_other(tmp_path: Path) -> None:
    """Polling off: replica B never refreshes by itself, yet follows the reload requested on A."""
    a, b = ModelSlot(tmp_path, "forecast"), ModelSlot(tmp_path, "forecast")  # two replicas, one registry
    assert a.follow() is None and b.follow() is None  # nothing requested yet: no refresh, no cost but a stat
    v1 = register(tmp_path, seed=1, offset_s=0)
    assert b.follow() is None and b.current is None  # a new folder alone is not a reload request
    assert a.request_reload().loaded == v1
    followed = b.follow()
    assert followed is not None and followed.loaded == v1 and b.current is not None and b.current.version == v1
    assert b.follow() is None  # once per request
    v2 = register(tmp_path, seed=2, offset_s=60)
    assert b.request_reload().loaded == v2  # any replica may take the request
    assert a.follow() is not None and a.current is not None and a.current.version == v2
    assert sorted(p.name for p in (tmp_path / "forecast").iterdir()) == sorted([v1, v2, ".reload"])
