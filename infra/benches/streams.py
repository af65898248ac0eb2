"""`foresight bench streams`: the Faust worker's throughput and freshness, against a bare consumer.

Every run is isolated from the stack's own worker: fresh topics (`fs.bench.<run>.*`), a fresh
consumer group / app id and a fresh ClickHouse database, all removed afterwards
(`IsolatedPipeline`, also used by the reference tests).

Throughput, `repeat` times (medians reported, each run's own ratio kept):
1. A backlog of access events is produced the way ingest produces it (the NASA sample replicated
   with shifted dates, parsed by the Common Log parser, sent as keyed batch envelopes by
   `KafkaSink`), spread over a few instances, hence over every partition.
2. A bare aiokafka consumer reads and decodes (`decode_access_record`) the whole backlog, and the
   real worker (`foresight stream`, a subprocess) consumes the same topic; which goes first
   alternates between runs; afterwards the bare consumer reads it once more, decoding only the
   columns the worker needs (`access_columns`, as the worker does), reported beside the ratio so
   the share of the gap that is decoding shows. The worker's speed comes from its own metrics: all events over the time
   from its first event (`foresight_stream_first_event_seconds`) to the poll (every 0.1 s) at which
   its counter of aggregated events (`foresight_stream_events_total`) held them all. The bare
   consumer is timed from its first fetch to its last decode. The counter says when the work is
   done; ClickHouse rows only
   appear once a window closes (lateness plus the idle timer: seconds), which would charge the
   close delay to throughput. ClickHouse's request sums are read afterwards to check that every
   event reached a window. Events per CPU second of each side are reported too: on a shared
   machine they move less than wall-clock rates.
Freshness, once, on a fresh worker: events stamped with the current time at a steady rate for a
few windows; for each window of every instance and of the service, the delay from its wall-clock
end to its row being readable in ClickHouse `features` (polled every 0.1 s while events flow); p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil
from kafka.errors import KafkaError
from pydantic import BaseModel, Field

from infra.core.db import client as clickhouse_client
from infra.core.db import migrate
from infra.core.kafka_admin import aiokafka_consumer, ensure_topics, kafka_admin_client
from infra.core.ports import free_port
from infra.core.settings import RouteRule, Settings
from ingest.bench import replicate_sample
from ingest.parsers.base import Occurrences
from ingest.parsers.clf import CLFParser, make_event
from ingest.routing import Router
from ingest.schemas import AccessEvent, decode_access_record
from ingest.sinks.kafka import KafkaSink
from streams.access_columns import access_columns
from streams.reference import ROW_COLUMNS, WindowRow

EVENTS_METRIC = "foresight_stream_events_total"
READY_METRIC = "foresight_stream_ready"
LATE_METRIC = "foresight_stream_late_events_total"
FIRST_EVENT_METRIC = "foresight_stream_first_event_seconds"
SERVICE = "nasa"
Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- the input ---------------------------------------------------------------------------------


def instance_parsers(sample_path: Path, instances: int, service: str = SERVICE) -> list[CLFParser]:
    """One Common Log parser per instance: the NASA log as if `instances` servers had written it."""
    return [CLFParser(Router([RouteRule(match="file", value="*", service=service, instance=f"www{i}")],
                             "unknown", file=sample_path)) for i in range(instances)]


def sample_events(sample_path: Path, instance: str = "www0", service: str = SERVICE) -> list[AccessEvent]:
    """The sample's lines as events with their real (1995) dates, in time order as a server logs them.

    Ids as `foresight ingest file` gives them (identical lines numbered apart over the file)."""
    parser = CLFParser(Router([RouteRule(match="file", value="*", service=service, instance=instance)],
                              "unknown", file=sample_path))
    lines = [ln for ln in sample_path.read_bytes().splitlines() if ln.strip()]
    events = Occurrences().number([e for e in (parser(ln, 0) for ln in lines) if isinstance(e, AccessEvent)])
    return sorted(events, key=lambda e: e.ts)


def replicated_trace(sample_path: Path, events: int, instances: int, seed: int = 1995) -> Iterator[list[AccessEvent]]:
    """`events` events in chunks of one sample copy each: copy k is logged in second k by instance k % n.

    Lines get a latency (`rt=` seconds, log-normal around 50 ms, seeded) so the quantiles have
    something to measure; the Common Log parser reads it as nginx's `$request_time`. The trace is
    one delivery unit: identical lines (same line, second and drawn latency) are numbered apart, as
    `foresight ingest file` would, so every event has its own id.
    """
    per_copy = sum(1 for ln in sample_path.read_bytes().splitlines() if ln.strip())
    lines = replicate_sample(sample_path, events, dense=True)
    parsers = instance_parsers(sample_path, instances)
    rng = random.Random(seed)
    distinct = Occurrences()
    for copy, start in enumerate(range(0, len(lines), per_copy)):
        parser = parsers[copy % instances]
        chunk = [parser(b"%s rt=%.4f" % (ln, rng.lognormvariate(-3.0, 0.8)), 0)
                 for ln in lines[start:start + per_copy]]
        yield distinct.number([e for e in chunk if isinstance(e, AccessEvent)])


# -- an isolated pipeline: topics, database, worker ----------------------------------------------


def isolated_settings(base: Settings, run_id: str, state_dir: Path, metrics_port: int) -> Settings:
    """`base` with this run's own topics, app id (consumer group), database, state folder and port."""
    prefix = f"fs.bench.{run_id}"
    kafka = base.kafka.model_copy(update={
        "topic_access": f"{prefix}.access", "topic_metrics": f"{prefix}.metrics", "topic_dlq": f"{prefix}.dlq",
        "topic_features": f"{prefix}.features", "topic_decisions": f"{prefix}.decisions"})
    streams = base.streams.model_copy(update={"app_id": f"foresight-bench-{run_id}", "metrics_port": metrics_port})
    clickhouse = base.clickhouse.model_copy(update={"database": f"foresight_bench_{run_id}"})
    return base.model_copy(update={"kafka": kafka, "streams": streams, "clickhouse": clickhouse,
                                   "state_dir": state_dir})


