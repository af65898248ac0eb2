"""Latest feature window of each instance of a service, read from ClickHouse `features`."""

from __future__ import annotations

from clickhouse_driver import Client

from infra.core.features_table import latest_instance_windows
from serving.schemas import InstanceFeatures


class LatestFeatures:
    def __init__(self, client: Client, database: str) -> None:
        self.client = client
        self.database = database

    def for_service(self, service: str, max_age_s: int) -> list[InstanceFeatures]:
        return [
            InstanceFeatures(instance=w.instance, latency_p99_ms=w.latency_p99_ms, latency_p50_ms=w.latency_p50_ms,
                             requests=w.requests, error_rate=(w.status_5xx / w.requests) if w.requests else 0.0,
                             queue=w.queue_max)
            for w in latest_instance_windows(self.client, self.database, service, max_age_s)
        ]
