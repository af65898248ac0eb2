"""Builds each long-running stage from the settings; the only place that wires stages together."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from infra.core.db import client as clickhouse_client
from infra.core.settings import AutoscaledService, PoolScalerSettings, RayServeScalerSettings, Settings
from infra.core.spool import Spool
from ingest.schemas import Rejection
from ingest.sinks.kafka import KafkaSink
from lb_adapters.actuators.haproxy import HAProxyRuntime
from lb_adapters.controller import WeightController
from lb_adapters.decision_log import DecisionLog
from lb_adapters.features import LatestFeatures
from lb_adapters.policies.drain import health_knobs
from lb_adapters.predictions import WeightsClient

if TYPE_CHECKING:
    import grpc

    from lb_adapters.actuators.scalers.base import Scaler
    from lb_adapters.autoscaler import Autoscaler
    from lb_adapters.health import HealthController


def run_stream_worker(s: Settings) -> None:
    import faust
    from prometheus_client import start_http_server

    from streams.app import FeatureStream
    from streams.sinks.clickhouse import FeatureSink

    # From the process's own start, imports included: "first event within N s of starting" means that.
    started = time.monotonic() - (time.time() - psutil.Process().create_time())
    sink = FeatureSink(clickhouse_client(s.clickhouse), s.clickhouse.database)
    fs = FeatureStream(s.streams, s.kafka, sink, data_dir=s.state / "faust", started_at=started)
    start_http_server(s.streams.metrics_port, addr="127.0.0.1", registry=fs.metrics.registry)
    faust.Worker(fs.app, loglevel="INFO", quiet=True).execute_from_commandline()


def record_consumer(s: Settings, topics: list[str] | None = None) -> Any:
    """The record sink's consumer: its own group, offsets committed by the sink after ClickHouse acknowledged."""
    from infra.core.kafka_admin import kafka_consumer

    return kafka_consumer(
        s.kafka, *(topics or [s.kafka.topic_access, s.kafka.topic_metrics]), group_id=s.record.group_id,
        client_id="foresight-record", enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=int(s.streams.session_timeout_s * 1000),
        heartbeat_interval_ms=int(s.streams.heartbeat_interval_s * 1000),
        max_partition_fetch_bytes=4 * 1024 * 1024, reconnect_backoff_max_ms=2_000,
    )


def dead_letter_sender(s: Settings) -> Callable[[list[Rejection]], None]:
    """Sends rejections to `fs.dlq` and waits for every acknowledgement (raises if one fails)."""
    from infra.core.kafka_admin import kafka_producer

    producer = kafka_producer(s.kafka, acks="all", client_id="foresight-record-dlq", linger_ms=5)

    def send(rejections: list[Rejection]) -> None:
        futures = [producer.send(s.kafka.topic_dlq, key=r.source.encode(), value=r.model_dump_json().encode())
                   for r in rejections]
        producer.flush(timeout=30)
        for f in futures:
            f.get(timeout=0)

    return send


def run_record_sink(s: Settings, stop: threading.Event | None = None) -> None:
    """`fs.access` / `fs.metrics` -> ClickHouse `access_events` / `metric_samples` until SIGTERM (or `stop`)."""
    import signal

    from prometheus_client import start_http_server

    from streams.sinks.record import ClickHouseRecordWriter, RecordSink

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    consumer = record_consumer(s)
    sink = RecordSink(consumer, ClickHouseRecordWriter(clickhouse_client(s.clickhouse), s.clickhouse.database),
                      dead_letter_sender(s), s.kafka.topic_metrics, batch_max_rows=s.record.batch_max_rows,
                      flush_s=s.record.flush_s)
    start_http_server(s.record.metrics_port, addr="127.0.0.1", registry=sink.metrics.registry)
    try:
        sink.run(stop)
    finally:
        consumer.close(autocommit=False)


def decision_log(s: Settings, name: str) -> DecisionLog:
    """The durable DecisionSink of one controller process (`name`: its own spool folder, a spool has one
    writer). Nothing connects until the first publish: a dry run needs no broker."""
    from kafka import KafkaProducer

    from infra.core.kafka_admin import kafka_producer

    def producer() -> KafkaProducer:
        return kafka_producer(s.kafka, client_id=f"foresight-{name}", acks="all", linger_ms=5,
                              enable_idempotence=False, max_in_flight_requests_per_connection=1, max_block_ms=3_000,
                              bootstrap_timeout_ms=3_000, request_timeout_ms=4_000, delivery_timeout_ms=5_000,
                              reconnect_backoff_max_ms=2_000)

    spool = Spool(s.decision_spool_dir / name, s.record.decision_spool_max_bytes)
    return DecisionLog(s.kafka.topic_decisions, s.clickhouse.database, spool, producer_factory=producer,
                       clickhouse_factory=lambda: clickhouse_client(s.clickhouse), retry_s=s.record.decision_retry_s)


