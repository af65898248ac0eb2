"""Health models (kinds `latency`, `risk`) from the registry: loaded, refused with a reason, or the baseline.

Tiny scripted modules are written into a temp registry the way training writes them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from infra.core.contracts import HAPROXY_MAX_WEIGHT
from infra.core.health_features import LATENCY_OUTPUTS, derive
from infra.core.model_registry import HealthSpec, ModelKind, ModelManifest
from serving.instances_body import COLUMN_NAMES
from serving.models import health_models, peer_risk
from serving.models.latency_weights import MODEL_NAME as BASELINE_WEIGHTS
from serving.registry_loader import ModelSlot
from serving.risk_model import RiskModelReplica
from serving.weights_model import WeightsModelReplica
from training.registry import new_version, write_version

BASE_TIME = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
LAT_COLUMNS = ["log_p50_ms", "log_offered", "error_rate"]
RISK_COLS = ["p99_vs_peers", "error_rate"]


class QueueingLatency(nn.Module):
    """p50 grows with offered load over a capacity of 100 requests per window; p99 = 3 x p50."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        service = torch.expm1(x[:, 0]).clamp_min(1.0)
        load = torch.expm1(x[:, 1])
        p50 = service * (1.0 + load / 100.0)
        return torch.stack([p50, 3.0 * p50], dim=1)


class InvertedLatency(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0] + 10.0, x[:, 0]], dim=1)


class PeerRisk(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(4.0 * x[:, 0] + 10.0 * x[:, 1] - 2.0)


class WrongShapeRisk(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x[:, :1])


class BreaksOnOutliers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] > 2.0).any()):
            raise RuntimeError("an input out of the training range")
        return torch.sigmoid(x[:, 0])


def raw(p50: list[float], p99: list[float], requests: list[float], error_rate: list[float] | None = None
        ) -> dict[str, np.ndarray]:
    n = len(p50)
    values = {name: np.zeros(n) for name in COLUMN_NAMES}
    values |= {"latency_p50_ms": np.array(p50), "latency_p99_ms": np.array(p99), "requests": np.array(requests),
               "error_rate": np.array(error_rate or [0.0] * n)}
    return values


def rows(values: dict[str, np.ndarray]) -> np.ndarray:
    """An InstancesBody's features array (columns as instances_body.COLUMNS)."""
    return np.stack([values[name] for name in COLUMN_NAMES], axis=1).astype(np.float32)


SMOKE = raw([10.0, 30.0], [30.0, 90.0], [100.0, 100.0])


def register(root: Path, kind: ModelKind, module: nn.Module, columns: list[str], offset_s: int = 0,
             health: HealthSpec | None = None, name: str = "tiny", metrics: dict[str, object] | None = None) -> str:
    version = new_version(f"{kind}{offset_s}", now=BASE_TIME + timedelta(seconds=offset_s))
    spec = health or HealthSpec(columns=columns, window_s=10.0, horizon_s=60.0 if kind == "risk" else None,
                                outputs=list(LATENCY_OUTPUTS) if kind == "latency" else [])
    manifest = ModelManifest(kind=kind, version=version, name=name, created_at=BASE_TIME, data_fingerprint="t",
                             health=spec, metrics=metrics or {})
    x = torch.from_numpy(derive(SMOKE, None, spec.columns if spec.columns else columns))
    write_version(root, torch.jit.script(module.eval()), manifest, {"x": x})
    return version


def test_without_a_version_both_kinds_answer_from_their_baselines(tmp_path: Path) -> None:
    weights = WeightsModelReplica(tmp_path, 0.0)
    weighed = weights.weigh_batch([rows(raw([10.0, 10.0], [20.0, 80.0], [5.0, 5.0]))])[0]
    assert (weighed.model, weighed.version, weighed.reasons) == (BASELINE_WEIGHTS, "baseline", None)
    assert weighed.weights[0] > weighed.weights[1] >= 1
    risk = RiskModelReplica(tmp_path, 0.0)
    scored = risk.score_batch([rows(raw([10.0] * 3, [20.0, 20.0, 900.0], [5.0] * 3))])[0]
    assert (scored.model, scored.version) == (peer_risk.MODEL_NAME, "baseline")
    assert scored.risks[2] > scored.risks[0]
    assert weights.status().version == "baseline" and risk.status().version == "baseline"


