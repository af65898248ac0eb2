"""The KEDA external scaler called the way KEDA calls it: a gRPC client on `externalscaler.ExternalScaler`.

Against the running stack's serving (`/v1/forecast` by service name) and ClickHouse, with rows of a
service of this test's own in `features` (deleted afterwards). Serving "away" is a loopback port
nothing listens on.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from infra.core.db import client as clickhouse_client
from infra.core.ports import free_port
from infra.core.settings import Settings
from lb_adapters.keda import externalscaler_pb2 as pb
from lb_adapters.keda import externalscaler_pb2_grpc as pb_grpc
from lb_adapters.keda.load import LoadSource
from lb_adapters.keda.metric import forecast_peak
from lb_adapters.keda.server import ExternalScaler, TlsFiles, build_server
from lb_adapters.predictions import ForecastClient
from serving.schemas import ForecastRequest

# Requests per whole minute, oldest first, ending with the last whole minute before now.
MINUTE_REQUESTS = [300, 600, 2400, 1200, 900, 600, 1500, 1800]


@pytest.fixture(scope="module")
def service(stack: Settings) -> Iterator[str]:
    name = f"keda-it-{uuid.uuid4().hex[:8]}"
    ch = stack.clickhouse
    cl = clickhouse_client(ch, ch.database)
    end = math.floor(time.time() / 60) * 60
    rows = []
    for i, requests in enumerate(MINUTE_REQUESTS):
        start = end - (len(MINUTE_REQUESTS) - i) * 60
        rows.append({"window_start": dt.datetime.fromtimestamp(start),
                     "window_end": dt.datetime.fromtimestamp(start + 60),
                     "service": name, "instance": "*", "requests": requests, "rate": requests / 60,
                     "emitted_at": int(time.time() * 1000)})
    cl.execute(f"INSERT INTO {ch.database}.features (window_start, window_end, service, instance, requests, rate, "
               "emitted_at) VALUES", rows)
    try:
        yield name
    finally:
        cl.execute(f"ALTER TABLE {ch.database}.features DELETE WHERE service = %(s)s", {"s": name})
        cl.disconnect()


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def scaler(stack: Settings, serving_url: str, clock: Clock | None = None,
           tls: TlsFiles | None = None) -> tuple[grpc.Server, int, LoadSource]:
    ch = stack.clickhouse
    source = LoadSource(ForecastClient(serving_url, stack.serving_token, 10.0),
                        lambda: clickhouse_client(ch, ch.database), ch.database, forecast_max_age_s=120,
                        observed_minutes=5, clock=clock or time.time)
    server, port = build_server(ExternalScaler(source, stream_interval_s=0.2), "127.0.0.1", 0, tls)
    server.start()
    return server, port, source


def ref(service: str, **extra: str) -> pb.ScaledObjectRef:
    return pb.ScaledObjectRef(name="shop", namespace="default", scalerMetadata={
        "scalerAddress": "foresight-keda:19106", "service": service, "targetPerReplica": "5",
        "startupSeconds": "60", "intervalSeconds": "30", **extra})


def observed_candidates(before: float, after: float) -> set[float]:
    """Observed peak of the last 5 whole minutes, for the minute the call started or ended in."""
    out = set()
    first_end = math.floor(before / 60) * 60
    for end in {first_end, math.floor(after / 60) * 60}:
        shift = (end - first_end) // 60  # minutes passed since the rows were written
        last5 = [*MINUTE_REQUESTS, *[0] * shift][-5:]
        out.add(max(last5) / 60)
    return out


def test_keda_calls_spec_metrics_and_activity_on_the_forecast(stack: Settings, service: str) -> None:
    server, port, _ = scaler(stack, stack.serving_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            spec = stub.GetMetricSpec(ref(service), timeout=10)
            assert [(m.metricName, m.targetSize, m.targetSizeFloat) for m in spec.metricSpecs] == \
                [(f"foresight-{service}", 5, 5.0)]
            # KEDA asks for the metric by the name the spec gave (less its own `sN-` prefix).
            before = time.time()
            got = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(service),
                                                       metricName=f"foresight-{service}"), timeout=30)
            after = time.time()
            direct = ForecastClient(stack.serving_url, stack.serving_token, 30).forecast(
                ForecastRequest(service=service, horizon=3))
            [value] = got.metricValues
            assert value.metricName == f"foresight-{service}"
            expected = {forecast_peak(direct, 0.9, now, 90) for now in (before, after)}
            assert any(math.isclose(value.metricValueFloat, e or -1, rel_tol=1e-6) for e in expected), \
                (value.metricValueFloat, expected)
            assert value.metricValue == math.ceil(value.metricValueFloat)
            assert stub.IsActive(ref(service), timeout=30).result is (value.metricValueFloat > 0)
            assert stub.IsActive(ref(service, activationValue="1000000"), timeout=30).result is False
            stream = stub.StreamIsActive(ref(service), timeout=30)
            assert next(stream).result is (value.metricValueFloat > 0)
            stream.cancel()
    finally:
        server.stop(0)


def test_bad_metadata_is_invalid_argument(stack: Settings, service: str) -> None:
    server, port, _ = scaler(stack, stack.serving_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetMetricSpec(ref(service, targetPerReplica="lots"), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "targetPerReplica" in (caught.value.details() or "")
    finally:
        server.stop(0)


def test_stale_predictions_fall_back_to_observed_load_and_say_so(
        stack: Settings, service: str, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    server, port, source = scaler(stack, stack.serving_url, clock)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            request = pb.GetMetricsRequest(scaledObjectRef=ref(service), metricName=f"foresight-{service}")
            stub.GetMetrics(request, timeout=30)  # a good forecast, remembered
            source.forecasts.close()
            source.forecasts = ForecastClient(f"http://127.0.0.1:{free_port()}", None, 2.0)  # serving away
            kept = stub.GetMetrics(request, timeout=30).metricValues[0].metricValueFloat
            assert REGISTRY.get_sample_value("foresight_keda_load_rps", {"service": service,
                                                                          "source": "forecast"}) == kept
            fallbacks = REGISTRY.get_sample_value("foresight_keda_fallbacks_total", {"service": service}) or 0
            clock.offset = 121  # the remembered forecast is now past forecast_max_age_s
            with caplog.at_level(logging.WARNING, logger="lb_adapters.keda.load"):
                before = time.time()
                observed = stub.GetMetrics(request, timeout=30).metricValues[0].metricValueFloat
                after = time.time() + clock.offset
            assert observed in observed_candidates(before + clock.offset, after)
            assert REGISTRY.get_sample_value("foresight_keda_fallbacks_total", {"service": service}) == fallbacks + 1
            assert any("stale predictions" in r.getMessage() and "unreachable" in r.getMessage()
                       for r in caplog.records)
    finally:
        server.stop(0)


def test_no_forecast_and_no_observed_load_is_unavailable(stack: Settings) -> None:
    server, port, _ = scaler(stack, f"http://127.0.0.1:{free_port()}")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ExternalScalerStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.IsActive(ref(f"keda-none-{uuid.uuid4().hex[:8]}"), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "holding" in (caught.value.details() or "")
    finally:
        server.stop(0)


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_with_client_certificates(stack: Settings, service: str, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "foresight-keda")
    client_cert, client_key = _self_signed(tmp_path, "keda-operator")
    server, port, _ = scaler(stack, stack.serving_url, tls=TlsFiles(cert, key, client_ca=client_cert))
    override = (("grpc.ssl_target_name_override", "foresight-keda"),)
    try:
        keda = grpc.ssl_channel_credentials(cert.read_bytes(), client_key.read_bytes(), client_cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", keda, options=override) as channel:
            spec = pb_grpc.ExternalScalerStub(channel).GetMetricSpec(ref(service), timeout=10)
            assert spec.metricSpecs[0].targetSizeFloat == 5.0
        anonymous = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", anonymous, options=override) as channel, \
                pytest.raises(grpc.RpcError):
            pb_grpc.ExternalScalerStub(channel).GetMetricSpec(ref(service), timeout=5)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError):
            pb_grpc.ExternalScalerStub(channel).GetMetricSpec(ref(service), timeout=5)
    finally:
        server.stop(0)


def test_the_keda_scaler_command_serves_until_sigterm(stack: Settings, service: str, tmp_path: Path) -> None:
    """`foresight keda-scaler` as KEDA meets it: a process, gRPC on its port, Prometheus metrics, clean stop."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from infra.core.ports import free_ports

    port = free_ports(2)
    env = {**os.environ, "FORESIGHT_KEDA__PORT": str(port), "FORESIGHT_KEDA__METRICS_PORT": str(port + 1)}
    log = (tmp_path / "scaler.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "keda-scaler"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = pb_grpc.ExternalScalerStub(channel)
            spec = stub.GetMetricSpec(ref(service), timeout=10)
            value = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref(service),
                                                         metricName=spec.metricSpecs[0].metricName), timeout=30)
            assert value.metricValues[0].metricValueFloat >= 0
        metrics = httpx.get(f"http://127.0.0.1:{port + 1}/metrics", timeout=10).text
        assert 'foresight_keda_calls_total{method="GetMetrics",outcome="forecast"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "KEDA external scaler on 127.0.0.1:" in (tmp_path / "scaler.log").read_text()