def build_weight_controller(s: Settings, name: str = "adapt") -> WeightController:
    """`name`: whose decision spool (one process writes a spool: `adapt`, `demo`, a test's own). Holds (drains
    the health controller refused for capacity) are read from the registry each round."""
    from infra.core.service_registry import Registry
    from lb_adapters.health import RegistryHolds

    return WeightController(
        features=LatestFeatures(clickhouse_client(s.clickhouse), s.clickhouse.database),
        predictor=WeightsClient(s.serving_url, s.serving_token),
        actuator=HAProxyRuntime(s.haproxy_runtime),
        sink=decision_log(s, name),
        cfg=s.adapter,
        backend=s.haproxy.backend,
        window_s=s.streams.instance_window,
        overload=health_knobs(s.health),
        holds=RegistryHolds(Registry(s.registry_endpoint, s.registry.prefix, s.registry.timeout_s)),
    )


def build_health_controller(s: Settings, leadership: bool = True, name: str = "health") -> HealthController:
    """The drain controller: risk from serving, state changes through the registry (the sync carries
    them to the balancers); with `leadership`, one copy per service acts (role `health`)."""
    import os
    import socket

    from infra.core.service_registry import Leadership, Registry
    from lb_adapters.health import HealthController
    from lb_adapters.predictions import RiskClient

    h = s.health
    registry = Registry(s.registry_endpoint, s.registry.prefix, s.registry.timeout_s)
    holder = f"health@{socket.gethostname()}:{os.getpid()}"
    leaders: dict[str, Leadership] = {}

    def lead(service: str) -> Leadership | None:
        if not leadership or h.dry_run:
            return None
        if service not in leaders:
            leaders[service] = Leadership(registry, service, holder, ttl_s=s.registry.leader_ttl_s, role="health")
        leaders[service].acquire(timeout=0)
        return leaders[service]

    return HealthController(
        features=LatestFeatures(clickhouse_client(s.clickhouse), s.clickhouse.database),
        predictor=RiskClient(s.serving_url, s.serving_token),
        registry=registry,
        sink=decision_log(s, name),
        knobs=health_knobs(s.health),
        features_max_age_s=h.features_max_age_s, window_s=s.streams.instance_window, dry_run=h.dry_run, leadership=lead,
        interval_s=h.interval_s, model_point=h.drain_at == "model",
    )


def kafka_sink(s: Settings, name: str) -> KafkaSink:
    """A sink with its own disk spool (one per process: a spool is locked by its writer)."""
    spool = Spool(s.spool_dir / name, s.ingest.spool_max_bytes)
    return KafkaSink(s.kafka, s.ingest.batch_max, spool=spool, client_id=f"foresight-ingest-{name}")


def haproxy_exporter_url(s: Settings) -> str:
    return f"http://127.0.0.1:{s.haproxy.exporter_port}/metrics"


def run_syslog(s: Settings) -> None:
    """UDP and TCP syslog in one process, one sink (the stack's `ingest-syslog`)."""
    from ingest.pipeline import serve_syslog_ingest
    from ingest.runtime import run_until_signalled
    from ingest.sources.syslog_tcp import serve_syslog_tcp_ingest

    sink = kafka_sink(s, "syslog")

    async def serve(stop: asyncio.Event) -> None:
        await asyncio.gather(serve_syslog_ingest(s.ingest, sink, stop), serve_syslog_tcp_ingest(s.ingest, sink, stop))

    try:
        run_until_signalled(serve, metrics_port=s.ingest.metrics_port)
    finally:
        sink.close()


def run_tail(s: Settings, paths: list[Path], fmt: str, from_end: bool, metrics_port: int | None) -> None:
    from ingest.sources.tail import run_tail_ingest

    sink = kafka_sink(s, "tail")
    try:
        run_tail_ingest(paths, s.ingest, sink, s.checkpoint_dir, fmt=fmt, from_end=from_end, metrics_port=metrics_port)
    finally:
        sink.close()


def run_http(s: Settings) -> None:
    from ingest.sources.http_api import run_http_ingest

    sink = kafka_sink(s, "http")
    try:
        run_http_ingest(s.ingest, sink, sink)
    finally:
        sink.close()


def run_scrape(s: Settings, targets: list[str], metrics_port: int | None) -> None:
    """`ingest scrape`: the static targets (default the stack's HAProxy exporter) and, with
    `ingest.scrape_registry`, every instance the service registry lists (the pool backends)."""
    from infra.core.service_registry import Registry
    from ingest.sources.scrape import Discover, registry_targets, run_scrape_ingest

    sink = kafka_sink(s, "scrape")
    ingest = s.ingest.model_copy(update={"scrape_targets": targets}) if targets else s.ingest
    registry = Registry(s.registry_endpoint, s.registry.prefix, s.registry.timeout_s)

    def listed() -> list[str]:
        return registry_targets(registry.list())

    discover: Discover | None = listed if ingest.scrape_registry else None
    try:
        run_scrape_ingest(ingest, sink, default_targets=[haproxy_exporter_url(s)], metrics_port=metrics_port,
                          discover=discover)
    finally:
        sink.close()
        registry.close()


