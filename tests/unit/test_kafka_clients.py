"""Every Kafka client the code builds carries the cluster's SASL/TLS: only infra/core/kafka_admin.py constructs
kafka-python or aiokafka clients (from `KafkaSettings`); every other module goes through its factories."""

from __future__ import annotations

import ast
import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from infra.core import kafka_admin
from infra.core.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["infra", "ingest", "streams", "serving", "training", "lb_adapters"]
CLIENTS = {"KafkaConsumer", "KafkaProducer", "KafkaAdminClient", "AIOKafkaConsumer", "AIOKafkaProducer",
           "AIOKafkaClient", "AIOKafkaAdminClient"}
ALLOWED = {
    "infra/core/kafka_admin.py": "the factories themselves",
    # checks kafka-python's internals on a producer that never connects (bootstrap 127.0.0.1:1)
    "ingest/compat/kafka_python.py": "a library probe, no connection",
}
SASL = KafkaSettings(bootstrap_servers="kafka-0:9093,kafka-1:9093", security_protocol="SASL_SSL",
                     sasl_mechanism="SCRAM-SHA-512", sasl_username="foresight", sasl_password="kafka-pw-1234")


def client_calls(source: str) -> list[tuple[int, str]]:
    """(line, class) of every call that constructs a Kafka client: `KafkaConsumer(...)`, `kafka.KafkaConsumer(...)`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in CLIENTS:
                found.append((node.lineno, name))
    return found


def test_no_module_builds_a_kafka_client_of_its_own() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line}: {name}(...) (use infra.core.kafka_admin's factories)"
                 for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
                 if str(path.relative_to(ROOT)) not in ALLOWED
                 for line, name in client_calls(path.read_text())]
    assert offenders == []


def test_the_scan_finds_constructions() -> None:
    source = "import kafka\nfrom aiokafka import AIOKafkaConsumer\nkafka.KafkaProducer(bootstrap_servers='x')\n" \
             "c = AIOKafkaConsumer('t')\nkafka_admin.kafka_consumer(s)\n"
    assert client_calls(source) == [(3, "KafkaProducer"), (4, "AIOKafkaConsumer")]
    for path in ALLOWED:  # the allowed files exist and do build clients (else the entry is stale)
        assert client_calls((ROOT / path).read_text()), path


def test_the_kafka_python_factories_pass_the_cluster_security(monkeypatch: pytest.MonkeyPatch) -> None:
    import kafka

    made: list[tuple[str, tuple[str, ...], dict[str, Any]]] = []

    def recorder(name: str) -> Any:
        def build(*topics: str, **config: Any) -> None:
            made.append((name, topics, config))
        return build

    for name in ("KafkaConsumer", "KafkaProducer", "KafkaAdminClient"):
        monkeypatch.setattr(kafka, name, recorder(name))
    kafka_admin.kafka_consumer(SASL, "fs.access", group_id="g")
    kafka_admin.kafka_producer(SASL, acks="all")
    # a caller cannot drop the security by passing its own
    kafka_admin.kafka_admin_client(SASL, client_id="x", security_protocol="PLAINTEXT")
    assert [(n, t) for n, t, _ in made] == [("KafkaConsumer", ("fs.access",)), ("KafkaProducer", ()),
                                           ("KafkaAdminClient", ())]
    for _, _, config in made:
        assert config["bootstrap_servers"] == ["kafka-0:9093", "kafka-1:9093"]
        assert (config["security_protocol"], config["sasl_mechanism"], config["sasl_plain_password"]) == \
            ("SASL_SSL", "SCRAM-SHA-512", "kafka-pw-1234")
    assert made[0][2]["group_id"] == "g" and made[1][2]["acks"] == "all"


def test_the_aiokafka_factory_passes_the_cluster_security() -> None:
    async def build() -> tuple[str, str | None, list[str]]:
        consumer = kafka_admin.aiokafka_consumer(SASL, enable_auto_commit=False)
        client = consumer._client
        return client._security_protocol, client._sasl_mechanism, list(client._bootstrap_servers)

    assert asyncio.run(build()) == ("SASL_SSL", "SCRAM-SHA-512", ["kafka-0:9093", "kafka-1:9093"])


def test_only_a_close_cancelling_the_metadata_refresh_is_kept_out_of_the_log(caplog: pytest.LogCaptureFixture) -> None:
    from kafka.errors import Cancelled, KafkaConnectionError

    log = logging.getLogger("kafka.cluster")  # as kafka-python 3.0 logs it; kafka_admin (imported) filters it
    with caplog.at_level(logging.ERROR, logger="kafka.cluster"):
        log.error("Metadata refresh: failed %s", Cancelled())
        log.error("Metadata refresh: failed %s", KafkaConnectionError("111 ECONNREFUSED"))
        log.error("Metadata refresh loop error: %s", Cancelled())
    assert [r.getMessage() for r in caplog.records] == [
        "Metadata refresh: failed KafkaConnectionError: 111 ECONNREFUSED", "Metadata refresh loop error: Cancelled"]