_SECTIONS = ("kafka", "clickhouse", "streams")


def worker_env(s: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a `foresight stream` child read exactly `s`'s sections it uses.

    Whole sections as JSON (`FORESIGHT_KAFKA={...}`): the environment wins over any file, and any
    `FORESIGHT_KAFKA__X` the parent had is dropped so it cannot override this run's topics.
    """
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if not k.startswith(tuple(f"FORESIGHT_{sec.upper()}" for sec in _SECTIONS))}
    for sec in _SECTIONS:
        env[f"FORESIGHT_{sec.upper()}"] = getattr(s, sec).model_dump_json()
    env["FORESIGHT_STATE_DIR"] = str(s.state)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition to {name{labels}: value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


class IsolatedPipeline:
    """Fresh topics, consumer group and ClickHouse database for one run, a worker on them; all removed at exit."""

    def __init__(self, base: Settings, worker_argv: Sequence[str], run_id: str | None = None,
                 say: Say = _quiet) -> None:
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.workdir = Path(tempfile.mkdtemp(prefix=f"foresight-bench-{self.run_id}-"))
        self.settings = isolated_settings(base, self.run_id, self.workdir / "state", free_port())
        self.worker_argv = list(worker_argv)
        self.say = say
        self.worker: subprocess.Popen[bytes] | None = None
        self._sink: KafkaSink | None = None

    def __enter__(self) -> IsolatedPipeline:
        try:
            ensure_topics(self.settings.kafka)
            migrate(self.settings.clickhouse)
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

    @property
    def database(self) -> str:
        return self.settings.clickhouse.database

    @property
    def sink(self) -> KafkaSink:
        """The ingest sink (no spool: a bench has nowhere to replay to), producing keyed batch envelopes."""
        if self._sink is None:
            self._sink = KafkaSink(self.settings.kafka, client_id=f"foresight-bench-{self.run_id}")
        return self._sink

    # worker

    def start_worker(self, ready_timeout_s: float = 60.0) -> None:
        """Start `foresight stream` on this run's settings and wait for its ready metric."""
        self.settings.state.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "worker.log").open("wb") as log:
            self.worker = subprocess.Popen(self.worker_argv, env=worker_env(self.settings), stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + ready_timeout_s
        while self.metric(READY_METRIC) != 1.0:
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"stream worker not ready (exit {self.worker.returncode}):\n{self.worker_log()}")
            time.sleep(0.1)

    @contextlib.contextmanager
    def profiled(self, path: Path | None) -> Iterator[None]:
        """py-spy samples the running worker into `path` while the block runs: raw collapsed stacks, per
        thread, idle samples included (a wait on Kafka shows as time in `select`)."""
        if path is None:
            yield
            return
        assert self.worker is not None
        spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                                "--pid", str(self.worker.pid), "--format", "raw", "--rate", "250", "--threads",
                                "--idle", "-o", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes the file on Ctrl-C
            try:
                spy.wait(20)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)

    def worker_log(self, lines: int = 30) -> str:
        path = self.workdir / "worker.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def metrics(self) -> dict[str, float]:
        try:
            resp = httpx.get(f"http://127.0.0.1:{self.settings.streams.metrics_port}/metrics", timeout=2.0)
        except httpx.HTTPError:
            return {}
        return parse_metrics(resp.text)

    def metric(self, name: str) -> float | None:
        return self.metrics().get(name)

    def late_access_events(self) -> int:
        """Access events the worker counted late (the counter's access label, or the whole unlabelled one)."""
        found = {k: v for k, v in self.metrics().items() if k.startswith(LATE_METRIC)}
        return int(sum(v for k, v in found.items() if k == LATE_METRIC or 'kind="access"' in k))

    def stop_worker(self, timeout_s: float = 20.0) -> None:
        """SIGINT to the worker's process group (Faust shuts down cleanly), SIGKILL if it lingers."""
        proc, self.worker = self.worker, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    # ClickHouse

    def feature_rows(self, final: bool = True) -> list[WindowRow]:
        cols = ", ".join(f"toUInt32({c})" if c in ("window_start", "window_end") else c for c in ROW_COLUMNS)
        cl = clickhouse_client(self.settings.clickhouse)
        try:
            rows = cl.execute(f"SELECT {cols} FROM {self.database}.features {'FINAL' if final else ''}")
        finally:
            cl.disconnect()
        return [WindowRow(**dict(zip(ROW_COLUMNS, r, strict=True))) for r in rows]

    def instance_requests(self) -> int:
        cl = clickhouse_client(self.settings.clickhouse)
        try:
            rows = cl.execute(f"SELECT sum(requests) FROM {self.database}.features FINAL WHERE instance != '*'")
        finally:
            cl.disconnect()
        return int(rows[0][0] or 0)

    def wait_requests(self, expected: int, timeout_s: float) -> int:
        """Poll until the instance windows in ClickHouse hold `expected` requests (or the time is up)."""
        deadline = time.monotonic() + timeout_s
        got = self.instance_requests()
        while got < expected and time.monotonic() < deadline:
            time.sleep(0.5)
            got = self.instance_requests()
        return got

    # teardown

    def cleanup(self) -> None:
        """Best effort: stop the worker, drop the run's database and topics (Faust's own included)."""
        self.stop_worker()
        if self._sink is not None:
            with contextlib.suppress(Exception):
                self._sink.close(timeout=10)
            self._sink = None
        with contextlib.suppress(Exception):
            cl = clickhouse_client(self.settings.clickhouse)
            cl.execute(f"DROP DATABASE IF EXISTS {self.database}")
            cl.disconnect()
        with contextlib.suppress(KafkaError, OSError):
            admin = kafka_admin_client(self.settings.kafka, client_id="foresight-bench-admin")
            try:
                ours = [t for t in admin.list_topics()
                        if t.startswith((f"fs.bench.{self.run_id}.", self.settings.streams.app_id))]
                if ours:
                    admin.delete_topics(ours)
            finally:
                admin.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- the measurements --------------------------------------------------------------------------


