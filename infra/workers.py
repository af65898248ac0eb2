"""Builds each long-running stage from the settings; the only place that wires stages together."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from infra.core.db import client as clickhouse_client
from infra.core.settings import Settings
from infra.core.spool import Spool
from ingest.schemas import Rejection
from ingest.sinks.kafka import KafkaSink
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


def record_consumer(s: Settings, topics: list[str] | None = None) -> Any:
    """The record sink's consumer: its own group, offsets committed by the sink after ClickHouse acknowledged."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        *(topics or [s.kafka.topic_access, s.kafka.topic_metrics]),
        bootstrap_servers=s.kafka.bootstrap_servers.split(","), group_id=s.record.group_id,
        client_id="foresight-record", enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=int(s.streams.session_timeout_s * 1000),
        heartbeat_interval_ms=int(s.streams.heartbeat_interval_s * 1000),
        max_partition_fetch_bytes=4 * 1024 * 1024, reconnect_backoff_max_ms=2_000,
    )


def dead_letter_sender(s: Settings) -> Callable[[list[Rejection]], None]:
    """Sends rejections to `fs.dlq` and waits for every acknowledgement (raises if one fails)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers.split(","), acks="all",
                             client_id="foresight-record-dlq", linger_ms=5)

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

    def producer() -> KafkaProducer:
        return KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers.split(","), client_id=f"foresight-{name}",
                             acks="all", linger_ms=5, enable_idempotence=False,
                             max_in_flight_requests_per_connection=1, max_block_ms=3_000,
                             bootstrap_timeout_ms=3_000, request_timeout_ms=4_000, delivery_timeout_ms=5_000,
                             reconnect_backoff_max_ms=2_000)

    spool = Spool(s.decision_spool_dir / name, s.record.decision_spool_max_bytes)
    return DecisionLog(s.kafka.topic_decisions, s.clickhouse.database, spool, producer_factory=producer,
                       clickhouse_factory=lambda: clickhouse_client(s.clickhouse), retry_s=s.record.decision_retry_s)


def build_weight_controller(s: Settings, name: str = "adapt") -> WeightController:
    """`name`: whose decision spool (one process writes a spool: `adapt`, `demo`, a test's own)."""
    return WeightController(
        features=LatestFeatures(clickhouse_client(s.clickhouse), s.clickhouse.database),
        predictor=WeightsClient(s.serving_url, s.serving.token),
        actuator=HAProxyRuntime(s.haproxy_socket),
        sink=decision_log(s, name),
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
