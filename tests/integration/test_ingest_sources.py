"""The stack's ingest processes deliver to the real broker: HTTP push, Prometheus scrape, file."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path

import httpx

from infra.core.datasets import NASA_SAMPLE, dataset_path
from infra.core.settings import Settings
from infra.thin_path import end_offsets, read_records
from ingest.parsers.auto import parser_for
from ingest.schemas import AccessEvent, decode_access_record

from .conftest import foresight

NASA = dataset_path(NASA_SAMPLE)


def events_after(s: Settings, topic: str, offsets: dict[int, int], want: int, match: str,
                 timeout_s: float = 30) -> list[dict]:
    found: list[dict] = []

    def done(records: list) -> bool:
        found[:] = [e for r in records for e in decode_access_record(r.value) if match in json.dumps(e)]
        return len(found) >= want

    read_records(s.kafka, topic, offsets, done, timeout_s)
    return found


def bearer(s: Settings) -> dict[str, str]:
    """The stack's ingest token (authenticated by default), when it has one."""
    return {"Authorization": f"Bearer {s.ingest_token}"} if s.ingest_token else {}


def test_http_endpoint_takes_gzip_lines_and_refuses_bad_bodies(stack: Settings) -> None:
    s = stack
    url = f"http://{s.ingest.http_host}:{s.ingest.http_port}/v1/logs"
    marker = uuid.uuid4().hex[:8]
    lines = "".join(f'10.0.0.{i} - - [28/Nov/2026:10:00:0{i % 10} +0000] "GET /{marker}/{i} HTTP/1.1" 200 {i}\n'
                    for i in range(30))
    offsets = end_offsets(s.kafka, s.kafka.topic_access)
    resp = httpx.post(url, content=gzip.compress((lines + "this is not a log line\n").encode()),
                      headers={"Content-Encoding": "gzip", "Content-Type": "text/plain", **bearer(s)}, timeout=10)
    assert resp.status_code in (200, 202), resp.text
    body = resp.json()
    assert (body["accepted"], body["rejected"]) == (30, 1)
    events = events_after(s, s.kafka.topic_access, offsets, 30, f"/{marker}/")
    assert len({e["id"] for e in events}) == 30
    assert all(AccessEvent.model_validate(e).status == 200 for e in events)

    bad = httpx.post(url, content=b"\x1f\x8b not really gzip", headers={"Content-Encoding": "gzip", **bearer(s)},
                     timeout=10)
    assert bad.status_code == 400 and "gzip" in bad.text.lower()


def test_scrape_puts_haproxy_exporter_samples_on_fs_metrics(stack: Settings) -> None:
    s = stack
    offsets = end_offsets(s.kafka, s.kafka.topic_metrics)
    samples = events_after(s, s.kafka.topic_metrics, offsets, 20, '"server": "s1"',
                           timeout_s=s.ingest.scrape_interval_s + 20)
    assert len(samples) >= 20
    per_server = [x for x in samples if x["name"].startswith("haproxy_server_")]
    assert per_server, "no per-server samples of backend demo/s1"
    assert all(x["service"] == "demo" and x["instance"] == "s1" for x in per_server)


def test_ingest_file_sends_every_nasa_line_once(stack: Settings, tmp_path: Path) -> None:
    s = stack
    log = tmp_path / f"nasa-{uuid.uuid4().hex[:6]}.log"
    log.write_bytes(NASA.read_bytes())
    parser = parser_for("auto", s.ingest, file=log)
    expected = {r.id for r in map(parser, log.read_bytes().splitlines()) if isinstance(r, AccessEvent)}
    assert len(expected) > 990  # a few sample lines repeat verbatim and share an id
    offsets = end_offsets(s.kafka, s.kafka.topic_access)
    out = foresight("ingest", "file", str(log), "--json")
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"parsed": 1000, "rejected": 0, "reasons": {}}
    stem = log.stem
    events = events_after(s, s.kafka.topic_access, offsets, 1000, f'"instance": "{stem}"')
    assert {e["id"] for e in events} == expected
    assert len(events) == 1000
