"""The latency model on synthetic windows where latency depends on the load an instance gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infra.core.features_table import HEALTH_WINDOW_FIELDS
from infra.core.health_features import LATENCY_COLUMNS
from infra.core.ports import free_ports
from infra.core.settings import ClickHouseSettings
from serving.registry_loader import ModelSlot
from training.latency import LatencyConfig, Windows, baselines, make_pairs, split, train_latency
from training.latency_command import latency_command, read_dataset, service_patterns

WINDOW_S = 10


def synthetic(services: int = 2, windows: int = 300, seed: int = 0) -> Windows:
    """Instances of unequal capacity under a load that jumps every window (so last-value lags).

    p50 = service time / (1 - utilisation) at the window's own load; p99 = 4 x p50; noise 5%."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[object, ...]] = []
    capacity = np.array([80.0, 120.0, 200.0, 300.0])  # requests per window
    service_ms = np.array([30.0, 20.0, 12.0, 8.0])
    for s in range(services):
        for t in range(windows):
            total = rng.uniform(150.0, 550.0)
            load = np.round(total * rng.dirichlet(np.full(4, 8.0)))
            rho = np.minimum(load / capacity, 0.95)
            p50 = service_ms / (1 - rho) * rng.lognormal(0, 0.05, 4)
            p99 = 4 * p50 * rng.lognormal(0, 0.05, 4)
            sessions = load / WINDOW_S * p50 / 1000
            for i in range(4):
                rows.append((f"svc-{s}", f"i{i}", 1_800_000_000 + t * WINDOW_S, WINDOW_S, load[i], 0, p50[i],
                             p99[i], sessions[i], 0.0, 0.0, 0.0))
    assert len(rows[0]) == len(HEALTH_WINDOW_FIELDS)
    return Windows.from_rows(rows)


def test_pairs_put_the_next_windows_load_and_latency_together() -> None:
    w = synthetic(services=1, windows=5)
    pairs = make_pairs(w, WINDOW_S, LATENCY_COLUMNS, min_requests=1)
    assert len(pairs) == 4 * 4  # the last window has no successor
    offered = LATENCY_COLUMNS.index("log_offered")
    first = [k for k in range(len(w)) if w.instance[k] == "i0"]
    assert pairs.y[0].tolist() == [w.latency_p50_ms[first[1]], w.latency_p99_ms[first[1]]]
    assert pairs.x[0, offered] == pytest.approx(np.log1p(w.requests[first[1]]), rel=1e-6)


def test_baselines_are_last_value_and_the_inverse_latency_wait() -> None:
    now = np.array([[10.0, 40.0, 2.0], [0.0, 30.0, 1.0]])
    got = baselines(now)
    assert got["last_value"].tolist() == [[10.0, 40.0], [0.0, 30.0]]
    assert got["inverse_latency"].tolist() == [[30.0, 60.0], [30.0, 60.0]]


def test_time_split_holds_out_the_latest_windows_and_service_split_the_last_services() -> None:
    pairs = make_pairs(synthetic(services=3, windows=50), WINDOW_S)
    train, val, held, how = split(pairs, LatencyConfig(holdout_frac=0.2))
    assert train.start_s.max() <= val.start_s.min() and val.start_s.max() <= held.start_s.min()
    assert how["split"] == "time"
    train, val, held, how = split(pairs, LatencyConfig(split="service", holdout_frac=0.34))
    assert how["held_out_services"] == ["svc-2"] and set(held.service) == {"svc-2"}
    assert "svc-2" not in set(train.service) | set(val.service)
    train, val, held, how = split(pairs, LatencyConfig(holdout_services=["svc-0", "nothing*"]))
    assert how["held_out_services"] == ["svc-0"] and "svc-0" not in set(train.service) | set(val.service)
    with pytest.raises(ValueError, match="matches 3 of the 3 services"):
        split(pairs, LatencyConfig(holdout_services=["svc-*"]))


