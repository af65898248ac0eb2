"""Cluster settings reach the clients: Kafka SASL/TLS (kafka-python, aiokafka, Faust), ClickHouse TLS and
credentials, a `ray://` address; secrets are SecretStr, masked by `foresight config`, or read from files."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from infra.core.settings import ClickHouseSettings, KafkaSettings, RaySettings, Settings, load_settings

SASL_ENV = {
    "FORESIGHT_KAFKA__BOOTSTRAP_SERVERS": "kafka-0:9093,kafka-1:9093,kafka-2:9093",
    "FORESIGHT_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
    "FORESIGHT_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
    "FORESIGHT_KAFKA__SASL_USERNAME": "foresight",
    "FORESIGHT_KAFKA__SASL_PASSWORD": "kafka-pw-1234",
}


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def env_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    monkeypatch.chdir(Path("/"))  # no foresight.toml picked up
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load_settings()


def test_kafka_sasl_scram_over_tls_reaches_kafka_python(monkeypatch: pytest.MonkeyPatch, certs: tuple[Path, Path]
                                                        ) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    from infra.core.kafka_admin import client_config
    from ingest.sinks.kafka import producer_config

    s = env_settings(monkeypatch, {**SASL_ENV, "FORESIGHT_KAFKA__SSL_CAFILE": str(certs[0])})
    options = s.kafka.kafka_python_options()
    assert options == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                       "sasl_plain_username": "foresight", "sasl_plain_password": "kafka-pw-1234",
                       "ssl_cafile": str(certs[0]), "ssl_certfile": None, "ssl_keyfile": None,
                       "ssl_check_hostname": True}
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):  # every key is one the client knows
        assert set(options) <= set(client.DEFAULT_CONFIG), client
    config = client_config(s.kafka, **producer_config(s.kafka))  # what the ingest sink's producer gets
    assert {k: config[k] for k in options} == options
    assert config["bootstrap_servers"] == ["kafka-0:9093", "kafka-1:9093", "kafka-2:9093"]


def test_kafka_sasl_plain_reaches_aiokafka_and_faust(monkeypatch: pytest.MonkeyPatch, certs: tuple[Path, Path]
                                                     ) -> None:
    from aiokafka import AIOKafkaConsumer
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.app import broker_credentials, faust_broker_url

    s = env_settings(monkeypatch, {**SASL_ENV, "FORESIGHT_KAFKA__SASL_MECHANISM": "PLAIN",
                                   "FORESIGHT_KAFKA__SSL_CAFILE": str(certs[0])})
    direct = s.kafka.aiokafka_options()
    via_faust = dict(credentials_to_aiokafka_auth(broker_credentials(s.kafka)))
    for options in (direct, via_faust):
        assert (options["security_protocol"], options["sasl_mechanism"], options["sasl_plain_username"],
                options["sasl_plain_password"]) == ("SASL_SSL", "PLAIN", "foresight", "kafka-pw-1234")
        assert options["ssl_context"].check_hostname

        async def build(opts: dict[str, Any] = options) -> tuple[str, str]:
            consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka.bootstrap_servers.split(","), **opts)
            client = consumer._client
            return client._security_protocol, client._sasl_mechanism

        assert asyncio.run(build()) == ("SASL_SSL", "PLAIN")
    assert faust_broker_url(s.kafka.bootstrap_servers) == \
        "kafka://kafka-0:9093;kafka://kafka-1:9093;kafka://kafka-2:9093"


def test_kafka_tls_with_a_client_certificate(certs: tuple[Path, Path]) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.app import broker_credentials

    kafka = KafkaSettings(security_protocol="SSL", ssl_cafile=certs[0], ssl_certfile=certs[0], ssl_keyfile=certs[1])
    assert kafka.kafka_python_options()["ssl_certfile"] == str(certs[0])
    assert credentials_to_aiokafka_auth(broker_credentials(kafka))["security_protocol"] == "SSL"
    assert broker_credentials(KafkaSettings()) is None  # plaintext: Faust's default


@pytest.mark.parametrize(("fields", "message"), [
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "sasl_password"),
    ({"sasl_mechanism": "PLAIN", "sasl_username": "u"}, "use SASL_SSL"),
    ({"ssl_cafile": "/ca.pem"}, "use SSL or SASL_SSL"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
])
def test_incomplete_kafka_security_is_a_clear_error(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        KafkaSettings(**fields)


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-a-file\n")
    kafka = KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256", sasl_username="u",
                          sasl_password_file=tmp_path / "pw")
    assert kafka.kafka_python_options()["sasl_plain_password"] == "from-a-file"
    assert ClickHouseSettings(password_file=tmp_path / "pw").client_options()["password"] == "from-a-file"
    with pytest.raises(ValidationError, match="both set"):
        ClickHouseSettings(password="x", password_file=tmp_path / "pw")
    with pytest.raises(ValidationError, match=r"password_file .*nope"):
        ClickHouseSettings(password_file=tmp_path / "nope")


def test_clickhouse_tls_and_credentials_reach_clickhouse_driver(monkeypatch: pytest.MonkeyPatch,
                                                                certs: tuple[Path, Path]) -> None:
    from infra.core.db import client

    s = env_settings(monkeypatch, {
        "FORESIGHT_CLICKHOUSE__HOST": "clickhouse.db", "FORESIGHT_CLICKHOUSE__TCP_PORT": "9440",
        "FORESIGHT_CLICKHOUSE__USER": "foresight", "FORESIGHT_CLICKHOUSE__PASSWORD": "ch-pw",
        "FORESIGHT_CLICKHOUSE__SECURE": "true", "FORESIGHT_CLICKHOUSE__CA_CERTS": str(certs[0])})
    conn = client(s.clickhouse, "foresight").connection
    assert (list(conn.hosts), conn.user, conn.password, conn.database) == ([("clickhouse.db", 9440)], "foresight",
                                                                      "ch-pw", "foresight")
    assert conn.secure_socket and conn.verify_cert
    assert conn.ssl_options["ca_certs"] == str(certs[0])
    plain = client(ClickHouseSettings()).connection
    assert not plain.secure_socket


def test_ray_address_for_serving_and_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from serving.runner import init_ray

    s = env_settings(monkeypatch, {"FORESIGHT_RAY__ADDRESS": "ray://foresight-serving-head-svc:10001"})
    assert s.ray.address == "ray://foresight-serving-head-svc:10001"
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))  # a fake: no Ray cluster to reach here
    init_ray(s.ray, Path("/nonexistent"))
    assert calls == [{"address": "ray://foresight-serving-head-svc:10001"}]
    for good in ("auto", "10.0.0.5:6379", "ray://head:10001"):
        assert RaySettings(address=good).address == good
    for bad in ("http://head:10001", "ray://head", "head"):
        with pytest.raises(ValidationError, match="ray://host:port"):
            RaySettings(address=bad)


def test_foresight_config_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.cli import app

    env = {**SASL_ENV, "FORESIGHT_CLICKHOUSE__PASSWORD": "ch-pw-5678", "FORESIGHT_SERVING__TOKEN": "serve-tok-9",
           "FORESIGHT_INGEST__HTTP_TOKEN": "ingest-tok-0", "FORESIGHT_DASHBOARD__TOKEN": "dash-tok-3"}
    monkeypatch.chdir(Path("/"))
    result = CliRunner().invoke(app, ["config"], env=env)
    assert result.exit_code == 0, result.output
    for secret in ("kafka-pw-1234", "ch-pw-5678", "serve-tok-9", "ingest-tok-0", "dash-tok-3"):
        assert secret not in result.output
    shown = json.loads(result.output)
    assert shown["serving"]["token"] == shown["clickhouse"]["password"] == shown["dashboard"]["token"] == "**********"
    assert shown["kafka"]["sasl_username"] == "foresight"


def test_dashboard_token_from_a_file_in_clear_through_its_accessor(tmp_path: Path) -> None:
    (tmp_path / "dash").write_text("dash-tok-4\n")
    s = Settings(state_dir=tmp_path, dashboard={"token_file": tmp_path / "dash"})
    assert s.dashboard_token == "dash-tok-4"
    assert "dash-tok-4" not in repr(s.dashboard)


def test_the_controllers_and_record_sink_kafka_clients_carry_the_cluster_security(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every kafka-python client a cluster process builds (decision log, record sink, dead letters)."""
    import kafka

    import infra.workers as workers

    s = env_settings(monkeypatch, {**SASL_ENV, "FORESIGHT_STATE_DIR": str(tmp_path)})
    made: list[dict[str, Any]] = []

    class Recorded:
        def __init__(self, *_topics: str, **config: Any) -> None:
            made.append(config)

    monkeypatch.setattr(kafka, "KafkaProducer", Recorded)
    monkeypatch.setattr(kafka, "KafkaConsumer", Recorded)
    workers.record_consumer(s)
    workers.dead_letter_sender(s)
    workers.decision_log(s, "test")._producer_factory()
    assert len(made) == 3
    for config in made:
        assert config["security_protocol"] == "SASL_SSL" and config["sasl_plain_password"] == "kafka-pw-1234"