def test_a_latency_version_weighs_by_predicted_capacity_and_explains(tmp_path: Path) -> None:
    version = register(tmp_path, "latency", QueueingLatency(), LAT_COLUMNS, name="queueing")
    replica = WeightsModelReplica(tmp_path, 0.0)
    status = replica.status()
    assert (status.model, status.version, status.columns) == ("queueing", version, LAT_COLUMNS)
    weighed = replica.weigh_batch([rows(raw([10.0, 10.0, 40.0, 10.0], [30.0, 30.0, 120.0, 30.0],
                                            [100.0, 100.0, 100.0, 100.0], [0.0, 0.0, 0.0, 1.0]))])[0]
    assert (weighed.model, weighed.version) == ("queueing", version)
    fast, same, slow, failing = weighed.weights
    assert fast == same == HAPROXY_MAX_WEIGHT and 0 < slow < fast
    assert failing == 0  # a drain, not clamped to 1
    assert weighed.reasons is not None
    assert weighed.reasons[2][0].startswith("capacity ~") and any("log_p50_ms" in r for r in weighed.reasons[2])
    assert any("error rate 100.0%" in r for r in weighed.reasons[3])


def test_a_risk_version_scores_and_names_the_inputs(tmp_path: Path) -> None:
    version = register(tmp_path, "risk", PeerRisk(), RISK_COLS)
    replica = RiskModelReplica(tmp_path, 0.0)
    assert replica.status().horizon_s == 60.0
    scored = replica.score_batch([rows(raw([10.0] * 4, [20.0, 21.0, 300.0, 20.0], [5.0] * 4))])[0]
    assert (scored.model, scored.version) == ("tiny", version)
    assert max(scored.risks) == scored.risks[2] and all(0 <= r <= 1 for r in scored.risks)
    assert scored.reasons[2] and scored.reasons[2][0].startswith("p99_vs_peers")


@pytest.mark.parametrize(("kind", "module", "columns", "health", "reason"), [
    ("risk", PeerRisk(), ["p99_vs_peers", "future_signal"], None, "unknown to this server"),
    ("risk", WrongShapeRisk(), RISK_COLS, None, "expected (2,)"),
    ("risk", PeerRisk(), RISK_COLS, HealthSpec(columns=RISK_COLS, window_s=10.0), "no `health.horizon_s`"),
    ("latency", InvertedLatency(), LAT_COLUMNS, None, "p50 <= p99"),
    ("latency", QueueingLatency(), LAT_COLUMNS, HealthSpec(columns=LAT_COLUMNS, window_s=10.0, outputs=["p99"]),
     "latency outputs"),
])
def test_a_bad_version_is_refused_with_its_reason_and_the_baseline_stays(
        tmp_path: Path, kind: ModelKind, module: nn.Module, columns: list[str], health: HealthSpec | None,
        reason: str) -> None:
    if "future_signal" in columns:  # a manifest from a newer feature set: its smoke case is from known columns
        version = register(tmp_path, kind, module, RISK_COLS, health=HealthSpec(
            columns=RISK_COLS, window_s=10.0, horizon_s=60.0))
        folder = tmp_path / kind / version
        _rewrite_columns(folder, columns)
    else:
        version = register(tmp_path, kind, module, columns, health=health)
    slot = ModelSlot(tmp_path, kind)
    result = slot.refresh()
    assert result.loaded is None and slot.current is None
    assert [r.version for r in result.refused] == [version]
    assert reason in result.refused[0].reason
    replica = RiskModelReplica(tmp_path, 0.0) if kind == "risk" else WeightsModelReplica(tmp_path, 0.0)
    status = replica.status()
    assert status.version == "baseline" and [r.version for r in status.refused] == [version]


