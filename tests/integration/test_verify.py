"""`foresight verify` after a double ingest and a spool replay that overlaps what was delivered, with
each consumer-side piece killed in turn: the record sink (SIGKILL during the double ingest), the
broker's consumer side (the Kafka proxy every consumer reaches the broker through, SIGKILLed during
the replay while producers keep writing to the broker) and the stream worker (SIGKILL after the
replay). Afterwards nothing is missing, `access_events` holds every distinct event once, and the
windows count every distinct event once.

Real pieces on isolated topics and database (infra.benches.streams.IsolatedPipeline): a
`foresight stream` worker, `foresight record` processes, Tansu's Kafka proxy in front of the stack's
Tansu broker, the ingest KafkaSink replaying a disk spool left by an earlier process. The broker
itself is not killed: Tansu keeps its log in memory only, so a broker restart here loses every
record by design of this test rig, not of Foresight.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from infra.benches.streams import IsolatedPipeline, sample_events, worker_command, worker_env
from infra.core.datasets import NASA_SAMPLE, dataset_path
from infra.core.db import client as clickhouse_client
from infra.core.ports import free_port
from infra.core.settings import KafkaSettings, RecordSettings, Settings
from infra.core.spool import Spool
from infra.record_commands import verify_report
from infra.stack import probes
from infra.stack.components import tansu_binary
from ingest.schemas import encode_batch
from ingest.sinks.kafka import KafkaSink
from tests.integration.test_record_sink import wait_for

pytestmark = pytest.mark.timeout(300)
SINCE = "1995-07-01T00:00:00"
SINCE_MS = 804_556_800_000


class KafkaProxy:
    """`tansu proxy` on a port of its own, advertising itself: consumers given its address reach the
    broker only through it, so killing it cuts them off while producers keep writing to the broker."""

    def __init__(self, origin: str, log: Path) -> None:
        self.port, self.origin, self.log = free_port(), origin, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://{self.address}"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(tansu_binary() or "tansu"), "proxy", "--listener-url", url,
                                          "--advertised-listener-url", url, "--origin-url", f"tcp://{self.origin}"],
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_for(probes.kafka_metadata(KafkaSettings(bootstrap_servers=self.address)), 20, "the Kafka proxy")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None


def group_caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """Every partition of `topic` committed by `group` at least up to the listed end (Tansu lists the last
    batch's base offset as the end, so this says the group reached the last batch)."""
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        ends = consumer.end_offsets(parts)
        return bool(parts) and all((consumer.committed(tp) or 0) >= ends[tp] for tp in parts)
    finally:
        consumer.close()


def test_spool_replay_and_double_ingest_lose_nothing(core_stack: Settings, tmp_path: Path) -> None:
    sample = dataset_path(NASA_SAMPLE)
    events = sample_events(sample)
    distinct = len({e.id for e in events})
    overlap = events[:300]  # already delivered, and also left in a spool by a process that died
    proxy = KafkaProxy(core_stack.kafka.bootstrap_servers.split(",")[0], tmp_path / "proxy.log")
    proxy.start()
    with IsolatedPipeline(core_stack, worker_command()) as p:
        direct = p.settings.kafka
        producer = KafkaSink(direct, client_id="verify-test-ingest")
        via_proxy = direct.model_copy(update={"bootstrap_servers": proxy.address})
        p.settings = p.settings.model_copy(update={"kafka": via_proxy})  # the worker consumes through the proxy
        s = p.settings.model_copy(update={"record": RecordSettings(
            group_id=f"{p.settings.streams.app_id}-record", metrics_port=free_port(), flush_s=0.2,
            batch_max_rows=200)})
        p.start_worker()
        env = {**worker_env(s), "FORESIGHT_RECORD": s.record.model_dump_json()}
        recorders: list[subprocess.Popen[bytes]] = []

        def start_recorder() -> None:
            with (tmp_path / f"record-{len(recorders)}.log").open("wb") as log:
                recorders.append(subprocess.Popen([sys.executable, "-m", "infra.cli", "record"], env=env, stdout=log,
                                                  stderr=subprocess.STDOUT))

        def access_events(final: str = "FINAL") -> int:
            cl = clickhouse_client(s.clickhouse)
            try:
                return int(cl.execute(f"SELECT count() FROM {s.clickhouse.database}.access_events {final}")[0][0])
            finally:
                cl.disconnect()

        start_recorder()
        try:
            for i in range(0, len(events), 250):  # the file ingested once...
                producer.send_events(events[i:i + 250])
            producer.flush(timeout=60)
            wait_for(lambda: access_events("") > 0, 60, "the record sink's first batch")
            recorders[-1].kill()  # ...the record sink SIGKILLed during it...
            recorders[-1].wait()
            for i in range(0, len(events), 250):  # ...and the file ingested again while it is down
                producer.send_events(events[i:i + 250])
            producer.flush(timeout=60)
            start_recorder()

            proxy.kill()  # the broker's consumer side gone: the worker and the sink lose the broker...
            spool = Spool(tmp_path / "spool", 4 * 1024 * 1024)
            spool.append([(direct.topic_access, b"nasa/www0", encode_batch(overlap[i:i + 100]))
                          for i in range(0, len(overlap), 100)])
            replayer = KafkaSink(direct, spool=spool, client_id="verify-test-replay")  # replays at start
            assert replayer.wait_replayed(60)  # ...while the replay reaches the broker
            replayer.close()
            time.sleep(3.0)
            proxy.start()

            wait_for(lambda: p.metric("foresight_stream_records_total") is not None, 30, "the worker's metrics")
            assert p.worker is not None
            p.worker.send_signal(signal.SIGKILL)  # the worker SIGKILLed once it consumes again, then restarted
            p.worker.wait(timeout=10)
            p.start_worker(ready_timeout_s=120)

            wait_for(lambda: access_events() >= distinct, 180, "the record sink")
            sent_to_kafka = 2 * len(events) + len(overlap)

            def settled() -> bool:  # the restarted worker read to the end and every distinct event is in a window
                counted = sum(r.requests for r in p.feature_rows() if r.instance != "*")
                return counted >= distinct and group_caught_up(direct.bootstrap_servers, s.streams.app_id,
                                                               direct.topic_access)

            wait_for(settled, 180, "the stream worker's windows")
            time.sleep(3.0)  # anything counted twice would show now
            report = verify_report(s.model_copy(update={"kafka": direct}), SINCE_MS, distinct)
            print("verify report:", json.dumps(report))

            cli = subprocess.run([sys.executable, "-m", "infra.cli", "verify", "--since", SINCE, "--file",
                                  str(sample), "--copies", "2", "--json"],
                                 env=worker_env(s.model_copy(update={"kafka": direct})), capture_output=True,
                                 text=True, timeout=120)
        finally:
            for proc in recorders:
                proc.terminate()
                proc.wait(timeout=20)
            producer.close()
            p.settings = p.settings.model_copy(update={"kafka": direct})  # cleanup reaches the broker itself
            proxy.kill()

    assert report["missing"] == 0
    assert report["in_access_events"] == report["distinct_in_kafka"] == distinct
    assert report["in_kafka"] == sent_to_kafka
    assert report["in_features"] == distinct  # every copy dropped by id or, its window closed, counted late
    assert cli.returncode == 0, cli.stderr[-2000:]
    from_cli = json.loads(cli.stdout.strip().splitlines()[-1])
    assert list(from_cli)[:6] == ["sent", "in_kafka", "in_access_events", "in_features", "duplicates_dropped",
                                  "missing"]
    assert from_cli["sent"] == 2 * len(events) and from_cli["missing"] == 0
    assert from_cli["in_access_events"] == distinct
