"""Builds each long-running stage from the settings; the only place that wires stages together."""

from __future__ import annotations

import time

from infra.db import client as clickhouse_client
from infra.settings import Settings
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

    started = time.monotonic()
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
