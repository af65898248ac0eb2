"""Builds each long-running stage from the settings; the only place that wires stages together."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import psutil

from infra.core.db import client as clickhouse_client
from infra.core.settings import Settings
from ingest.sinks.kafka import KafkaSink
from ingest.spool import Spool
from lb_adapters.actuators.haproxy import HAProxyRuntime
from lb_adapters.controller import WeightController
from lb_adapters.decision_log import DecisionLog
from lb_adapters.features import LatestFeatures
from lb_adapters.predictions import WeightsClient


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
        predictor=WeightsClient(s.serving_url, s.serving_token),
        actuator=HAProxyRuntime(s.haproxy_socket),
        sink=DecisionLog(s.kafka.bootstrap_servers, s.kafka.topic_decisions, s.kafka.kafka_python_options()),
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
