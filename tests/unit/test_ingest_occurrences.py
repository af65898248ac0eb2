"""Identical log lines (two requests logged alike) stay distinct events, and a re-sent delivery unit
(the same file, the same HTTP body, a batch the tailer hands again) gets the same ids again, so the
downstream dedup still drops it. The first occurrence keeps the plain content hash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from infra.core.datasets import NASA_SAMPLE, dataset_path
from infra.core.settings import IngestSettings
from ingest.file_ingest import ingest_file
from ingest.parsers.auto import parser_for
from ingest.parsers.base import Occurrences, event_id, repeat_id
from ingest.parsers.haproxy import HAProxyParser
from ingest.pipeline import IngestPipeline
from ingest.schemas import AccessEvent
from ingest.sinks.kafka import BackPressure
from ingest.sources.http_api import build_http_app
from ingest.sources.syslog_tcp import _Batcher
from ingest.sources.tail import batch_handler
from tests.unit.fakes import RecordingSink

SETTINGS = IngestSettings(log_timezone="UTC", default_service="nasa")
NASA = dataset_path(NASA_SAMPLE)
NASA_LINES = [ln for ln in NASA.read_bytes().splitlines() if ln.strip()]
TWIN = NASA_LINES[3]  # logged again right after itself: a browser retry in the same second
HAPROXY = (b'127.0.0.1:47118 [28/Nov/2026:21:59:01.176] fe be/s1 0/0/0/6/6 200 500 - - ---- 1/1/0/0/0 0/0 '
           b'"GET /x1?q=1 HTTP/1.1"')


def events_of(lines: list[bytes]) -> list[AccessEvent]:
    parser = parser_for("clf", SETTINGS)
    out = [parser(ln, 1) for ln in lines]
    assert all(isinstance(e, AccessEvent) for e in out)
    return out  # type: ignore[return-value]


def ids(sink: RecordingSink) -> list[str]:
    return [e.id for batch in sink.batches for e in batch]


def test_repeats_are_numbered_and_the_first_keeps_the_content_hash() -> None:
    first = event_id(TWIN)
    numbered = Occurrences().number(events_of([TWIN, NASA_LINES[0], TWIN, TWIN]))
    assert [e.id for e in numbered] == [first, event_id(NASA_LINES[0]), repeat_id(first, 1), repeat_id(first, 2)]
    assert len({e.id for e in numbered}) == 4
    one_by_one = Occurrences()
    assert [one_by_one(e).id for e in events_of([TWIN, NASA_LINES[0], TWIN, TWIN])] == [e.id for e in numbered]


def test_batches_and_generations_number_the_same_as_one_call_each() -> None:
    lines = [*NASA_LINES[:30], NASA_LINES[25], *NASA_LINES[30:40], NASA_LINES[25], NASA_LINES[35]]
    single = Occurrences()
    expected = [single(e).id for e in events_of(lines)]
    for size in (1, 7, 64):
        distinct = Occurrences(remember=16)  # twins here are fewer than 16 distinct lines apart
        events = events_of(lines)
        for start in range(0, len(events), size):
            distinct.number(events[start:start + size])
        assert [e.id for e in events] == expected
    assert len(set(expected)) == len(lines)


def test_snapshot_restore_numbers_a_batch_again_the_same() -> None:
    distinct = Occurrences()
    distinct.number(events_of([TWIN]))
    before = distinct.snapshot()
    first_try = [e.id for e in distinct.number(events_of([TWIN, TWIN]))]
    distinct.restore(before)
    assert [e.id for e in distinct.number(events_of([TWIN, TWIN]))] == first_try == [
        repeat_id(event_id(TWIN), 1), repeat_id(event_id(TWIN), 2)]


def test_file_with_identical_lines_gives_distinct_ids_and_the_same_ids_twice(tmp_path: Path) -> None:
    """The NASA sample (no identical lines) with one line logged twice: 1,001 events, 1,001 ids."""
    path = tmp_path / "access.log"
    lines = [*NASA_LINES[:4], TWIN, *NASA_LINES[4:]]
    path.write_bytes(b"\n".join(lines) + b"\n")
    first, again = RecordingSink(), RecordingSink()
    summary = ingest_file(path, parser_for("clf", SETTINGS, file=path), first, batch_size=128)
    ingest_file(path, parser_for("clf", SETTINGS, file=path), again, batch_size=300)
    assert summary.parsed == len(lines) == 1001 and summary.rejected == 0
    assert len(set(ids(first))) == 1001
    assert ids(again) == ids(first)  # a file sent twice: the same ids, dropped downstream
    # the first occurrence of every line keeps the old content hash; only the repeat is new
    assert ids(first)[:4] + ids(first)[5:] == [event_id(ln) for ln in NASA_LINES]
    assert ids(first)[4] == repeat_id(event_id(TWIN), 1)


def test_http_batch_resent_gets_the_same_ids() -> None:
    sink = RecordingSink()
    app = build_http_app(IngestSettings(), sink, sink, lambda fmt: HAProxyParser())  # type: ignore[arg-type]
    body = b"\n".join([HAPROXY, HAPROXY.replace(b"/x1", b"/x2"), HAPROXY]) + b"\n"
    with TestClient(app) as client:
        for _ in range(2):  # a retry: each body counts its lines from its own start
            assert client.post("/v1/logs?format=haproxy", content=body).json()["accepted"] == 3
    first, retry = sink.batches
    assert [e.id for e in first] == [e.id for e in retry]
    assert first[0].id == event_id(HAPROXY) and len({e.id for e in first}) == 3


def test_tail_batch_handed_again_after_a_refusal_gets_the_same_ids() -> None:
    """The tailer hands a refused batch again; twins across batches of one session are numbered too."""
    sink = RecordingSink()
    on_lines = batch_handler(parser_for("clf", SETTINGS), sink)
    on_lines([TWIN])
    sink.refusals = 1
    batch = [NASA_LINES[0], TWIN]
    with pytest.raises(BackPressure):
        on_lines(batch)
    on_lines(batch)
    assert ids(sink) == [event_id(TWIN), event_id(NASA_LINES[0]), repeat_id(event_id(TWIN), 1)]


def test_syslog_streams_number_their_own_repeats() -> None:
    """TCP: per connection (a reconnecting sender's resend gets the same ids); UDP: the pipeline's life."""
    sink = RecordingSink()
    batcher = _Batcher(HAProxyParser(), sink, batch_max=100)
    first, second = batcher.connection_handler(), batcher.connection_handler()

    async def feed() -> None:
        for handler in (first, first, second):
            await handler(HAPROXY)  # type: ignore[misc]
    asyncio.run(feed())
    assert [e.id for e in batcher.buffer] == [event_id(HAPROXY), repeat_id(event_id(HAPROXY), 1), event_id(HAPROXY)]

    udp = RecordingSink()
    pipeline = IngestPipeline(HAProxyParser(), udp, flush_events=100)
    pipeline.on_line(HAPROXY)
    pipeline.on_line(b"<134>Nov 28 21:59:01 haproxy[1]: " + HAPROXY)  # same message, another header: a repeat
    pipeline.flush()
    assert ids(udp) == [event_id(HAPROXY), repeat_id(event_id(HAPROXY), 1)]
