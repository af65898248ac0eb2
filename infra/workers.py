"""Builds each long-running stage from the settings; the only place that wires stages together."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from infra.core.db import client as clickhouse_client
from infra.core.settings import AutoscaledService, PoolScalerSettings, RayServeScalerSettings, Settings
from ingest.sinks.kafka import KafkaSink
from ingest.spool import Spool
from lb_adapters.actuators.haproxy import HAProxyRuntime
from lb_adapters.controller import WeightController
from lb_adapters.decision_log import DecisionLog
from lb_adapters.features import LatestFeatures
from lb_adapters.predictions import WeightsClient

if TYPE_CHECKING:
    from lb_adapters.actuators.scalers.base import Scaler
    from lb_adapters.autoscaler import Autoscaler


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


def build_weight_controller(s: Settings) -> WeightController:
    return WeightController(
        features=LatestFeatures(clickhouse_client(s.clickhouse), s.clickhouse.database),
        predictor=WeightsClient(s.serving_url, s.serving.token),
        actuator=HAProxyRuntime(s.haproxy_socket),
        sink=DecisionLog(s.kafka.bootstrap_servers, s.kafka.topic_decisions),
        cfg=s.adapter,
        backend=s.haproxy.backend,
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
    from ingest.sources.scrape import run_scrape_ingest

    sink = kafka_sink(s, "scrape")
    ingest = s.ingest.model_copy(update={"scrape_targets": targets}) if targets else s.ingest
    try:
        run_scrape_ingest(ingest, sink, default_targets=[haproxy_exporter_url(s)], metrics_port=metrics_port)
    finally:
        sink.close()


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
    sink = QueuedSink(lambda: DecisionLog(s.kafka.bootstrap_servers, s.kafka.topic_decisions))
    nginx_dir = s.state / "nginx"
    sync = MembershipSync(
        lambda: Registry(s.registry_endpoint, s.registry.prefix, s.registry.timeout_s),
        SyncConfig(services=services, holder=f"{socket.gethostname()}-{os.getpid()}",
                   leader_ttl_s=s.registry.leader_ttl_s, del_timeout_s=s.sync.del_timeout_s),
        HAProxyRuntime(s.haproxy_socket),
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


def build_autoscaler(s: Settings, only: str | None = None) -> Autoscaler:
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
        forecaster=ForecastClient(s.serving_url, s.serving.token, timeout_s=s.autoscaler.serving_timeout_s),
        sink=DecisionLog(s.kafka.bootstrap_servers, s.kafka.topic_decisions),
        cfg=s.autoscaler,
    )
