"""The one reader of ClickHouse `features` that the stages share (serving, training, lb_adapters).

Every query reads `FINAL`, so a window re-emitted by the stream worker counts once, and runs on
ClickHouse 18.16 (no DateTime64) as on current engines.
"""

from __future__ import annotations

from dataclasses import dataclass

from clickhouse_driver import Client

from infra.core.contracts import SERVICE_WIDE
from infra.core.db import time_bounds


def minute_requests_sql(database: str, bounded: bool = False, step_s: int = 60) -> str:
    """(step start, requests) of a service's service-wide windows per `step_s` (a minute unless a
    time-compressed replay shortens it); `bounded` adds [start, end)."""
    window = ("AND window_start >= toDateTime(%(start)s) AND window_start < toDateTime(%(end)s) "
              if bounded else "")
    step = ("toUInt32(toStartOfMinute(window_start))" if step_s == 60
            else f"intDiv(toUInt32(window_start), {int(step_s)}) * {int(step_s)}")
    return (
        f"SELECT {step} AS minute, sum(requests) AS requests "
        f"FROM {database}.features FINAL WHERE service = %(service)s AND instance = %(all)s "
        f"{window}GROUP BY minute ORDER BY minute"
    )


def read_minute_requests(client: Client, database: str, service: str,
                         start_s: int | None = None, end_s: int | None = None,
                         step_s: int = 60) -> list[tuple[int, int]]:
    """Requests per minute (or per `step_s`) of `service`, oldest first; all of its history unless bounded."""
    if step_s <= 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    bounded = start_s is not None and end_s is not None
    params: dict[str, object] = {"service": service, "all": SERVICE_WIDE}
    if bounded:
        params |= {"start": start_s, "end": end_s}
    rows = client.execute(minute_requests_sql(database, bounded, step_s), params)
    return [(int(m), int(r)) for m, r in rows]


@dataclass(frozen=True)
class InstanceWindow:
    """The latest closed window of one instance: traffic, HAProxy saturation (peak sessions = scur,
    peak queue = qcur, connection errors) and the backend's own gauges (peak resource and busy ratios, and
    the mean busy ratio: 0 when the window had no busy sample, or was written before the column)."""

    instance: str
    latency_p99_ms: float
    latency_p50_ms: float
    requests: int
    status_5xx: int
    sessions_max: float = 0.0
    queue_max: float = 0.0
    conn_errors: float = 0.0
    resource_max: float = 0.0
    busy_max: float = 0.0
    busy_mean: float = 0.0


_INSTANCE_WINDOW_COLUMNS = ("latency_p99_ms", "latency_p50_ms", "requests", "status_5xx", "sessions_max", "queue_max",
                            "conn_errors", "resource_max", "busy_max", "busy_mean")


def latest_instance_windows(client: Client, database: str, service: str, max_age_s: int) -> list[InstanceWindow]:
    """Each instance's newest window of the last `max_age_s` seconds (service-wide rows left out)."""
    latest = ", ".join(f"argMax({c}, window_start)" for c in _INSTANCE_WINDOW_COLUMNS)
    rows = client.execute(
        f"""
        SELECT instance, {latest}
        FROM {database}.features FINAL
        WHERE service = %(service)s AND instance != %(all)s AND window_start >= now() - %(age)s
        GROUP BY instance ORDER BY instance
        """,
        {"service": service, "all": SERVICE_WIDE, "age": max_age_s},
    )
    return [InstanceWindow(str(inst), float(p99), float(p50), int(n), int(err), *(float(v) for v in rest))
            for inst, p99, p50, n, err, *rest in rows]


def recent_services(client: Client, database: str, since_s: int) -> list[str]:
    """Services with a service-wide window since `since_s`, by name."""
    rows = client.execute(
        f"SELECT DISTINCT service FROM {database}.features WHERE instance = %(all)s "
        f"AND window_start >= toDateTime(%(since)s) ORDER BY service",
        {"all": SERVICE_WIDE, "since": since_s},
    )
    return [str(r[0]) for r in rows]


@dataclass(frozen=True)
class ServiceWindow:
    """A closed service-wide (`*`) window."""

    start_s: int
    end_s: int
    requests: int
    rate: float


