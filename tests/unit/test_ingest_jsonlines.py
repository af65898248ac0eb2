"""JSON-lines parsing: the field mapping, every accepted time shape, and typed rejections naming the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from infra.core.settings import IngestSettings, RouteRule
from ingest.parsers import jsonlines
from ingest.parsers.base import event_id
from ingest.parsers.jsonlines import JSONLinesParser, epoch_ms
from ingest.routing import Router
from ingest.schemas import AccessEvent, Rejection

FIELDS = IngestSettings().json_fields  # time, method, path, status, latency_ms, bytes, service, instance, host
PARSER = JSONLinesParser(FIELDS, Router([], "dflt"), UTC)
T = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z
BASE = {"time": T, "method": "GET", "path": "/a/b?q=1", "status": 200, "latency_ms": 3.5, "bytes": 12,
        "host": "web-1"}


def line(**changes: Any) -> bytes:
    obj = {**BASE, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def event(raw: bytes | str, parser: JSONLinesParser = PARSER) -> AccessEvent:
    result = parser(raw, 1)
    assert isinstance(result, AccessEvent), result
    assert AccessEvent.model_validate_json(result.model_dump_json()) == result
    return result


def rejection(raw: bytes | str, parser: JSONLinesParser = PARSER) -> Rejection:
    result = parser(raw, 3)
    assert isinstance(result, Rejection), result
    assert Rejection.model_validate_json(result.model_dump_json()) == result
    return result


def test_mapped_line_becomes_event_with_every_field() -> None:
    raw = line() + b"\n"
    e = event(raw)
    assert e.model_dump() == {
        "v": 1, "id": event_id(raw.rstrip()), "ts": T, "service": "dflt", "instance": "web-1", "method": "GET",
        "route": "/a/b", "status": 200, "latency_ms": 3.5, "bytes_sent": 12, "source": "json",
    }


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1_700_000_000, 1_700_000_000_000),  # seconds
        (1_700_000_000.123, T),  # float seconds: .123 must not become .122
        (1_700_000_000.1239, T),  # truncated to the ms, not rounded
        (T, T),  # ms
        (T * 1000 + 456, T),  # µs
        (T * 1_000_000 + 456_789, T),  # ns
        (float(T), T),
        ("1700000000.123", T),
        (str(T), T),
        (0, 0),
        (-86400, -86_400_000),
        ("2023-11-14T22:13:20.123Z", T),
        ("2023-11-14T22:13:20.123456+00:00", T),
        ("2023-11-15T03:43:20.123+05:30", T),
        ("2023-11-14 17:13:20.123", T),  # naive: the parser's zone (here New York, EST)
        ("14/Nov/2023:17:13:20 -0500", T - 123),  # nginx $time_local
    ],
)
def test_ts_shapes(ts: object, expected: int) -> None:
    ny = JSONLinesParser(FIELDS, Router([], "d"), ZoneInfo("America/New_York"))
    assert event(line(time=ts), ny).ts == expected


def test_nested_and_dotted_keys() -> None:
    fields = {"ts": "@timestamp", "method": "http.request.method", "route": "url.path",
              "status": "http.response.status_code", "latency_ms": "event.duration_ms", "service": "service.name",
              "host": "host.name", "bytes_sent": "http.response.body.bytes"}
    parser = JSONLinesParser(fields, Router([], "dflt"))
    obj = {"@timestamp": "2023-11-14T22:13:20.123Z", "http": {"request": {"method": "POST"},
                                                            "response": {"status_code": 201, "body": {"bytes": 9}}},
           "url": {"path": "/x"}, "event": {"duration_ms": 7}, "service": {"name": "api"}, "host": {"name": "h1"}}
    e = event(json.dumps(obj), parser)
    assert (e.ts, e.method, e.route, e.status, e.latency_ms, e.bytes_sent, e.service, e.instance) == (
        T, "POST", "/x", 201, 7.0, 9, "api", "h1")
    # A literal key with dots (ECS flattened) wins over nesting.
    flat = {**obj, "http.request.method": "PUT"}
    assert event(json.dumps(flat), parser).method == "PUT"
    # A path through a non-object is simply missing.
    assert rejection(json.dumps({**obj, "http": "x"}), parser).reason == "missing_method"


def test_service_and_instance_from_fields_else_routing() -> None:
    rules = [RouteRule(match="path_prefix", value="/a/", service="a-svc", instance="a-1")]
    parser = JSONLinesParser(FIELDS, Router(rules, "dflt"))
    assert event(line(), parser).key == "a-svc/a-1"
    assert event(line(service="given"), parser).key == "given/a-1"
    assert event(line(service="given", instance="i-9"), parser).key == "given/i-9"
    assert event(line(path="/other"), parser).key == "dflt/web-1"
    assert event(line(path="/other", host=...), parser).key == "dflt/-"
    assert event(line(path="/other", service="", instance=7), parser).key == "dflt/web-1"  # not usable names


@pytest.mark.parametrize(
    ("raw", "reason", "detail_has"),
    [
        (line(time=...), "missing_ts", "'time'"),
        (line(time=None), "missing_ts", "'time'"),
        (line(method=...), "missing_method", "'method'"),
        (line(path=...), "missing_route", "'path'"),
        (line(status=...), "missing_status", "'status'"),
        (line(time="yesterday"), "bad_ts", "'time'"),
        (line(time=True), "bad_ts", "'time'"),
        (line(time=[1]), "bad_ts", "'time'"),
        (line(time=10**30), "bad_ts", "'time'"),
        (line(time="2023-13-01T00:00:00Z"), "bad_ts", "'time'"),
        (line(status=2000), "bad_status", "2000"),
        (line(status=-1), "bad_status", "'status'"),
        (line(status="2x0"), "bad_status", "'status'"),
        (line(status=200.5), "bad_status", "'status'"),
        (line(status=True), "bad_status", "'status'"),
        (line(method=""), "bad_method", "'method'"),
        (line(method=5), "bad_method", "'method'"),
        (line(path={"a": 1}), "bad_route", "'path'"),
        (line(latency_ms=-1), "bad_latency_ms", "'latency_ms'"),
        (line(latency_ms="slow"), "bad_latency_ms", "'latency_ms'"),
        (line(latency_ms="inf"), "bad_latency_ms", "'latency_ms'"),
        (line(bytes=-5), "bad_bytes_sent", "'bytes'"),
        (line(bytes=10**19), "bad_bytes_sent", "'bytes'"),
        (line(bytes=1.5), "bad_bytes_sent", "'bytes'"),
        (b"", "empty", ""),
        (b"  \r\n", "empty", ""),
        (b"[1, 2]", "not_object", "list"),
        (b'"text"', "not_object", "str"),
        (b"{", "bad_json", ""),
        (b'{"time": NaN}', "bad_json", ""),
        (b"not json at all", "bad_json", ""),
        (b'{"path": "/caf\xe9"}', "bad_encoding", "byte"),
        ('{"path": "/\udcff"}', "bad_encoding", "byte"),
    ],
)
def test_rejections_name_the_field(raw: bytes | str, reason: str, detail_has: str) -> None:
    rej = rejection(raw)
    assert (rej.source, rej.reason, rej.ts_received) == ("json", reason, 3)
    assert detail_has in rej.detail


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"latency_ms": ...}, {"latency_ms": 0.0}),
        ({"bytes": ...}, {"bytes_sent": 0}),
        ({"bytes": "-"}, {"bytes_sent": 0}),
        ({"bytes": "512"}, {"bytes_sent": 512}),
        ({"bytes": 512.0}, {"bytes_sent": 512}),
        ({"latency_ms": "0.25"}, {"latency_ms": 0.25}),
        ({"status": "404"}, {"status": 404}),
        ({"status": 404.0}, {"status": 404}),
        ({"path": "http://h:1/p?q"}, {"route": "/p"}),
        ({"path": "/caf\u00e9"}, {"route": "/caf\u00e9"}),
    ],
)
def test_lenient_values(changes: dict[str, Any], expected: dict[str, object]) -> None:
    got = event(line(**changes)).model_dump()
    assert {k: got[k] for k in expected} == expected


def test_ids_are_stable_and_str_equals_bytes() -> None:
    raw = line()
    assert event(raw).id == event(raw + b"\r\n").id == event(raw.decode()).id == event_id(raw)
    assert event(line(bytes=13)).id != event(raw).id


def test_mapping_is_checked_when_built() -> None:
    with pytest.raises(ValueError, match="unknown event field"):
        JSONLinesParser({**FIELDS, "colour": "c"}, Router([], "d"))
    with pytest.raises(ValueError, match=r"\['status'\]"):
        JSONLinesParser({k: v for k, v in FIELDS.items() if k != "status"}, Router([], "d"))


def test_works_without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonlines, "_loads", json.loads)
    assert event(line()).ts == T
    assert rejection(b"{").reason == "bad_json"
    assert rejection(b"[" * 100_000).reason == "bad_json"  # RecursionError in json, caught
    assert rejection(b'{"time": NaN, "method": "GET", "path": "/", "status": 200}').reason == "bad_ts"


def test_orjson_is_in_use() -> None:
    pytest.importorskip("orjson")
    assert jsonlines._loads is not json.loads


def test_epoch_ms_magnitudes() -> None:
    assert epoch_ms(1) == 1000
    assert epoch_ms(99_999_999_999) == 99_999_999_999_000  # just under 1e11: still seconds (year 5138)
    assert epoch_ms(100_000_000_000) == 100_000_000_000  # from 1e11: ms (1973)
    assert epoch_ms(float("nan")) is None
    assert epoch_ms(float("inf")) is None
    assert epoch_ms(10**20) is None
    assert datetime.fromtimestamp(epoch_ms(1_700_000_000_000_000_000) / 1000, UTC).year == 2023  # type: ignore[operator]
