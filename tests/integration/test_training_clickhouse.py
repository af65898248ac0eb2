"""`foresight train --source clickhouse --workers 2`: a service's feature windows in ClickHouse become a model,
trained by Ray Train's TorchTrainer with two data-parallel workers on the local Ray."""

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from infra.core.db import client
from infra.core.model_registry import read_manifest
from infra.core.settings import Settings


def test_train_from_clickhouse_features(stack: Settings) -> None:
    service = f"train-{uuid.uuid4().hex[:8]}"
    start = datetime(2026, 1, 5, tzinfo=UTC)
    minutes = 4 * 1440
    rng = np.random.default_rng(5)
    rate = 3 + 2 * np.sin(2 * np.pi * np.arange(minutes) / 1440)
    rows = []
    for m in range(minutes):
        if 2000 <= m < 2100:  # the pipeline was away: no windows at all
            continue
        for w in range(6):  # 10 s windows, service-wide rows
            ws = start + timedelta(seconds=60 * m + 10 * w)
            n = int(rng.poisson(rate[m] * 10))
            rows.append((ws, ws + timedelta(seconds=10), service, "*", n, n / 10.0, n, 0, 0, 0, 5.0, 9.0, 12.0,
                         100 * n, 0, 1))
    ch = stack.clickhouse
    cl = client(ch, ch.database)
    try:
        cl.execute(f"INSERT INTO {ch.database}.features (window_start, window_end, service, instance, requests, rate, "
                   "status_2xx, status_3xx, status_4xx, status_5xx, latency_p50_ms, latency_p90_ms, latency_p99_ms, "
                   "bytes_sent, late_events, emitted_at) VALUES", rows)
    finally:
        cl.disconnect()
    proc = subprocess.run(
        [sys.executable, "-m", "infra.cli", "train", "--source", "clickhouse", "--service", service,
         "--epochs", "1", "--hidden", "16", "--workers", "2"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    manifest = read_manifest(Path(summary["path"]))
    assert manifest.config["data"] == {"source": "clickhouse", "database": ch.database, "table": "features",
                                       "service": service, "from_s": None, "to_s": None}
    assert manifest.config["workers"] == 2
    holdout = manifest.metrics["holdout"]["5"]
    # the hold-out is the last 15% of 4 days: every origin has data, and both models were scored on it.
    assert holdout["model"]["n"] == holdout["seasonal_naive"]["n"] > 500
