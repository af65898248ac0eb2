"""`foresight bench ingest`: events/s through parser -> sink -> Kafka, against the naive shipper.

The naive shipper is what a team writes first: a bare kafka-python producer sending every raw
line as its own record. Both sides get the very same producer settings (`producer_config`: acks,
compression, linger, batch size, in-flight limit), read the same lines from memory, and are timed
up to the last acknowledgement (flush). The pipeline side parses and validates every line (the
Common Log Format parser), batches the events of a key into envelope records (`batch_max` per
record) and sends them through `KafkaSink` with its disk spool attached, as in production.

Input: the NASA sample replicated to `lines` with shifted dates (see `replicate_sample`): by
default copy k is logged in second k, as by a server answering a thousand requests a second;
`dense=False` keeps each line's time of day instead, so no two lines share a date: the parser's
worst case (its date cache never hits), which no busy real log is.

Besides events/s (wall clock), each run reports events per CPU second of the whole process (the
producer's compression thread included): the figure that says "per core", and that other load
on the machine disturbs least.

The bench writes to its own topics (`<prefix>.access`, `.dlq`, `.raw`), never to the live
pipeline's, and deletes them afterwards (Tansu keeps topics in memory).
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from kafka import KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client import REGISTRY

from infra.core.kafka_admin import kafka_admin_client, kafka_producer
from infra.core.settings import KafkaSettings, RouteRule
from infra.core.spool import Spool
from ingest.parsers.base import LineParser, Occurrences, now_ms
from ingest.parsers.clf import CLFParser
from ingest.routing import Router
from ingest.runtime import tune_gc
from ingest.schemas import AccessEvent, Rejection
from ingest.sinks.kafka import BATCH_SIZE, KafkaSink, producer_config

TOPIC_PREFIX = "fs.bench"
_DATE = re.compile(rb"\[(\d\d)/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d)( [+-]\d{4})?\]")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NO = {m.encode(): i for i, m in enumerate(_MONTHS, start=1)}


_ONLY_EVENTS = {AccessEvent}


def replicate_sample(sample_path: Path, lines: int, *, dense: bool = True) -> list[bytes]:
    """`lines` lines: the sample over and over, each copy with its dates shifted.

    dense: copy k is moved to second k after the sample's first date, as a server answering about
    a thousand requests a second would log it (its lines share their date, as in a real busy log).
    not dense: copy k is shifted by k spans of the sample (+1 day), keeping each line's time of day:
    every line has its own date string, the parser's worst case (its date cache never hits).
    """
    sample = [ln for ln in sample_path.read_bytes().splitlines() if ln.strip()]
    if not sample:
        raise ValueError(f"{sample_path}: no lines")
    parsed: list[tuple[bytes, bytes, datetime, bytes] | None] = []
    for ln in sample:
        m = _DATE.search(ln)
        if m is None or m.group(2) not in _MONTH_NO:
            parsed.append(None)  # copied as is: the parser will reject or take it the same every time
            continue
        day, mon, year, hh, mm, ss, zone = m.groups()
        dt = datetime(int(year), _MONTH_NO[mon], int(day), int(hh), int(mm), int(ss))
        parsed.append((ln[:m.start()], ln[m.end():], dt, zone or b""))
    dates = [p[2] for p in parsed if p is not None]
    first = min(dates) if dates else datetime(1995, 7, 1)
    span = (max(dates) - first + timedelta(days=1)) if dates else timedelta(0)
    out: list[bytes] = []
    copy = 0
    while len(out) < lines:
        for ln, p in zip(sample, parsed, strict=True):
            if len(out) == lines:
                break
            if p is None:
                out.append(ln)
                continue
            head, tail, dt, zone = p
            d = first + timedelta(seconds=copy) if dense else dt + span * copy
            stamp = f"[{d.day:02d}/{_MONTHS[d.month - 1]}/{d.year:04d}:{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
            out.append(b"".join((head, stamp.encode(), zone, b"]", tail)))
        copy += 1
    return out


def nasa_parser(sample_path: Path) -> LineParser:
    """The CLF parser as a NASA web server's log would be set up: the file is one instance.

    Without a rule, CLF lines are keyed by client host: tens of thousands of keys of a few
    events each, which no batching can help (and which no service/instance model means).
    """
    rule = RouteRule(match="file", value="*", service="nasa", instance="*")
    return CLFParser(Router([rule], "unknown", file=sample_path))


def run_pipeline(lines: list[bytes], parser: LineParser, sink: KafkaSink, batch_max: int) -> dict[str, int]:
    """Parse every line, send the events in batches of `batch_max` and each rejection, then flush.

    A batch at a time, as a source reading a file or a socket buffer would: one clock reading and
    one list comprehension per batch instead of per-line bookkeeping. Identical lines are numbered
    apart over the whole run, as `foresight ingest file` does over a file.
    """
    parsed = rejected = 0
    distinct = Occurrences()
    for start in range(0, len(lines), batch_max):
        received = now_ms()
        results = [parser(raw, received) for raw in lines[start:start + batch_max]]
        if set(map(type, results)) == _ONLY_EVENTS:  # C speed; rejections are rare
            events = cast(list[AccessEvent], results)
        else:
            events = [r for r in results if r.__class__ is AccessEvent]
            for r in results:
                if isinstance(r, Rejection):
                    sink.send_rejection(r)
                    rejected += 1
        if events:
            sink.send_events(distinct.number(events))
            parsed += len(events)
    sink.flush()
    return {"events": parsed, "rejected": rejected}


def run_raw(lines: list[bytes], producer: Any, topic: str) -> None:
    """The naive shipper: one record per raw line, then wait for every acknowledgement."""
    send = producer.send
    for raw in lines:
        send(topic, value=raw)
    producer.flush()


def run_ingest_bench(
    kafka: KafkaSettings,
    sample_path: Path,
    lines: int,
    *,
    repeat: int = 3,
    batch_max: int = 500,
    batch_size: int = BATCH_SIZE,
    topic_prefix: str = TOPIC_PREFIX,
    profile_path: Path | None = None,
    dense: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Time the pipeline and the naive shipper on the same `lines` lines, `repeat` times each, alternating.

    Returns medians (`events_per_s`, `raw_producer_per_s`, `ratio` = their quotient), each run, and
    the spread. With `profile_path`, the last pipeline run is also profiled (cProfile) into that file;
    its timing is then not counted. `say` hears of each run between runs (no progress thread runs while
    one is timed).
    """
    if lines < 1 or repeat < 1:
        raise ValueError("lines and repeat must be at least 1")
    bench = kafka.model_copy(update={"topic_access": f"{topic_prefix}.access", "topic_dlq": f"{topic_prefix}.dlq"})
    raw_topic = f"{topic_prefix}.raw"
    topics = [bench.topic_access, bench.topic_dlq, raw_topic]
    data = replicate_sample(sample_path, lines, dense=dense)
    parser = nasa_parser(sample_path)
    config = producer_config(bench, client_id="foresight-bench-raw", batch_size=batch_size)
    runs: list[dict[str, float]] = []
    detail: dict[str, Any] = {}
    _create_topics(bench, topics)
    # As the ingest services do (and for both sides alike): the input list and the imports are
    # long-lived, and the collector runs less often.
    tune_gc()
    try:
        with _bench_clients(bench, batch_max, batch_size, config) as (sink, raw):
            say(f"{len(data):,} lines; warming up both sides")
            _warm_up(sink, raw, raw_topic, parser, data)

            def pipeline_side() -> dict[str, float]:
                timing, counts = _time_pipeline(data, parser, sink, batch_max, bench.topic_access)
                detail.update(counts)
                return timing

            def raw_side() -> dict[str, float]:
                return _time_raw(data, raw, raw_topic)

            for i in range(repeat):
                runs.append(_alternating_run(i, pipeline_side, raw_side))
                say(f"run {i + 1}/{repeat}: pipeline {runs[-1]['events_per_s']:,.0f} events/s, naive shipper "
                    f"{runs[-1]['raw_producer_per_s']:,.0f} lines/s")
            if profile_path is not None:
                say("profiling one more pipeline run (not counted)")
                _profile_pipeline(profile_path, data, parser, sink, batch_max)
    finally:
        gc.unfreeze()
        _delete_topics(bench, topics)
    return _report(runs, detail, repeat=repeat, lines=len(data), config=config, batch_max=batch_max,
                   bootstrap_servers=kafka.bootstrap_servers, topics=topics, profile_path=profile_path)