def test_the_model_beats_last_value_where_latency_follows_load() -> None:
    result = train_latency(synthetic(), LatencyConfig(epochs=25, seed=1))
    held = result.metrics["held_out"]
    print({k: round(v["p99_mae_ms"], 1) for k, v in held.items()})
    assert held["model"]["p99_mae_ms"] < 0.6 * held["last_value"]["p99_mae_ms"]
    assert held["model"]["p50_mae_ms"] < 0.6 * held["inverse_latency"]["p50_mae_ms"]
    assert result.metrics["ratios"]["p99_mae_vs_last_value"] < 0.6


def test_too_little_data_is_an_error_that_says_so() -> None:
    with pytest.raises(ValueError, match="too little data"):
        train_latency(synthetic(services=1, windows=20), LatencyConfig(epochs=1))
    with pytest.raises(ValueError, match="no per-instance windows"):
        train_latency(Windows.from_rows([]), LatencyConfig(epochs=1))


def test_a_published_version_is_served(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # nothing listens there: the model_versions mirror is skipped, the registry is written
    ch = ClickHouseSettings(tcp_port=free_ports(1))
    summary = latency_command(service=None, time_range=(None, None), cfg=LatencyConfig(epochs=3),
                              state_dir=tmp_path, ch=ch, as_json=True, windows=synthetic(windows=120))
    assert summary["kind"] == "latency" and summary["model_versions"] is False
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")
    slot = ModelSlot(tmp_path / "models", "latency")
    assert slot.refresh().loaded == summary["version"]
    assert slot.current is not None and slot.current.manifest.health is not None
    assert slot.current.manifest.health.columns == list(LATENCY_COLUMNS)
    assert slot.current.manifest.health.window_s == WINDOW_S


def test_service_patterns_are_like_patterns() -> None:
    assert service_patterns(None) == ["%"]
    assert service_patterns("demo, health-*") == ["demo", "health-%"]


def test_the_cli_says_why_when_clickhouse_cannot_be_read(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from infra.cli import app

    env = {"FORESIGHT_CLICKHOUSE__TCP_PORT": str(free_ports(1)), "FORESIGHT_STATE": str(tmp_path)}
    result = CliRunner().invoke(app, ["train", "--kind", "latency", "--json"], env=env)
    assert result.exit_code == 2, result.output
    assert "cannot read `features` from ClickHouse" in result.output
    bad = CliRunner().invoke(app, ["train", "--kind", "weather"], env=env)
    assert bad.exit_code == 2 and "--kind" in bad.output


def test_a_fault_dataset_folder_trains_with_its_held_out_seeds_held_out(tmp_path: Path) -> None:
    import pandas as pd

    w = synthetic(services=3, windows=120)
    frame = pd.DataFrame({"service": w.service, "instance": w.instance, "window_start": w.start_s,
                          "window_end": w.start_s + w.window_s, "requests": w.requests, "status_5xx": w.status_5xx,
                          "latency_p50_ms": w.latency_p50_ms, "latency_p99_ms": w.latency_p99_ms,
                          "sessions_max": w.sessions_max, "queue_max": w.queue_max,
                          "split": np.where(w.service == "svc-1", "heldout", "train")})
    frame.to_parquet(tmp_path / "windows-1-2-3.parquet", index=False)
    got, held = read_dataset(tmp_path)
    assert held == ["svc-1"] and len(got) == len(w) and got.resource_max.sum() == 0
    summary = latency_command(service=None, time_range=(None, None), cfg=LatencyConfig(epochs=2),
                              state_dir=tmp_path / "state", ch=ClickHouseSettings(tcp_port=free_ports(1)),
                              as_json=True, source=f"file:{tmp_path}")
    assert summary["metrics"]["held_out_services"] == ["svc-1"]
    with pytest.raises(ValueError, match="no windows-"):
        read_dataset(tmp_path / "empty")
