"""`foresight verify` (was every event sent kept, once?) and `foresight decisions` (what was decided
and on what evidence): read-only views over Kafka and the ClickHouse record."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infra.core.db import client as clickhouse_client
from infra.core.features_table import instance_requests_since, windows_between
from infra.core.kafka_admin import iter_topic
from infra.core.record_tables import access_event_ids, parse_ref, read_decisions, read_predictions
from infra.core.settings import KafkaSettings, Settings
from ingest.schemas import decode_access_record

DUPLICATES_METRIC = "foresight_stream_duplicates_total"


def topic_event_ids(kafka: KafkaSettings, since_ms: int, timeout_s: float = 120.0) -> tuple[int, set[str]]:
    """Events on `fs.access` with event time at or after `since_ms`: how many (duplicates included) and
    their distinct ids. Reads every partition from its start to its end, outside any group."""
    total, ids = 0, set()
    for value in iter_topic(kafka, kafka.topic_access, timeout_s, client_id="foresight-verify"):
        for e in decode_access_record(value):
            if isinstance(e, dict) and int(e.get("ts", -1)) >= since_ms:
                total += 1
                ids.add(str(e.get("id")))
    return total, ids


def stream_duplicates(s: Settings) -> float | None:
    """The stream worker's `foresight_stream_duplicates_total`; None when it has no such metric (no dedup)
    or does not answer."""
    try:
        text = httpx.get(f"http://127.0.0.1:{s.streams.metrics_port}/metrics", timeout=3).text
    except httpx.HTTPError:
        return None
    values = [sample.value for fam in text_string_to_metric_families(text) for sample in fam.samples
              if sample.name == DUPLICATES_METRIC]
    return sum(values) if values else None


def file_event_count(s: Settings, path: Path, fmt: str = "auto") -> int:
    """Events a log file holds, parsed as `foresight ingest file` would (nothing sent)."""
    from ingest.file_ingest import ingest_file_command

    return ingest_file_command(path, fmt=fmt, ingest=s.ingest, kafka=s.kafka, dry_run=True).parsed


def verify_report(s: Settings, since_ms: int, sent: int | None) -> dict[str, Any]:
    """What was sent against what `fs.access`, `access_events` and `features` hold since `since_ms`.

    `missing` counts the distinct events that Kafka or `access_events` lack: ids on the topic not in
    the table, plus what was sent beyond the distinct ids on the topic. `in_features` sums the
    per-instance windows starting at or after `since` (rounded down to a window), so it equals the
    distinct events only when the stream worker drops duplicates.
    """
    in_kafka, kafka_ids = topic_event_ids(s.kafka, since_ms)
    cl = clickhouse_client(s.clickhouse)
    try:
        table_ids = access_event_ids(cl, s.clickhouse.database, since_ms)
        window_start = since_ms // 1000 - (since_ms // 1000) % s.streams.window_s
        in_features = instance_requests_since(cl, s.clickhouse.database, window_start)
    finally:
        cl.disconnect()
    duplicates = stream_duplicates(s)
    missing = len(kafka_ids - table_ids) + (max(0, sent - len(kafka_ids)) if sent is not None else 0)
    return {
        "sent": sent if sent is not None else in_kafka,
        "in_kafka": in_kafka,
        "in_access_events": len(table_ids),
        "in_features": in_features,
        "duplicates_dropped": int(duplicates or 0),
        "missing": missing,
        "distinct_in_kafka": len(kafka_ids),
        "duplicates_metric": duplicates is not None,
    }


def decisions_report(s: Settings, since_ms: int, service: str | None, limit: int,
                     context_windows: int = 6) -> list[dict[str, Any]]:
    """Decisions since `since_ms` with the prediction values behind each (through `prediction_refs`) and
    the feature windows of its service (`*`) and target instance in the `context_windows` before it."""
    cl = clickhouse_client(s.clickhouse)
    db = s.clickhouse.database
    try:
        decisions = read_decisions(cl, db, since_ms, service, limit)
        refs = {ref: parse_ref(ref) for d in decisions for ref in d.prediction_refs}
        resolved = read_predictions(cl, db, [r for r in refs.values() if r is not None])
        span = context_windows * s.streams.window_s
        out = []
        for d in decisions:
            predictions = []
            for ref in d.prediction_refs:
                parsed = refs[ref]
                predictions.append({"ref": ref, "resolved": parsed is not None and parsed in resolved,
                                    "values": resolved.get(parsed, []) if parsed is not None else []})
            at_s = d.ts_ms // 1000
            instance = d.target.rsplit("/", 1)[-1]
            features = windows_between(cl, db, d.service, ["*", instance], at_s - span, at_s)
            out.append({**asdict(d), "predictions": predictions, "features": features})
        return out
    finally:
        cl.disconnect()