@contextlib.contextmanager
def _bench_clients(bench: KafkaSettings, batch_max: int, batch_size: int,
                   config: dict[str, Any]) -> Iterator[tuple[KafkaSink, KafkaProducer]]:
    """The pipeline's sink (with its disk spool, as in production) and the naive shipper's producer."""
    with tempfile.TemporaryDirectory(prefix="foresight-bench-spool-") as spool_dir:
        spool = Spool(Path(spool_dir), 256 * 1024 * 1024)
        sink = KafkaSink(bench, batch_max, spool=spool, client_id="foresight-bench", batch_size=batch_size)
        raw = kafka_producer(bench, **config)
        try:
            yield sink, raw
        finally:
            raw.close(timeout=10)
            sink.close(timeout=10)


def _alternating_run(i: int, pipeline: Callable[[], dict[str, float]],
                     raw: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run `i` of both sides, the pipeline first on even runs, so drift hurts neither side."""
    run: dict[str, float] = {}
    for side in ((pipeline, raw) if i % 2 == 0 else (raw, pipeline)):
        run.update(side())
    run["ratio"] = run["events_per_s"] / run["raw_producer_per_s"]
    return run


def _time_pipeline(data: list[bytes], parser: LineParser, sink: KafkaSink, batch_max: int,
                   topic_access: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Timing of one pipeline run, and its counts with the records and events Kafka acknowledged."""
    records0 = _sample("foresight_ingest_records_sent_total", topic=topic_access)
    acked0 = _sample("foresight_ingest_events_sent_total")
    secs, cpu, counts = _timed(lambda: run_pipeline(data, parser, sink, batch_max))
    timing = {"events_per_s": counts["events"] / secs, "events_per_cpu_s": counts["events"] / cpu, "pipeline_s": secs}
    detail = {**counts,
              "records": int(_sample("foresight_ingest_records_sent_total", topic=topic_access) - records0),
              "events_acked": int(_sample("foresight_ingest_events_sent_total") - acked0)}
    return timing, detail


def _time_raw(data: list[bytes], raw: KafkaProducer, raw_topic: str) -> dict[str, float]:
    secs, cpu, _ = _timed(lambda: run_raw(data, raw, raw_topic))
    return {"raw_producer_per_s": len(data) / secs, "raw_per_cpu_s": len(data) / cpu, "raw_s": secs}


def _profile_pipeline(path: Path, data: list[bytes], parser: LineParser, sink: KafkaSink, batch_max: int) -> None:
    prof = cProfile.Profile()
    prof.runcall(run_pipeline, data, parser, sink, batch_max)
    prof.dump_stats(str(path))


def _report(runs: list[dict[str, float]], detail: dict[str, Any], *, repeat: int, lines: int,
            config: dict[str, Any], batch_max: int, bootstrap_servers: str, topics: list[str],
            profile_path: Path | None) -> dict[str, Any]:
    """Medians of the runs, their spread, and what was measured with what."""

    def spread(key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    events_per_s = statistics.median(r["events_per_s"] for r in runs)
    raw_per_s = statistics.median(r["raw_producer_per_s"] for r in runs)
    return {
        "events_per_s": events_per_s,
        "raw_producer_per_s": raw_per_s,
        "ratio": events_per_s / raw_per_s,
        "lines": lines,
        **detail,
        "events_per_record": detail["events"] / detail["records"] if detail.get("records") else None,
        "repeat": repeat,
        "runs": runs,
        "spread": {k: spread(k) for k in ("events_per_s", "raw_producer_per_s", "ratio", "events_per_cpu_s",
                                          "raw_per_cpu_s")},
        "producer": {k: config[k] for k in ("acks", "compression_type", "linger_ms", "batch_size",
                                            "max_in_flight_requests_per_connection")},
        "batch_max": batch_max,
        "bootstrap_servers": bootstrap_servers,
        "topics": topics,
        "profile": str(profile_path) if profile_path is not None else None,
    }


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds of this process (all its threads: the producer's compresses) and result."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def _sample(name: str, **labels: str) -> float:
    """A counter of `ingest.metrics` (acknowledged by Kafka, so the figures count delivered work)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _warm_up(sink: KafkaSink, raw: Any, raw_topic: str, parser: LineParser, data: list[bytes]) -> None:
    """Connections, metadata and the parser's first calls, outside the timings."""
    run_pipeline(data[:1000], parser, sink, 500)
    raw.send(raw_topic, value=data[0]).get(timeout=30)
    run_raw(data[:1000], raw, raw_topic)


def _create_topics(kafka: KafkaSettings, topics: list[str]) -> None:
    admin = kafka_admin_client(kafka, client_id="foresight-bench-admin")
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t, kafka.partitions, 1) for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    finally:
        admin.close()


def _delete_topics(kafka: KafkaSettings, topics: list[str]) -> None:
    """Best effort: the data is only a benchmark's."""
    with contextlib.suppress(KafkaError, OSError):
        admin = kafka_admin_client(kafka, client_id="foresight-bench-admin")
        try:
            admin.delete_topics(topics)
        finally:
            admin.close()