def recent_service_windows(client: Client, database: str, service: str, since_s: int) -> list[ServiceWindow]:
    """`service`'s service-wide windows ending after `since_s` (epoch s), oldest first."""
    rows = client.execute(
        f"""
        SELECT toUInt32(window_start), toUInt32(window_end), requests, rate
        FROM {database}.features FINAL
        WHERE service = %(service)s AND instance = %(all)s AND window_end > toDateTime(%(since)s)
        ORDER BY window_start
        """,
        {"service": service, "all": SERVICE_WIDE, "since": since_s},
    )
    return [ServiceWindow(int(s), int(e), int(n), float(r)) for s, e, n, r in rows]


def newest_window_ends(client: Client, database: str, services: list[str], since_s: int) -> dict[str, int]:
    """End (epoch s) of each service's newest service-wide window ending after `since_s`; a cheap poll
    (no FINAL: a re-emitted window has the same end)."""
    rows = client.execute(
        f"""
        SELECT service, toUInt32(max(window_end)) FROM {database}.features
        WHERE service IN %(services)s AND instance = %(all)s AND window_start >= toDateTime(%(since)s)
        GROUP BY service
        """,
        {"services": tuple(services), "all": SERVICE_WIDE, "since": since_s},
    )
    return {str(s): int(e) for s, e in rows}


def instance_requests_since(client: Client, database: str, since_s: int) -> int:
    """Events counted in the per-instance windows that start at or after `since_s` (`*` rows left out,
    they count the same events again)."""
    rows = client.execute(
        f"SELECT sum(requests) FROM {database}.features FINAL "
        "WHERE instance != %(all)s AND window_start >= toDateTime(%(since)s)",
        {"all": SERVICE_WIDE, "since": since_s})
    return int(rows[0][0] or 0)


WINDOW_FIELDS = ("window_start", "instance", "requests", "rate", "status_5xx", "latency_p50_ms", "latency_p99_ms",
                 "queue_max")


def windows_between(client: Client, database: str, service: str, instances: list[str], start_s: int,
                    end_s: int) -> list[dict[str, object]]:
    """The windows of `service` (of `instances`, e.g. `*` and one instance) that start in [start_s, end_s]."""
    rows = client.execute(
        f"SELECT toUInt32(window_start), instance, requests, rate, status_5xx, latency_p50_ms, latency_p99_ms, "
        f"queue_max FROM {database}.features FINAL WHERE service = %(service)s AND instance IN %(instances)s "
        "AND window_start >= toDateTime(%(start)s) AND window_start <= toDateTime(%(end)s) "
        "ORDER BY window_start, instance",
        {"service": service, "instances": tuple(instances), "start": start_s, "end": end_s})
    return [dict(zip(WINDOW_FIELDS, row, strict=True)) for row in rows]


# Per-instance window columns the health models read; saturation gauges a table may not have yet read 0.
HEALTH_WINDOW_FIELDS = ("service", "instance", "start_s", "window_s", "requests", "status_5xx", "latency_p50_ms",
                        "latency_p99_ms", "sessions_max", "queue_max", "resource_max", "busy_max")
OPTIONAL_GAUGES = ("sessions_max", "queue_max", "resource_max", "busy_max")


def instance_windows(client: Client, database: str, services: list[str], start_s: int | None = None,
                     end_s: int | None = None) -> list[tuple[object, ...]]:
    """Every per-instance window of `services` (names, or LIKE patterns with `%`) in [start_s, end_s),
    ordered by service, instance and time; fields as `HEALTH_WINDOW_FIELDS`."""
    present = {str(r[0]) for r in client.execute(
        "SELECT name FROM system.columns WHERE database = %(db)s AND table = 'features'", {"db": database})}
    gauges = ", ".join(g if g in present else f"toFloat64(0) AS {g}" for g in OPTIONAL_GAUGES)
    match = " OR ".join(f"service LIKE %(s{i})s" for i in range(len(services))) or "1"
    params: dict[str, object] = {"all": SERVICE_WIDE}
    params.update({f"s{i}": s for i, s in enumerate(services)})
    bounds, between = time_bounds("window_start", start_s, end_s)
    params.update(between)
    return client.execute(
        f"SELECT service, instance, toUInt32(window_start), toUInt32(window_end) - toUInt32(window_start), requests, "
        f"status_5xx, latency_p50_ms, latency_p99_ms, {gauges} FROM {database}.features FINAL "
        f"WHERE instance != %(all)s AND ({match}){bounds} ORDER BY service, instance, window_start", params)
