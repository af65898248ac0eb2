"""A service's request rate from ClickHouse `features` (service-wide windows), as the autoscaler reads it."""

from __future__ import annotations

from clickhouse_driver import Client

from infra.core.features_table import ServiceWindow, newest_window_ends, read_minute_requests, recent_service_windows


class ClickHouseRates:
    def __init__(self, client: Client, database: str) -> None:
        self.client, self.database = client, database

    def windows(self, service: str, since_s: int) -> list[ServiceWindow]:
        return recent_service_windows(self.client, self.database, service, since_s)

    def minutes(self, service: str, start_s: int, end_s: int, step_s: int = 60) -> list[tuple[int, int]]:
        return read_minute_requests(self.client, self.database, service, start_s, end_s, step_s)

    def newest(self, services: list[str], since_s: int) -> dict[str, int]:
        return newest_window_ends(self.client, self.database, services, since_s) if services else {}
