"""`foresight decisions --json`: each decision with its reason, the prediction values behind it (its
`prediction_refs` resolved in `predictions`) and the feature windows before it, read from a scratch_db
ClickHouse database that the real DecisionLog wrote (Kafka: the stack's broker, a topic of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaProducer

from infra.core.db import client
from infra.core.settings import ClickHouseSettings, Settings
from infra.core.spool import Spool
from lb_adapters.decision_log import DecisionLog
from lb_adapters.schemas import Decision, PredictionRecord

T = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
T_MS = int(T.timestamp() * 1000)




def test_decisions_are_listed_with_their_predictions_and_features(core_stack: Settings, scratch_db: ClickHouseSettings,
                                                                  tmp_path: Path) -> None:
    log = DecisionLog(f"t{uuid.uuid4().hex[:8]}.decisions", scratch_db.database, Spool(tmp_path / "spool", 1 << 22),
                      producer_factory=lambda: KafkaProducer(bootstrap_servers=core_stack.kafka.bootstrap_servers),
                      clickhouse_factory=lambda: client(scratch_db))
    forecast = [PredictionRecord(ts=T_MS, kind="forecast", service="shop", model="mlp-quantile", model_version="v9",
                                 horizon_s=h, quantile=q, value=100.0 + h + q) for h in (60, 120) for q in (0.5, 0.9)]
    scale = Decision(ts=T_MS, service="shop", actuator="scaler", target="shop", action="scale", before=2, after=4,
                     reason="p90 forecast 210 req/s > 2 x 80 req/s", prediction_ref="mlp-quantile@v9",
                     outcome="applied")
    other = Decision(ts=T_MS + 5, service="cart", actuator="haproxy", target="cart/s1", action="set_weight",
                     before=100, after=50, reason="slow", prediction_ref="latency@baseline", outcome="applied")
    log.publish([scale], forecast)
    log.publish([other])
    assert log.pending == 0
    log.close()
    cl = client(scratch_db)
    try:
        cl.execute(f"INSERT INTO {scratch_db.database}.features (window_start, window_end, service, instance, requests,"
                   " latency_p99_ms, emitted_at) VALUES",
                   [(T - timedelta(seconds=10 * k), T - timedelta(seconds=10 * (k - 1)), "shop", inst, 100 + k, 9.5, 1)
                    for k in range(1, 4) for inst in ("*", "s1")])
    finally:
        cl.disconnect()

    env = {**os.environ, "FORESIGHT_CLICKHOUSE__DATABASE": scratch_db.database}
    proc = subprocess.run([sys.executable, "-m", "infra.cli", "decisions", "--service", "shop", "--since",
                           T.isoformat(), "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(proc.stdout)
    assert (row["target"], row["after"], row["reason"]) == ("shop", 4.0, scale.reason)
    (pred,) = row["predictions"]
    assert pred["ref"] == forecast[0].ref() and pred["resolved"]
    assert pred["values"] == [{"horizon_s": p.horizon_s, "quantile": p.quantile, "value": p.value} for p in forecast]
    assert [w["instance"] for w in row["features"]] == ["*"] * 3  # the service's windows; `shop` is no instance
    assert [w["requests"] for w in row["features"]] == [103, 102, 101]

    text = subprocess.run([sys.executable, "-m", "infra.cli", "decisions", "--since", T.isoformat()], env=env,
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "p90 forecast 210" in text.stdout and "cart/s1" in text.stdout
