"""Readers of the raw record and the decision record in ClickHouse: `access_events`, `decisions`,
`predictions` (the one place their SQL lives; `features` has infra.core.features_table).

Every query reads `FINAL`: these tables are written at least once and collapse re-deliveries on
their ReplacingMergeTree keys, so only FINAL counts are exact. All SQL runs on ClickHouse 18.16.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clickhouse_driver import Client

from infra.core.db import time_bounds


def access_minute_requests(client: Client, database: str, service: str, start_s: int | None = None,
                           end_s: int | None = None) -> list[tuple[int, int]]:
    """(minute start unix s, requests) of `service` from `access_events`, oldest first, in [start, end)."""
    bounds, params = time_bounds("ts", start_s, end_s)
    where = "service = %(service)s" + bounds
    rows = client.execute(
        f"SELECT toUInt32(toStartOfMinute(ts)) AS minute, count() AS requests FROM {database}.access_events FINAL "
        f"WHERE {where} GROUP BY minute ORDER BY minute", {"service": service, **params})
    return [(int(m), int(r)) for m, r in rows]


def access_event_ids(client: Client, database: str, since_ms: int) -> set[str]:
    """Ids of the access events with event time at or after `since_ms` (each once: FINAL)."""
    rows = client.execute(f"SELECT id FROM {database}.access_events FINAL WHERE ts_ms >= %(since)s",
                          {"since": since_ms})
    return {r[0] for r in rows}


@dataclass(frozen=True)
class PredictionRef:
    """A parsed `PredictionRecord.ref()`: `kind:service/instance@model:version#ts_ms`."""

    kind: str
    service: str
    instance: str
    model: str
    model_version: str
    ts_ms: int


_REF = re.compile(r"^(?P<kind>[^:]+):(?P<service>.+)/(?P<instance>[^/@]+)@(?P<model>[^:]+):(?P<model_version>.+)"
                  r"#(?P<ts_ms>\d+)$")


def parse_ref(ref: str) -> PredictionRef | None:
    """None for a ref that names no prediction rows (e.g. a bare `model@version`)."""
    m = _REF.match(ref)
    if m is None:
        return None
    return PredictionRef(m["kind"], m["service"], m["instance"], m["model"], m["model_version"], int(m["ts_ms"]))


DECISION_FIELDS = ("ts_ms", "service", "actuator", "target", "action", "before", "after", "reason", "prediction_refs",
                   "dry_run", "outcome")


@dataclass(frozen=True)
class DecisionRow:
    """One row of `decisions`: what an adapter did or (dry_run) would have done, and why. The one model
    of it that the readers share (`foresight decisions`, the dashboard)."""

    ts_ms: int
    service: str
    actuator: str
    target: str
    action: str
    before: float | None
    after: float | None
    reason: str
    prediction_refs: list[str]
    dry_run: bool
    outcome: str


def read_decisions(client: Client, database: str, since_ms: int, service: str | None = None,
                   limit: int = 100) -> list[DecisionRow]:
    """The newest `limit` decisions since `since_ms` (of `service`, if given), oldest first."""
    where = "ts_ms >= %(since)s" + (" AND service = %(service)s" if service else "")
    rows = client.execute(
        f"SELECT {', '.join(DECISION_FIELDS)} "
        f"FROM {database}.decisions FINAL WHERE {where} ORDER BY ts_ms DESC, target LIMIT %(limit)s",
        {"since": since_ms, "service": service or "", "limit": limit})
    out = [DecisionRow(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], list(r[8]), bool(r[9]), r[10])
           for r in rows]
    return out[::-1]


def decision_services(client: Client, database: str, since_s: int) -> list[str]:
    """Services with a decision since `since_s` (epoch s), by name."""
    rows = client.execute(f"SELECT DISTINCT service FROM {database}.decisions WHERE ts >= toDateTime(%(since)s) "
                          "ORDER BY service", {"since": since_s})
    return [str(r[0]) for r in rows]


def applied_values(client: Client, database: str, service: str,
                   since_s: int) -> list[tuple[str, str, str, int, float]]:
    """(actuator, action, target, unix s, after) of `service`'s decisions since `since_s` that set a value
    (`after` not NULL, outcome not `dry_run`), oldest first."""
    rows = client.execute(
        f"SELECT actuator, action, target, toUInt32(intDiv(ts_ms, 1000)), after FROM {database}.decisions FINAL "
        "WHERE service = %(service)s AND ts >= toDateTime(%(since)s) AND isNotNull(after) "
        "AND outcome != 'dry_run' ORDER BY ts_ms", {"service": service, "since": since_s})
    return [(str(a), str(act), str(t), int(s), float(v)) for a, act, t, s, v in rows]


PREDICTION_FIELDS = ("kind", "service", "instance", "model", "model_version", "ts_ms", "horizon_s", "quantile",
                     "value")


def read_predictions(client: Client, database: str, refs: list[PredictionRef]) -> dict[PredictionRef, list[dict]]:
    """The `predictions` rows each ref resolves to (every horizon and quantile of that prediction)."""
    if not refs:
        return {}
    keys = sorted({(r.kind, r.service, r.instance, r.model, r.model_version, r.ts_ms) for r in refs})
    rows = client.execute(
        f"SELECT {', '.join(PREDICTION_FIELDS)} FROM {database}.predictions FINAL "
        "WHERE (kind, service, instance, model, model_version, ts_ms) IN %(keys)s "
        "ORDER BY ts_ms, instance, horizon_s, quantile", {"keys": tuple(keys)})
    out: dict[PredictionRef, list[dict]] = {}
    for row in rows:
        d = dict(zip(PREDICTION_FIELDS, row, strict=True))
        ref = PredictionRef(d["kind"], d["service"], d["instance"], d["model"], d["model_version"], int(d["ts_ms"]))
        out.setdefault(ref, []).append({"horizon_s": int(d["horizon_s"]), "quantile": round(float(d["quantile"]), 4),
                                        "value": float(d["value"])})
    return out


def forecast_points(client: Client, database: str, service: str, since_s: int) -> list[tuple[float, int, float]]:
    """(quantile, target unix s, value) of `service`'s forecasts with a target time since `since_s`: for
    each target time and quantile the newest forecast's value, by target time."""
    rows = client.execute(
        f"SELECT quantile, toUInt32(target_ts) AS t, argMax(value, ts_ms) FROM {database}.predictions FINAL "
        "WHERE kind = 'forecast' AND service = %(service)s AND target_ts >= toDateTime(%(since)s) "
        "GROUP BY quantile, t ORDER BY t", {"service": service, "since": since_s})
    return [(float(q), int(t), float(v)) for q, t, v in rows]


def scored_predictions(client: Client, database: str, service: str, kinds: tuple[str, ...],
           since_s: int) -> list[tuple[str, str, int, float]]:
    """(kind, instance, unix s, value) of `service`'s predictions of `kinds` made since `since_s`, oldest first."""
    rows = client.execute(
        f"SELECT kind, instance, toUInt32(ts), value FROM {database}.predictions FINAL "
        "WHERE kind IN %(kinds)s AND service = %(service)s AND ts >= toDateTime(%(since)s) ORDER BY ts",
        {"kinds": kinds, "service": service, "since": since_s})
    return [(str(k), str(i), int(t), float(v)) for k, i, t, v in rows]
