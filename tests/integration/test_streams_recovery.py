"""Stream workers against the real stack: SIGKILL mid-stream, ClickHouse down, two workers, an expelled one.

Each test has topics, a consumer group and service names of its own, runs real `foresight stream`
processes, sends access events (current time, known counts) and HAProxy saturation samples, and
compares every window in ClickHouse `features FINAL` with a reference computed here from what
was sent: present exactly once, counts equal, nothing late, nothing extra.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from infra.core.db import client as clickhouse_client
from infra.core.kafka_admin import ensure_topics
from infra.core.settings import Settings, load_settings
from infra.stack.components import build_components
from infra.stack.launcher import pid_files, status
from infra.stack.process import spawn, stop
from ingest.schemas import AccessEvent, MetricSample, encode_batch

WINDOW_S = 2
ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"a": ["i0", "i1", "i2", "i3"], "b": ["i0", "i1", "i2"]}  # 7 keys over 4 partitions


@pytest.fixture(scope="module")
def core() -> Iterator[Settings]:
    """Kafka and ClickHouse of the stack (the rest is not needed here)."""
    s = load_settings()
    states = {c.name: c.state for c in status(s)}
    started = not all(states.get(n) == "up" for n in ("kafka", "clickhouse"))
    if started:
        subprocess.run([sys.executable, "-m", "infra.cli", "stack", "up"], capture_output=True, timeout=300,
                       cwd=ROOT)
        states = {c.name: c.state for c in status(s)}
        assert states["kafka"] == "up" and states["clickhouse"] == "up", states
    subprocess.run([sys.executable, "-m", "infra.cli", "db", "migrate"], check=True, capture_output=True,
                   timeout=60, cwd=ROOT)
    yield s


@dataclass
class Run:
    """One test's isolated topics, group and services, and the reference of what it sent."""

    s: Settings
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    counts: dict[tuple[str, str, int], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def topic(self, name: str) -> str:
        return f"t{self.tag}.{name}"

    def service(self, short: str) -> str:
        return f"t{self.tag}{short}"

    def env(self, metrics_port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "FORESIGHT_STREAMS__APP_ID": f"t{self.tag}-features",
            "FORESIGHT_STREAMS__WINDOW_S": str(WINDOW_S),
            "FORESIGHT_STREAMS__METRICS_PORT": str(metrics_port),
            "FORESIGHT_STREAMS__SERVICE_RETAIN_S": "120",
            "FORESIGHT_KAFKA__TOPIC_ACCESS": self.topic("access"),
            "FORESIGHT_KAFKA__TOPIC_METRICS": self.topic("metrics"),
            "FORESIGHT_KAFKA__TOPIC_FEATURES": self.topic("features"),
            "FORESIGHT_KAFKA__TOPIC_DLQ": self.topic("dlq"),
        })
        return env

    def create_topics(self) -> None:
        kafka = self.s.kafka.model_copy(update={
            "topic_access": self.topic("access"), "topic_metrics": self.topic("metrics"),
            "topic_features": self.topic("features"), "topic_dlq": self.topic("dlq")})
        ensure_topics(kafka)

    def start_worker(self, metrics_port: int) -> subprocess.Popen[bytes]:
        log = self.s.state / "logs" / f"test-stream-{self.tag}-{len(self.logs)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "stream"], env=self.env(metrics_port),
                                    stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self.workers.append(proc)
        self.logs.append(log)
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def metric(port: int, name: str) -> float:
    """Sum of a worker's Prometheus samples named `name` (any labels); -1 when it does not answer."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return -1.0
    return sum(sample.value for fam in text_string_to_metric_families(text) for sample in fam.samples
               if sample.name == name)


def wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


class Traffic:
    """Access events (and HAProxy saturation samples) stamped with the current time, in batch records."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.producer = KafkaProducer(bootstrap_servers=run.s.kafka.bootstrap_servers, linger_ms=5,
                                      compression_type="zstd")
        self.seq = 0
        # Each key's partition, chosen rather than hashed: the keys go round the partitions, so every one gets
        # some (service a's four instances one each): however two workers split them, each gets records and
        # a's instances meet across them. A hash of the run's random key names leaves half of 4 partitions
        # without any key in about 1 run in 64.
        keys = [(short, inst) for short, instances in SERVICES.items() for inst in instances]
        self.partition = {key: n % run.s.kafka.partitions for n, key in enumerate(keys)}

    def tick(self, per_key: int) -> None:
        now = int(time.time() * 1000)
        for short, instances in SERVICES.items():
            service = self.run.service(short)
            for n, inst in enumerate(instances):
                events = []
                for k in range(per_key):
                    self.seq += 1
                    status = (200, 200, 200, 301, 404, 503)[(self.seq + n) % 6]
                    events.append(AccessEvent(id=f"e{self.seq}", ts=now - k, service=service, instance=inst,
                                              method="GET", route="/", status=status, latency_ms=float(1 + k % 50),
                                              bytes_sent=100 + k, source="test"))
                    start = (now - k) - (now - k) % (WINDOW_S * 1000)
                    c = self.run.counts[(service, inst, start)]
                    c["requests"] += 1
                    c[f"status_{status // 100}xx"] += 1
                    c["bytes_sent"] += 100 + k
                key, partition = f"{service}/{inst}".encode(), self.partition[(short, inst)]
                self.producer.send(self.run.topic("access"), key=key, value=encode_batch(events), partition=partition)
                sessions = float((self.seq + n) % 37)
                sample = MetricSample(ts=now, service=service, instance=inst, name="haproxy_server_current_sessions",
                                      value=sessions)
                self.producer.send(self.run.topic("metrics"), key=key, value=encode_batch([sample]),
                                   partition=partition)
                c = self.run.counts[(service, inst, now - now % (WINDOW_S * 1000))]
                c["sessions_max"] = max(c["sessions_max"], int(sessions))

    def stream(self, seconds: float, per_key: int = 40, every_s: float = 0.05) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.tick(per_key)
            time.sleep(every_s)
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()