def run_registry_sync(s: Settings) -> None:
    """`foresight registry-sync`: HAProxy and nginx membership follow etcd until SIGTERM/SIGINT."""
    import os
    import signal
    import socket
    import threading

    from prometheus_client import start_http_server

    from infra.core.service_registry import Registry
    from lb_adapters.actuators.nginx import NginxUpstreams
    from lb_adapters.sync.engine import MembershipSync, SyncConfig
    from lb_adapters.sync.sink import QueuedSink

    services = s.sync.services or [svc.name for svc in s.pool.services]
    sink = QueuedSink(lambda: decision_log(s, "registry-sync"))
    nginx_dir = s.state / "nginx"
    sync = MembershipSync(
        lambda: Registry(s.registry_endpoint, s.registry.prefix, s.registry.timeout_s),
        SyncConfig(services=services, holder=f"{socket.gethostname()}-{os.getpid()}",
                   leader_ttl_s=s.registry.leader_ttl_s, del_timeout_s=s.sync.del_timeout_s),
        HAProxyRuntime(s.haproxy_runtime),
        NginxUpstreams(nginx_dir / "nginx.conf", nginx_dir / "upstreams", nginx_dir / "error.log", s.nginx.binary),
        sink.publish)
    start_http_server(s.sync.metrics_port, addr="127.0.0.1")
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    sync.start()
    done.wait()
    sync.stop()
    sink.close()


def build_scaler(service: AutoscaledService) -> Scaler:
    """The scaler a configured service names (`autoscaler.services[].scaler.kind`)."""
    from lb_adapters.actuators.scalers.kubernetes import KubernetesScaler, kube_client
    from lb_adapters.actuators.scalers.pool import PoolScaler
    from lb_adapters.actuators.scalers.ray_serve import RayServeScaler

    sc = service.scaler
    if isinstance(sc, PoolScalerSettings):
        return PoolScaler(sc.url, service.name)
    if isinstance(sc, RayServeScalerSettings):
        token_file = sc.token_file or Path.home() / ".ray" / "auth_token"
        token = token_file.read_text().strip() if token_file.is_file() else None
        return RayServeScaler(sc.dashboard_url, sc.app, sc.deployment, token=token)
    return KubernetesScaler(kube_client(sc.server, sc.namespace), sc.namespace, sc.deployment)


def build_autoscaler(s: Settings, only: str | None = None, name: str = "autoscale") -> Autoscaler:
    """The autoscaler of every configured service (or only `only`), recording through the decision log."""
    from lb_adapters.autoscaler import Autoscaler, ScaledService
    from lb_adapters.predictions import ForecastClient
    from lb_adapters.rates import ClickHouseRates

    configured = [svc for svc in s.autoscaler.services if only is None or svc.name == only]
    if only is not None and not configured:
        names = ", ".join(svc.name for svc in s.autoscaler.services) or "none"
        raise ValueError(f"service {only!r} is not in autoscaler.services (configured: {names})")
    return Autoscaler(
        services=[ScaledService(svc, build_scaler(svc)) for svc in configured],
        rates=ClickHouseRates(clickhouse_client(s.clickhouse), s.clickhouse.database),
        forecaster=ForecastClient(s.serving_url, s.serving_token, timeout_s=s.autoscaler.serving_timeout_s),
        sink=decision_log(s, name),
        cfg=s.autoscaler,
    )


def build_keda_scaler(s: Settings) -> tuple[grpc.Server, int]:
    """The KEDA external scaler's gRPC server (not started) and its bound port."""
    from lb_adapters.keda.load import LoadSource
    from lb_adapters.keda.server import ExternalScaler, TlsFiles, build_server
    from lb_adapters.predictions import ForecastClient

    k = s.keda
    if (k.tls_cert_file is None) != (k.tls_key_file is None):
        raise ValueError("keda.tls_cert_file and keda.tls_key_file go together: set both for TLS, or neither")
    tls = TlsFiles(k.tls_cert_file, k.tls_key_file, k.tls_client_ca_file) if k.tls_cert_file and k.tls_key_file \
        else None
    source = LoadSource(ForecastClient(s.serving_url, s.serving_token, k.serving_timeout_s),
                        lambda: clickhouse_client(s.clickhouse, s.clickhouse.database), s.clickhouse.database,
                        k.forecast_max_age_s, k.observed_minutes)
    return build_server(ExternalScaler(source, k.stream_interval_s), k.host, k.port, tls)