class ThroughputRun(BaseModel):
    """One backlog: the worker and the bare consumer on the same records, back to back."""

    events_per_s: float
    raw_consumer_per_s: float
    ratio: float
    worker_events_per_cpu_s: float
    raw_consumer_per_cpu_s: float
    columns_consumer_per_s: float = Field(description="The bare consumer decoding only the worker's columns.")
    events_in_clickhouse: int
    late_events: int
    first_event_s: float | None = Field(description="Worker's own gauge: process start to first event.")


class StreamBenchResult(BaseModel):
    events_per_s: float = Field(description="Median over the runs.")
    raw_consumer_per_s: float = Field(description="Median over the runs.")
    ratio: float = Field(description="Median of each run's own ratio.")
    columns_consumer_per_s: float = Field(description="Median over the runs: the bare consumer decoding only "
                                                      "the worker's columns (for comparison; not the ratio's base).")
    freshness_p99_s: float | None = Field(description="None when a window never showed in ClickHouse.")
    events: int
    runs: list[ThroughputRun]
    freshness_windows: int
    freshness_missing: int
    freshness_median_s: float | None
    freshness_max_s: float | None
    window_s: int
    instances: int
    partitions: int

    def headline(self) -> dict[str, Any]:
        return {"events_per_s": round(self.events_per_s, 1), "raw_consumer_per_s": round(self.raw_consumer_per_s, 1),
                "ratio": round(self.ratio, 3),
                "freshness_p99_s": None if self.freshness_p99_s is None else round(self.freshness_p99_s, 2)}