def reference(run: Run) -> dict[tuple[str, str, int], dict[str, int]]:
    out: dict[tuple[str, str, int], dict[str, int]] = {}
    for (service, inst, start), c in run.counts.items():
        out[(service, inst, start)] = dict(c)
        every = out.setdefault((service, "*", start), {})
        for k, v in c.items():
            every[k] = every.get(k, 0) + v  # `*` peaks: sum of the instances' peaks
    return {k: {n: v for n, v in c.items() if v} for k, c in out.items()}


COLUMNS = ["requests", "status_2xx", "status_3xx", "status_4xx", "status_5xx", "bytes_sent", "sessions_max"]


def features(run: Run) -> tuple[dict[tuple[str, str, int], dict[str, int]], int, int]:
    """Windows of the run in `features FINAL`, with how many (key, window) appear more than once
    there and the total of late events."""
    cl = clickhouse_client(run.s.clickhouse)
    try:
        rows = cl.execute(
            f"SELECT service, instance, toUInt64(window_start), {', '.join(COLUMNS)}, late_events "
            f"FROM {run.s.clickhouse.database}.features FINAL WHERE service IN %(svcs)s",
            {"svcs": tuple(run.service(x) for x in SERVICES)})
    finally:
        cl.disconnect()
    seen = Counter((r[0], r[1], r[2] * 1000) for r in rows)
    got = {(r[0], r[1], r[2] * 1000): {n: int(v) for n, v in zip(COLUMNS, r[3:-1], strict=True) if v}
           for r in rows}
    return got, sum(1 for n in seen.values() if n > 1), sum(r[-1] for r in rows)


def counts(windows: dict[tuple[str, str, int], dict[str, int]]) -> dict[tuple[str, str, int], dict[str, int]]:
    return {k: {n: v for n, v in c.items() if n != "sessions_max"} for k, c in windows.items()}