def _rewrite_columns(folder: Path, columns: list[str]) -> None:
    from infra.core.model_registry import MANIFEST_FILE, read_manifest
    manifest = read_manifest(folder)
    assert manifest.health is not None
    health = manifest.health.model_copy(update={"columns": columns})
    (folder / MANIFEST_FILE).write_text(manifest.model_copy(update={"health": health}).model_dump_json())


def test_a_newer_valid_version_replaces_an_older_one_and_a_refused_one_does_not(tmp_path: Path) -> None:
    old = register(tmp_path, "risk", PeerRisk(), RISK_COLS, offset_s=0)
    replica = RiskModelReplica(tmp_path, 0.0)
    assert replica.status().version == old
    register(tmp_path, "risk", WrongShapeRisk(), RISK_COLS, offset_s=1)
    reload = replica.reload()
    assert reload.loaded == [] and len(reload.refused) == 1
    assert replica.status().version == old
    new = register(tmp_path, "risk", PeerRisk(), RISK_COLS, offset_s=2)
    assert replica.reload().loaded == [f"risk/{new}"]


def test_a_version_failing_on_a_request_answers_it_from_the_baseline(tmp_path: Path) -> None:
    version = register(tmp_path, "risk", BreaksOnOutliers(), ["p99_vs_peers"])
    replica = RiskModelReplica(tmp_path, 0.0)
    calm, outlier = replica.score_batch([rows(raw([1.0] * 3, [5.0] * 3, [1.0] * 3)),
                                         rows(raw([1.0] * 3, [5.0, 5.0, 900.0], [1.0] * 3))])
    assert calm.version == version and outlier.version == "baseline"
    assert outlier.risks[2] > outlier.risks[0]


def test_capacity_weights_are_equal_for_equal_instances_and_follow_the_instance() -> None:
    module = torch.jit.script(QueueingLatency())
    same = health_models.capacity_weights(module, raw([10.0] * 3, [30.0] * 3, [50.0] * 3), LAT_COLUMNS, 256)
    assert same.weights == [256, 256, 256]
    values = raw([10.0, 40.0, 20.0], [30.0, 120.0, 60.0], [50.0, 50.0, 50.0])
    order = [2, 0, 1]
    permuted = {k: v[order] for k, v in values.items()}
    a = health_models.capacity_weights(module, values, LAT_COLUMNS, 256).weights
    b = health_models.capacity_weights(module, permuted, LAT_COLUMNS, 256).weights
    assert [a[i] for i in order] == b and a[0] > a[2] > a[1]


def test_non_finite_model_output_raises_so_the_caller_falls_back() -> None:
    class Nan(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0] * float("nan")

    with pytest.raises(ValueError, match="NaN"):
        health_models.predict(torch.jit.script(Nan()), np.zeros((2, 1), dtype=np.float32))


def test_crossing_load_interpolates_scales_below_and_extrapolates_above() -> None:
    loads = np.array([10.0, 20.0, 40.0])
    p99 = np.array([[50.0, 200.0, 10.0, 10.0],
                    [150.0, 300.0, 20.0, 10.0],
                    [250.0, 400.0, 30.0, 10.0]])
    got = health_models.crossing_load(loads, p99, target=100.0, most=1000.0)
    # 1: between 10 (50 ms) and 20 (150 ms); 2: over at the first probe, 10 * 100/200;
    # 3: along the last slope (10 ms per 20 requests) to 100 ms; 4: flat, never crosses: `most`
    assert got.tolist() == pytest.approx([15.0, 5.0, 180.0, 1000.0])


def test_attributions_add_up_to_the_move_from_the_median_instance() -> None:
    module = torch.jit.script(PeerRisk())
    x = np.array([[0.0, 0.0], [0.1, 0.0], [3.0, 0.5], [0.05, 0.0]], dtype=np.float32)
    effects = health_models.attributions(module, x, RISK_COLS, "risk", steps=64)
    out = health_models.predict(module, x)
    at_median = health_models.predict(module, np.median(x, axis=0, keepdims=True))[0]
    assert effects.sum(axis=1) == pytest.approx(out - at_median, abs=1e-3)
    assert effects[2, 0] > 0.1 and effects[2, 1] > 0.1  # saturated, yet both inputs are credited


