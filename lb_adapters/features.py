"""Latest feature window of each instance of a service, read from ClickHouse `features`."""

from __future__ import annotations

from clickhouse_driver import Client

from serving.schemas import InstanceFeatures
from streams.windows import SERVICE_WIDE


class LatestFeatures:
    def __init__(self, client: Client, database: str) -> None:
        self.client = client
        self.database = database

    def for_service(self, service: str, max_age_s: int) -> list[InstanceFeatures]:
        rows = self.client.execute(
            f"""
            SELECT instance,
                   argMax(latency_p99_ms, window_start), argMax(latency_p50_ms, window_start),
                   argMax(requests, window_start), argMax(status_5xx, window_start)
            FROM {self.database}.features FINAL
            WHERE service = %(service)s AND instance != %(all)s AND window_start >= now() - %(age)s
            GROUP BY instance ORDER BY instance
            """,
            {"service": service, "all": SERVICE_WIDE, "age": max_age_s},
        )
        return [
            InstanceFeatures(instance=inst, latency_p99_ms=p99, latency_p50_ms=p50, requests=n,
                             error_rate=(errors / n) if n else 0.0)
            for inst, p99, p50, n, errors in rows
        ]