def assert_windows_match(run: Run, timeout_s: float = 90) -> None:
    """Counts exactly; the sessions peak never above the truth and exact in most windows (a sample
    on fs.metrics can trail the access events of its partition by more than the allowed lateness
    when the worker consumes the two topics unevenly: it is then counted late, not added)."""
    want = reference(run)
    state: dict[str, Any] = {}

    def complete() -> bool:
        state["got"], state["dups"], state["late"] = features(run)
        return bool(counts(state["got"]) == counts(want))

    try:
        wait_for(complete, timeout_s, "every window in ClickHouse")
    except AssertionError:
        got = state["got"]
        missing = sorted(set(want) - set(got))[:5]
        wrong = [(k, want[k], got[k]) for k in sorted(set(want) & set(got))
                 if counts({k: want[k]}) != counts({k: got[k]})][:5]
        extra = sorted(set(got) - set(want))[:5]
        raise AssertionError(f"{len(want)} windows wanted, {len(got)} found; missing {missing}; wrong {wrong}; "
                             f"extra {extra}; logs {[str(p) for p in run.logs]}") from None
    assert state["dups"] == 0 and state["late"] == 0
    got = state["got"]
    assert all(got[k].get("sessions_max", 0) <= want[k].get("sessions_max", 0) for k in want)
    exact = sum(got[k].get("sessions_max", 0) == want[k].get("sessions_max", 0) for k in want)
    assert exact >= 0.8 * len(want), (exact, len(want))
    assert len(want) >= 3 * (len(SERVICES) + sum(map(len, SERVICES.values())))  # several windows per key


def ready(port: int) -> bool:
    return metric(port, "foresight_stream_ready") == 1.0


def split_between(run: Run, ports: tuple[int, ...]) -> bool:
    """Every input partition (access and metrics) held, by each of the workers some: one settled assignment.
    `ready` alone does not say it: a worker is ready once its first rebalance completed, and the group can
    rebalance again after that (a member that joined late or missed the join), leaving one with none
    meanwhile. A stale count of a worker that has not yet heard of a newer rebalance would not add up."""
    held = [metric(p, "foresight_stream_assigned_partitions") for p in ports]
    return all(h > 0 for h in held) and sum(held) == 2 * run.s.kafka.partitions


PORTS = (20911, 20912)


@pytest.mark.timeout(300)
def test_sigkill_mid_stream_every_window_once_with_reference_counts(core: Settings) -> None:
    run = Run(core)
    run.create_topics()
    traffic = Traffic(run)
    try:
        first = run.start_worker(PORTS[0])
        wait_for(lambda: ready(PORTS[0]), 60, "the first worker")
        traffic.stream(5)
        wait_for(lambda: metric(PORTS[0], "foresight_stream_windows_emitted_total") > 0, 30, "windows written")
        before = metric(PORTS[0], "foresight_stream_records_total")
        first.send_signal(signal.SIGKILL)  # mid-stream: open windows, uncommitted offsets
        first.wait(timeout=10)
        traffic.stream(1)
        run.start_worker(PORTS[0])
        traffic.stream(6)
        traffic.close()
        assert before > 0
        assert_windows_match(run)
        assert metric(PORTS[0], "foresight_stream_records_total") > 0  # the restarted worker did part of it
    finally:
        run.stop_workers()


def restart_clickhouse(s: Settings) -> None:
    component = next(c for c in build_components(s) if c.name == "clickhouse")
    component.prepare()
    record = spawn(component.name, component.argv, s.state / "logs" / "clickhouse.log", dict(os.environ),
                   cwd=s.state)
    pid_files(s).write(record)
    wait_for(component.probe, 60, "ClickHouse back")


@pytest.mark.timeout(300)
def test_clickhouse_down_mid_stream_nothing_lost(core: Settings) -> None:
    run = Run(core)
    run.create_topics()
    traffic = Traffic(run)
    files = pid_files(core)
    try:
        run.start_worker(PORTS[0])
        wait_for(lambda: ready(PORTS[0]), 60, "the worker")
        traffic.stream(3)
        record = files.read("clickhouse")
        assert record is not None
        stop(record)
        try:
            traffic.stream(6)
            wait_for(lambda: metric(PORTS[0], "foresight_stream_sink_errors_total") > 0, 30, "failed writes")
            assert metric(PORTS[0], "foresight_stream_unsent_windows") > 0
        finally:
            restart_clickhouse(core)
        traffic.stream(3)
        traffic.close()
        assert_windows_match(run)
        wait_for(lambda: metric(PORTS[0], "foresight_stream_unsent_windows") == 0, 30, "nothing left unsent")
    finally:
        run.stop_workers()