def test_an_instance_without_completed_requests_gets_the_median_weight() -> None:
    module = torch.jit.script(QueueingLatency())
    values = raw([10.0, 20.0, 40.0, 0.0], [30.0, 60.0, 120.0, 0.0], [50.0, 50.0, 50.0, 0.0])
    answer = health_models.capacity_weights(module, values, LAT_COLUMNS, 256)
    assert answer.weights[0] == 256 and answer.weights[3] == answer.weights[1]
    assert answer.reasons[3][0].startswith("no request completed")


# -- the window length (issue 15: models trained on 2 s windows, counts per window) ------------------

def test_a_model_trained_on_another_window_length_is_not_used_and_the_answer_says_so(tmp_path: Path) -> None:
    from serving.instances_body import Rows

    lat = register(tmp_path, "latency", QueueingLatency(), LAT_COLUMNS, name="queueing")  # window_s 10
    risk_version = register(tmp_path, "risk", PeerRisk(), RISK_COLS)
    weights, risk = WeightsModelReplica(tmp_path, 0.0), RiskModelReplica(tmp_path, 0.0)
    x = rows(raw([10.0] * 3, [20.0, 20.0, 900.0], [5.0] * 3))

    weighed = weights.weigh_batch([Rows(x, 2.0)])[0]
    assert (weighed.model, weighed.version) == (BASELINE_WEIGHTS, "baseline")
    assert weighed.note is not None and "10 s windows" in weighed.note and "2 s" in weighed.note
    scored = risk.score_batch([Rows(x, 2.0)])[0]
    assert (scored.model, scored.version) == (peer_risk.MODEL_NAME, "baseline")
    assert scored.note is not None and "baseline" in scored.note

    same_w, same_r = weights.weigh_batch([Rows(x, 10.0)])[0], risk.score_batch([Rows(x, 10.0)])[0]
    assert (same_w.version, same_w.note, same_r.version, same_r.note) == (lat, None, risk_version, None)


def test_a_request_without_a_window_length_is_assumed_the_models_and_told_so(tmp_path: Path) -> None:
    version = register(tmp_path, "risk", PeerRisk(), RISK_COLS)
    scored = RiskModelReplica(tmp_path, 0.0).score_batch([rows(raw([10.0] * 3, [20.0] * 3, [5.0] * 3))])[0]
    assert scored.version == version  # a bare array (older callers): the model still answers
    assert scored.note is not None and "assumed" in scored.note and "10 s" in scored.note


def test_the_baseline_alone_needs_no_window_length(tmp_path: Path) -> None:
    from serving.instances_body import Rows

    (weighed,) = WeightsModelReplica(tmp_path, 0.0).weigh_batch([Rows(rows(raw([10.0] * 2, [20.0] * 2, [5.0] * 2)),
                                                                      2.0)])
    assert (weighed.version, weighed.note) == ("baseline", None)


def test_a_risk_version_carries_its_training_chosen_drain_point_in_seconds_and_the_baseline_none(
        tmp_path: Path) -> None:
    from serving.instances_body import Rows

    x = Rows(rows(raw([10.0] * 3, [20.0, 20.0, 900.0], [5.0] * 3)), 2.0)
    assert RiskModelReplica(tmp_path, 0.0).score_batch([x])[0].operating_point is None  # the baseline
    register(tmp_path, "risk", PeerRisk(), RISK_COLS, health=HealthSpec(columns=RISK_COLS, window_s=2.0,
                                                                        horizon_s=60.0),
             metrics={"operating_point": {"drain_above": 0.7, "drain_after": 6}})
    scored = RiskModelReplica(tmp_path, 0.0).score_batch([x])[0]
    assert scored.version != "baseline" and scored.operating_point == (0.7, 12.0)  # 6 windows of 2 s