def produce_backlog(p: IsolatedPipeline, sample_path: Path, events: int, instances: int, say: Say) -> int:
    """Send the backlog; how many distinct ids it holds: every event, since identical lines are
    numbered apart (`replicated_trace`); the check stays in case they ever were not."""
    sent = 0
    ids: set[str] = set()
    for chunk in replicated_trace(sample_path, events, instances):
        p.sink.send_events(chunk)
        sent += len(chunk)
        ids.update(e.id for e in chunk)
        if sent % 50_000 < len(chunk):
            say(f"produced {sent}/{events} events")
    p.sink.flush(timeout=60)
    if len(ids) < sent:
        say(f"{sent - len(ids)} of them repeat an earlier id: counted once")
    return len(ids)


async def _raw_consume(p: IsolatedPipeline, events: int, timeout_s: float, columns: bool = False
                       ) -> tuple[float, float]:
    """Bare aiokafka: read and decode every record of the access topic; (events/s, events/CPU s).

    Decoded whole (`decode_access_record`, what any consumer of the contract does), or with
    `columns` only the fields the worker reads, as the worker does (`access_columns`)."""
    from aiokafka import TopicPartition

    kafka = p.settings.kafka
    consumer = aiokafka_consumer(kafka, enable_auto_commit=False, auto_offset_reset="earliest",
                                 client_id=f"foresight-bench-raw-{p.run_id}")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(kafka.topic_access, i) for i in range(kafka.partitions)])
        await consumer.seek_to_beginning()
        for tp in consumer.assignment():
            await consumer.position(tp)  # offsets resolved before the clock starts, as the worker's are
        seen = 0
        deadline = time.monotonic() + timeout_s
        t0, cpu0 = time.perf_counter(), time.process_time()
        while seen < events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"bare consumer read {seen}/{events} events in {timeout_s:.0f} s")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    cols = access_columns(rec.value) if columns else None
                    seen += len(cols.ts) if cols is not None else len(decode_access_record(rec.value))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await consumer.stop()
    return seen / wall, seen / max(cpu, 1e-9)


