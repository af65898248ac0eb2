"""Latest feature window of each instance of a service, read from ClickHouse `features`, with the
saturation gauges (sessions, the backend's resource and busy ratios) the health models read, and the
mean busy ratio the capacity estimate reads."""

from __future__ import annotations

from collections.abc import Iterable

from clickhouse_driver import Client
from pydantic import Field

from infra.core.features_table import latest_instance_windows
from serving.schemas import InstanceFeatures


class WindowFeatures(InstanceFeatures):
    """An instance's window as the models read it, plus what only the controllers read. A request built
    from these sends InstanceFeatures' fields only (pydantic serialises a field by its declared type)."""

    busy_mean: float = Field(0.0, ge=0, le=1, description="Mean share of the backend's workers busy over the "
                                                          "window's samples (0: none): an unbiased utilisation, "
                                                          "where `busy`, the peak, reads high.")


def mean_busy(windows: Iterable[InstanceFeatures]) -> dict[str, float]:
    """Each window's mean busy share where it has one (read from `features`, with samples): the capacity
    estimate's utilisation (`policies.capacity.observe`). The others fall back to their peak there."""
    return {w.instance: w.busy_mean for w in windows if isinstance(w, WindowFeatures) and w.busy_mean > 0}


class LatestFeatures:
    def __init__(self, client: Client, database: str) -> None:
        self.client = client
        self.database = database

    def for_service(self, service: str, max_age_s: int) -> list[InstanceFeatures]:
        return [
            WindowFeatures(instance=w.instance, latency_p99_ms=w.latency_p99_ms, latency_p50_ms=w.latency_p50_ms,
                           requests=w.requests, error_rate=(w.status_5xx / w.requests) if w.requests else 0.0,
                           queue=w.queue_max, sessions=w.sessions_max, resource=min(1.0, max(0.0, w.resource_max)),
                           busy=min(1.0, max(0.0, w.busy_max)), busy_mean=min(1.0, max(0.0, w.busy_mean)))
            for w in latest_instance_windows(self.client, self.database, service, max_age_s)
        ]