@pytest.mark.timeout(300)
def test_two_workers_produce_the_same_windows_as_one(core: Settings) -> None:
    run = Run(core)
    run.create_topics()
    traffic = Traffic(run)
    try:
        for port in PORTS:
            run.start_worker(port)
        wait_for(lambda: split_between(run, PORTS), 60, "the input partitions split between both workers")
        traffic.stream(10)
        traffic.close()
        assert_windows_match(run)
        # Both took part: each consumed records, so instances of one service met across workers.
        assert all(metric(p, "foresight_stream_records_total") > 0 for p in PORTS)
    finally:
        run.stop_workers()



@pytest.mark.timeout(300)
def test_partitions_move_between_workers_without_loss(core: Settings) -> None:
    """One of two workers is SIGKILLed: the other takes its partitions over (recovering their table
    state from the changelog), then the restarted one takes some back; the windows stay exact."""
    run = Run(core)
    run.create_topics()
    traffic = Traffic(run)
    try:
        run.start_worker(PORTS[0])
        second = run.start_worker(PORTS[1])
        wait_for(lambda: split_between(run, PORTS), 60, "both workers holding partitions")
        traffic.stream(4)
        wait_for(lambda: metric(PORTS[1], "foresight_stream_records_total") > 0, 30, "the second worker busy")
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=10)
        traffic.stream(6)  # the survivor takes over once the group notices (session timeout)
        run.start_worker(PORTS[1])
        traffic.stream(1)  # the group rebalances while events keep coming
        wait_for(lambda: split_between(run, PORTS), 60, "the restarted worker holding partitions again")
        traffic.stream(4)
        traffic.close()
        assert_windows_match(run)
        assert metric(PORTS[1], "foresight_stream_records_total") > 0  # the restarted one took partitions back
    finally:
        run.stop_workers()


@pytest.mark.timeout(300)
def test_an_expelled_worker_that_wakes_up_loses_nothing(core: Settings) -> None:
    """One of two workers stands still (SIGSTOP) past the session timeout: the group expels it and the
    other takes its partitions over, recovering their states from the changelog. Woken, it goes on for a
    moment as a zombie (folding buffered records, writing its states, closing windows by the wall clock)
    before it hears it was expelled and rejoins, taking partitions back, recovered in turn. The zombie's
    stale states must not win the next recovery, nor its short windows the table."""
    run = Run(core)
    run.create_topics()
    traffic = Traffic(run)
    try:
        paused = run.start_worker(PORTS[0])
        run.start_worker(PORTS[1])
        wait_for(lambda: split_between(run, PORTS), 60, "both workers holding partitions")
        traffic.stream(3)
        paused.send_signal(signal.SIGSTOP)
        try:
            traffic.stream(1.5 * core.streams.session_timeout_s)  # expelled: the other takes all partitions
        finally:
            paused.send_signal(signal.SIGCONT)
        traffic.stream(6)
        wait_for(lambda: split_between(run, PORTS), 60, "the woken worker holding partitions again")
        traffic.stream(3)
        traffic.close()
        assert_windows_match(run)
        assert metric(PORTS[0], "foresight_stream_stalls_total") >= 1  # it noticed it had stood still
    finally:
        run.stop_workers()


def test_the_whole_last_record_batch_of_a_partition_is_read(core: Settings) -> None:
    """Tansu lists a partition's end as its last batch's first record + 1: Faust's changelog recovery,
    which reads to that end, left the rest of the batch unapplied (a position mark sent with its states).
    `read_last_batches` reads from the listed end - 1 to the real end; the worker applies that after
    each recovery."""
    from infra.core.kafka_admin import kafka_producer, read_last_batches
    from infra.thin_path import end_offsets

    run = Run(core)
    topic = run.topic("batch")
    ensure_topics(core.kafka.model_copy(update={"topic_access": topic}))
    producer = kafka_producer(core.kafka, linger_ms=200)
    try:
        for batch in (b"v", b"w"):  # two batches of four records, each sent within the linger
            for n in range(4):
                producer.send(topic, key=b"k", value=batch + b"%d" % n, partition=1)
            producer.flush()
    finally:
        producer.close()
    listed = end_offsets(core.kafka, topic)[1]
    tails = read_last_batches(core.kafka, [(topic, 1), (topic, 0)])
    assert [r.offset for r in tails[(topic, 1)]] == list(range(listed - 1, 8))  # to the last record
    assert tails[(topic, 1)][-1].value == b"w3"
    assert tails[(topic, 0)] == []  # an empty partition