def time_worker(p: IsolatedPipeline, events: int, timeout_s: float, say: Say, poll_s: float = 0.1
                ) -> tuple[float, float]:
    """(events/s, events per worker CPU second) from the worker's first event to the poll that saw all.

    The start is the worker's own gauge (process start to first event, the process start being
    psutil's `create_time`, as the worker computes it), so it is exact however coarsely the events
    counter moves (the worker may count a whole batch at once). CPU is counted from this call,
    made once the worker is ready, so it includes the worker's wait for its first fetch.
    """
    assert p.worker is not None
    proc = psutil.Process(p.worker.pid)
    cpu0 = sum(proc.cpu_times()[:2])
    deadline = time.monotonic() + timeout_s
    last_say = time.monotonic()
    while True:
        done = p.metric(EVENTS_METRIC) or 0.0
        t_done = time.time()
        if done >= events:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker aggregated {done:.0f}/{events} events in {timeout_s:.0f} s\n{p.worker_log()}")
        if time.monotonic() - last_say > 5:
            say(f"worker: {done:.0f}/{events} events")
            last_say = time.monotonic()
        time.sleep(poll_s)
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    first = p.metric(FIRST_EVENT_METRIC)
    if not first:
        raise RuntimeError(f"the worker does not report {FIRST_EVENT_METRIC}; cannot time it")
    wall = t_done - (proc.create_time() + first)
    if wall <= 0:
        raise ValueError("the worker's first event is not before its last: clocks disagree")
    return done / wall, done / max(cpu, 1e-9)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a p99 of 30 values is their maximum)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class _FirstSeen(threading.Thread):
    """Polls ClickHouse `features` (every `every_s`) and notes when each (instance, window start) first shows."""

    def __init__(self, p: IsolatedPipeline, since: int, every_s: float = 0.1) -> None:
        super().__init__(name="freshness-poll", daemon=True)
        self.p, self.since, self.every_s = p, since, every_s
        self.seen: dict[tuple[str, int], float] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        cl = clickhouse_client(self.p.settings.clickhouse)
        try:
            while not self.stop.is_set():
                rows = cl.execute(f"SELECT DISTINCT instance, toUInt32(window_start) FROM {self.p.database}.features "
                                  "WHERE toUInt32(window_start) >= %(lo)s", {"lo": self.since})
                now = time.time()
                for inst, start in rows:
                    self.seen.setdefault((inst, start), now)
                self.stop.wait(self.every_s)
        except BaseException as exc:  # reported by the caller
            self.error = exc
        finally:
            cl.disconnect()


