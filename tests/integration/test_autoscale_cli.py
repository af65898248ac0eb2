"""`foresight autoscale --once --json` as an operator runs it: a service from foresight.toml scaled
through the Kubernetes scaler (against the recording fake of the API server, no Kubernetes here),
its load read from the stack's ClickHouse (a database of this test's own), its decision recorded on
the stack's Kafka (a topic of this test's own). Serving is pointed at a closed port, so the decision
is the reactive fallback's, and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer

from infra.core.db import client as clickhouse_client
from infra.core.db import migrate
from infra.core.kafka_admin import ensure_topics
from infra.core.ports import free_port
from infra.core.settings import Settings, load_settings
from tests.unit.scaler_fakes import fake_kubernetes_api

SERVICE = "as-cli"


@pytest.fixture()
def isolated() -> Iterator[Settings]:
    """This test's own ClickHouse database and decision topic on the stack's servers (which it never
    starts or stops)."""
    base = load_settings()
    run = os.getpid()
    s = base.model_copy(update={
        "clickhouse": base.clickhouse.model_copy(update={"database": f"fs_autoscale_cli_{run}"}),
        "kafka": base.kafka.model_copy(update={"topic_decisions": f"fs.test.autoscale{run}.decisions"})})
    migrate(s.clickhouse)
    ensure_topics(s.kafka)
    try:
        yield s
    finally:
        cl = clickhouse_client(s.clickhouse)
        cl.execute(f"DROP DATABASE IF EXISTS {s.clickhouse.database}")
        cl.disconnect()
        admin = KafkaAdminClient(bootstrap_servers=s.kafka.bootstrap_servers)
        try:
            admin.delete_topics([s.kafka.topic_decisions])
        finally:
            admin.close()


def test_autoscale_once_scales_a_kubernetes_deployment_on_the_fallback_and_records_it(
        isolated: Settings, tmp_path: Path) -> None:
    s = isolated
    now = int(time.time()) // 10 * 10
    cl = clickhouse_client(s.clickhouse, s.clickhouse.database)
    rows = [(datetime.fromtimestamp(e - 10, UTC), datetime.fromtimestamp(e, UTC), SERVICE, "*", 10 * r, float(r))
            for e, r in [*((e, 40) for e in range(now - 180, now - 10, 10)), (now - 10, 55)]]
    cl.execute(f"INSERT INTO {s.clickhouse.database}.features (window_start, window_end, service, instance, "
               "requests, rate) VALUES", rows)
    cl.disconnect()
    with fake_kubernetes_api() as (api_url, api):
        api.replicas["web"] = 2
        config = tmp_path / "foresight.toml"
        config.write_text(f"""
[clickhouse]
database = "{s.clickhouse.database}"

[kafka]
topic_decisions = "{s.kafka.topic_decisions}"

[serving]
port = {free_port()}

[[autoscaler.services]]
name = "{SERVICE}"
capacity_rps = 10
startup_s = 30
scaler = {{ kind = "kubernetes", server = "{api_url}", namespace = "shop", deployment = "web" }}
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORESIGHT_")}
        proc = subprocess.run([sys.executable, "-m", "infra.cli", "--config", str(config), "autoscale", "--once",
                               "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    decision = json.loads(proc.stdout.strip().splitlines()[-1])
    assert decision["service"] == SERVICE and decision["target"] == "kubernetes/shop/web"
    # reactive at target 0.8: ceil(55 / 8) = 7; HPA's step limit, up by max(4 pods, 100%) per 15 s: 6
    assert (decision["before"], decision["after"], decision["outcome"]) == (2, 6, "applied")
    assert decision["reason"].startswith("serving unreachable") and "fallback" in decision["reason"]
    assert api.replicas["web"] == 6
    assert [(r.method, r.body) for r in api.requests if r.method == "PATCH"] == [("PATCH", {"spec": {"replicas": 6}})]
    consumer = KafkaConsumer(s.kafka.topic_decisions, bootstrap_servers=s.kafka.bootstrap_servers,
                             auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    try:
        recorded = [json.loads(m.value) for m in consumer]
    finally:
        consumer.close()
    assert [(d["service"], d["after"], d["outcome"]) for d in recorded] == [(SERVICE, 6, "applied")]
