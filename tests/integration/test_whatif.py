"""`foresight whatif` against the running stack's ClickHouse, in a database of its own: recorded demand
(`features`) and recorded scaler decisions (`decisions`) replayed through the simulator."""

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from infra.core.db import client, migrate
from infra.core.model_registry import ForecastSpec, ModelManifest
from infra.core.settings import Settings, load_settings
from training.registry import new_version, write_version

START = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
MINUTES = 120
CAPACITY = 10.0


def rate(m: int) -> float:
    return 20.0 + 0.5 * m  # a ramp, 20 -> 79.5 req/s


class LastTimes(nn.Module):
    """A forecaster that repeats the last minute, times 1 / 1.1 / 1.2 for p50 / p90 / p99."""

    def forward(self, history: torch.Tensor, next_minute: torch.Tensor) -> torch.Tensor:
        last = history[:, -1:].unsqueeze(-1).expand(-1, 5, 1)
        return torch.cat([last, last * 1.1, last * 1.2], dim=-1).to(torch.float32)


def register(root: Path) -> str:
    version = new_version("whatif-test", now=START)
    manifest = ModelManifest(kind="forecast", version=version, name="last-times", created_at=START,
                             data_fingerprint="whatif-test",
                             forecast=ForecastSpec(history_len=3, horizon=5, quantiles=[0.5, 0.9, 0.99]))
    write_version(root, torch.jit.script(LastTimes()), manifest,
                  {"history": torch.ones(1, 3), "next_minute": torch.tensor([1.8e9], dtype=torch.float64)})
    return version


@pytest.fixture
def running_clickhouse() -> Settings:
    """The running stack's settings, without the `stack` fixture's `stack up`: this test needs ClickHouse only."""
    settings = load_settings()
    try:
        client(settings.clickhouse).execute("SELECT 1")
    except Exception as exc:  # the stack is not up: say so rather than start one
        pytest.fail(f"ClickHouse of the local stack is not answering ({exc}); `foresight stack up` first")
    return settings


@pytest.fixture
def whatif_db(running_clickhouse: Settings) -> Iterator[tuple[Settings, str]]:
    stack = running_clickhouse
    name = f"whatif_{uuid.uuid4().hex[:8]}"
    ch = stack.clickhouse.model_copy(update={"database": name})
    migrate(ch)
    cl = client(ch, name)
    service = "shop"
    features = []
    for m in range(-10, MINUTES + 10):  # windows before and after the range must not count
        for w in range(6):
            ws = START + timedelta(seconds=60 * m + 10 * w)
            n = round(rate(m) * 10)
            features.append((ws, ws + timedelta(seconds=10), service, "*", n, n / 10.0, 1))
    cl.execute(f"INSERT INTO {name}.features (window_start, window_end, service, instance, requests, rate, "
               "emitted_at) VALUES", features)
    ms = int(START.timestamp() * 1000)
    decisions = [
        (ms - 60_000, service, "scaler", service, "scale", 2.0, 3.0, "before the range", 0, "applied"),
        (ms + 60 * 60_000, service, "scaler", service, "scale", 3.0, 8.0, "late scale-up", 0, "applied"),
        (ms + 90 * 60_000, service, "scaler", service, "scale", 8.0, 1.0, "a dry run is not what happened", 1,
         "dry_run"),
        (ms + 95 * 60_000, service, "haproxy", f"{service}/a", "set_weight", 1.0, 50.0, "another actuator", 0,
         "applied"),
        (ms + 100 * 60_000, service, "scaler", service, "scale", 8.0, 1.0, "failed", 0, "failed: timeout"),
    ]
    cl.execute(f"INSERT INTO {name}.decisions (ts_ms, service, actuator, target, action, before, after, reason, "
               "dry_run, outcome) VALUES", decisions)
    cl.disconnect()
    yield stack, name
    cl = client(stack.clickhouse)
    cl.execute(f"DROP DATABASE IF EXISTS {name}")
    cl.disconnect()


def whatif(db: str, state: Path, *args: str) -> dict[str, Any]:
    end = START + timedelta(minutes=MINUTES)
    proc = subprocess.run(
        [sys.executable, "-m", "infra.cli", "whatif", "--service", "shop", "--from", START.isoformat(),
         "--to", end.isoformat(), "--capacity", str(CAPACITY), "--startup", "60", *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "FORESIGHT_CLICKHOUSE__DATABASE": db, "FORESIGHT_STATE_DIR": str(state)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_recorded_decisions_are_replayed_like_for_like(whatif_db: "tuple[Settings, str]", tmp_path: Path) -> None:
    _, db = whatif_db
    r = whatif(db, tmp_path, "--policy", "static:3", "--json")
    rec = r["recorded"]
    # 3 replicas (set before the range) until minute 60, then 8 started (ready from minute 61);
    # the dry run, the failed decision and the HAProxy weight are not what the scaler did.
    assert r["recorded_decisions"] == 2
    short = sum(1 for m in range(61) if rate(m) > 3 * CAPACITY)
    assert rec["underprov_minutes"] == short == 40
    assert rec["replica_seconds"] == 60 * (3 * 60 + 8 * 60)
    # static:3 is what the recorded run did for the first hour, so it matches it there and stays short after
    assert r["policy"]["replica_seconds"] == 60 * 3 * MINUTES
    assert r["policy"]["underprov_minutes"] == sum(1 for m in range(MINUTES) if rate(m) > 3 * CAPACITY)
    assert r["minutes_with_data"] == MINUTES and r["forecast_model"] is None
    assert r["replica_seconds_vs_recorded"] == pytest.approx(r["policy"]["replica_seconds"] / rec["replica_seconds"],
                                                             abs=1e-3)


def test_predictive_and_hpa_replays(whatif_db: "tuple[Settings, str]", tmp_path: Path) -> None:
    _, db = whatif_db
    version = register(tmp_path / "models")
    pred = whatif(db, tmp_path, "--policy", "predictive", "--headroom", "0", "--quantile", "0.99", "--json")
    assert pred["forecast_model"] == f"forecast@{version}"
    # it provisions 1.2 x the last minute ahead of a ramp of +0.5 req/s a minute: never short
    assert pred["policy"]["underprov_minutes"] == 0 < pred["recorded"]["underprov_minutes"]
    hpa = whatif(db, tmp_path, "--policy", "hpa", "--target-utilization", "1.0")
    assert hpa["policy"]["name"] == "hpa" and hpa["policy"]["minutes"] == MINUTES
    # HPA at full utilisation follows the ramp a minute late plus the startup: short on most rising minutes
    assert hpa["policy"]["underprov_minutes"] > pred["policy"]["underprov_minutes"]


def test_clear_errors(whatif_db: "tuple[Settings, str]", tmp_path: Path) -> None:
    _, db = whatif_db
    end = START + timedelta(minutes=MINUTES)
    base = [sys.executable, "-m", "infra.cli", "whatif", "--from", START.isoformat(), "--to", end.isoformat(),
            "--capacity", "10", "--startup", "60"]
    env = {**os.environ, "FORESIGHT_CLICKHOUSE__DATABASE": db, "FORESIGHT_STATE_DIR": str(tmp_path)}
    for args, message in ((["--service", "nobody", "--policy", "hpa"], "no feature windows"),
                          (["--service", "shop", "--policy", "predictive"], "no forecast model registered"),
                          (["--service", "shop", "--policy", "static:x"], "static:N")):
        proc = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