def measure_freshness(p: IsolatedPipeline, sample_path: Path, instances: int, duration_s: float, rate: float,
                      say: Say) -> dict[tuple[str, int], float]:
    """Freshness (s) per (instance, window start) of events stamped now, sent at `rate` events/s.

    ClickHouse is polled while the events flow (a thread), so a window is seen as soon as it lands.
    """
    window_s, instance_window_s = p.settings.streams.window_s, p.settings.streams.instance_window
    templates = [e for e in sample_events(sample_path) if e.status]
    tick = 0.1
    per_tick = max(instances, round(rate * tick))
    expected: set[tuple[str, int]] = set()
    t_end = time.time() + duration_s
    n = 0
    say(f"freshness: {rate:.0f} events/s stamped now for {duration_s:.0f} s")
    poll = _FirstSeen(p, since=int(time.time()) // window_s * window_s)
    poll.start()
    try:
        next_tick = time.monotonic()
        while time.time() < t_end:
            now = int(time.time() * 1000)
            batch = []
            for _ in range(per_tick):
                t = templates[n % len(templates)]
                inst = f"www{n % instances}"
                batch.append(make_event(f"fresh-{p.run_id}-{n}", now, SERVICE, inst, t.method, t.route, t.status,
                                        t.latency_ms, t.bytes_sent, t.source))
                expected.add((inst, now // 1000 // instance_window_s * instance_window_s))
                n += 1
            p.sink.send_events(batch)
            next_tick += tick
            time.sleep(max(0.0, next_tick - time.monotonic()))
        p.sink.flush(timeout=30)
        expected |= {("*", start // window_s * window_s) for _, start in expected}
        deadline = time.time() + window_s + 30
        while set(expected) - set(poll.seen) and time.time() < deadline and poll.is_alive():
            time.sleep(0.1)
    finally:
        poll.stop.set()
        poll.join(5)
    if poll.error is not None:
        raise RuntimeError(f"polling ClickHouse failed: {poll.error}") from poll.error
    ends = {k: k[1] + (window_s if k[0] == "*" else instance_window_s) for k in expected}
    return {k: poll.seen[k] - ends[k] if k in poll.seen else math.inf for k in expected}


def throughput_run(base: Settings, sample_path: Path, worker_argv: Sequence[str], events: int, instances: int,
                   worker_first: bool, profile: Path | None, say: Say) -> ThroughputRun:
    """A fresh pipeline and backlog; the bare consumer and the worker read it, in the given order."""
    with IsolatedPipeline(base, worker_argv, say=say) as p:
        say(f"run {p.run_id}: topics fs.bench.{p.run_id}.*, group {p.settings.streams.app_id}, "
            f"database {p.database}")
        sent = produce_backlog(p, sample_path, events, instances, say)
        raw: tuple[float, float] | None = None
        if not worker_first:
            raw = asyncio.run(_raw_consume(p, sent, timeout_s=300))
            say(f"bare consumer: {raw[0]:,.0f} events/s")
        p.start_worker()
        with p.profiled(profile):
            worker_per_s, worker_per_cpu = time_worker(p, sent, timeout_s=600, say=say)
        say(f"worker: {worker_per_s:,.0f} events/s")
        if raw is None:
            raw = asyncio.run(_raw_consume(p, sent, timeout_s=300))
            say(f"bare consumer: {raw[0]:,.0f} events/s")
        lean = asyncio.run(_raw_consume(p, sent, timeout_s=300, columns=True))
        say(f"bare consumer decoding columns only: {lean[0]:,.0f} events/s")
        in_clickhouse = p.wait_requests(sent, timeout_s=60)
        return ThroughputRun(events_per_s=worker_per_s, raw_consumer_per_s=raw[0], ratio=worker_per_s / raw[0],
                             worker_events_per_cpu_s=worker_per_cpu, raw_consumer_per_cpu_s=raw[1],
                             columns_consumer_per_s=lean[0],
                             events_in_clickhouse=in_clickhouse, late_events=p.late_access_events(),
                             first_event_s=p.metric(FIRST_EVENT_METRIC))


def run_stream_bench(base: Settings, sample_path: Path, worker_argv: Sequence[str], *, events: int = 600_000,
                     instances: int = 8, repeat: int = 3, freshness_s: float = 30.0, freshness_rate: float = 2000.0,
                     profile: Path | None = None, say: Say = _quiet) -> StreamBenchResult:
    """The whole bench (see the module docstring); needs the broker and ClickHouse of `base` running.

    `repeat` fresh backlogs, the worker first on every other one (so drift in the machine's load
    favours neither side); medians are reported. With `profile`, py-spy samples the worker of one
    more run, first, whose figures are not counted.
    """
    if events < 1 or repeat < 1 or instances < 1:
        raise ValueError("events, repeat and instances must be at least 1")
    if profile is not None:  # py-spy pauses the worker at every sample: this run's figures are not counted
        say(f"profiled run (not counted) into {profile}")
        throughput_run(base, sample_path, worker_argv, events, instances, worker_first=False, profile=profile, say=say)
    runs = [throughput_run(base, sample_path, worker_argv, events, instances, worker_first=i % 2 == 1,
                           profile=None, say=say) for i in range(repeat)]
    with IsolatedPipeline(base, worker_argv, say=say) as p:
        p.start_worker()
        fresh = measure_freshness(p, sample_path, instances, freshness_s, freshness_rate, say)
    values = [v for v in fresh.values() if math.isfinite(v)]
    missing = len(fresh) - len(values)
    return StreamBenchResult(
        events_per_s=statistics.median(r.events_per_s for r in runs),
        raw_consumer_per_s=statistics.median(r.raw_consumer_per_s for r in runs),
        ratio=statistics.median(r.ratio for r in runs),
        columns_consumer_per_s=statistics.median(r.columns_consumer_per_s for r in runs),
        freshness_p99_s=percentile(values, 0.99) if values and not missing else None,
        events=events, runs=runs, freshness_windows=len(fresh), freshness_missing=missing,
        freshness_median_s=percentile(values, 0.5) if values else None,
        freshness_max_s=max(values) if values else None, window_s=p.settings.streams.window_s,
        instances=instances, partitions=p.settings.kafka.partitions)


def worker_command() -> list[str]:
    """How the bench and the tests start a worker: the product's own `foresight stream`."""
    return [sys.executable, "-m", "infra.cli", "stream"]


def result_json(result: StreamBenchResult) -> str:
    return json.dumps(result.headline())
