"""The record sink's decoding: single events and batch envelopes become rows; bad events are set aside
with their reason, one by one, and never block the good ones."""

from __future__ import annotations

import orjson

from ingest.schemas import AccessEvent, MetricSample, encode_batch
from streams.sinks.record import ACCESS_COLUMNS, METRIC_COLUMNS, decode_batch


def event(i: int, instance: str = "s1") -> AccessEvent:
    return AccessEvent(id=f"e{i}", ts=1_700_000_000_000 + i, service="web", instance=instance, method="GET",
                       route="/a", status=200 + i % 3, latency_ms=1.5 * i, bytes_sent=10 * i, source="test")


def test_single_events_and_envelopes_become_rows_in_column_order() -> None:
    one, many = encode_batch([event(0)]), encode_batch([event(1), event(2), event(3)])
    decoded = decode_batch([("fs.access", one), ("fs.access", many)], metrics_topic="fs.metrics")
    assert decoded.rejections == [] and decoded.metrics == []
    assert [dict(zip(ACCESS_COLUMNS, row, strict=True))["id"] for row in decoded.access] == ["e0", "e1", "e2", "e3"]
    first = dict(zip(ACCESS_COLUMNS, decoded.access[3], strict=True))
    e3 = event(3)
    assert first == {"ts_ms": e3.ts, "id": "e3", "service": "web", "instance": "s1", "method": "GET", "route": "/a",
                     "status": e3.status, "latency_ms": e3.latency_ms, "bytes_sent": e3.bytes_sent, "source": "test"}


def test_metric_labels_are_sorted_into_parallel_arrays() -> None:
    samples = [MetricSample(ts=5, service="web", instance="s1", name="up", value=1.0, labels={"z": "1", "a": "2"}),
               MetricSample(ts=6, service="web", instance="s1", name="up", value=0.0)]
    decoded = decode_batch([("fs.metrics", encode_batch(samples)), ("fs.metrics", encode_batch(samples[:1]))],
                           metrics_topic="fs.metrics")
    rows = [dict(zip(METRIC_COLUMNS, r, strict=True)) for r in decoded.metrics]
    assert [(r["ts_ms"], r["label_keys"], r["label_values"]) for r in rows] == [
        (5, ["a", "z"], ["2", "1"]), (6, [], []), (5, ["a", "z"], ["2", "1"])]
    assert decoded.access == [] and decoded.rejections == []


def test_a_bad_event_in_an_envelope_is_rejected_alone() -> None:
    good = [orjson.loads(e.model_dump_json()) for e in (event(1), event(2))]
    bad_status = {**good[0], "id": "b1", "status": "oops"}
    missing_route = {k: v for k, v in good[1].items() if k != "route"}
    envelope = orjson.dumps({"v": 1, "count": 4, "events": [good[0], bad_status, missing_route, good[1]]})
    decoded = decode_batch([("fs.access", envelope), ("fs.access", b"not json"), ("fs.access", None),
                            ("fs.access", b"[1, 2]")], metrics_topic="fs.metrics")
    assert [r[1] for r in decoded.access] == ["e1", "e2"]
    reasons = [r.reason for r in decoded.rejections]
    assert reasons == ["bad_access_event", "bad_access_event", "bad_json", "empty_record", "bad_access_event"]
    assert "status" in decoded.rejections[0].detail and "route" in decoded.rejections[1].detail
    assert all(r.source == "record-sink" for r in decoded.rejections)
    assert '"id":"b1"' in decoded.rejections[0].raw


def test_negative_latency_is_rejected_not_written() -> None:
    bad = orjson.dumps({**orjson.loads(event(1).model_dump_json()), "latency_ms": -1})
    decoded = decode_batch([("fs.access", bad)], metrics_topic="fs.metrics")
    assert decoded.access == [] and [r.reason for r in decoded.rejections] == ["bad_access_event"]
