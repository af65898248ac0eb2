"""`foresight verify` after a double ingest, with the record sink SIGKILLed in between, and a spool
replay that overlaps what was delivered: nothing is missing, and `access_events` holds every
distinct event once.

Real pieces on isolated topics and database (infra.benches.streams.IsolatedPipeline): a
`foresight stream` worker, `foresight record` processes, the ingest KafkaSink replaying a disk spool left by an
earlier process. `in_features` equals the distinct events only when the stream worker drops
duplicates by id (it then exports `foresight_stream_duplicates_total`); without that the test
prints the report and checks that the duplicates were counted, not lost.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.benches.streams import IsolatedPipeline, sample_events, worker_command, worker_env
from infra.core.datasets import NASA_SAMPLE, dataset_path
from infra.core.db import client as clickhouse_client
from infra.core.ports import free_port
from infra.core.settings import RecordSettings, Settings
from infra.core.spool import Spool
from infra.record_commands import verify_report
from ingest.schemas import encode_batch
from ingest.sinks.kafka import KafkaSink
from tests.integration.test_record_sink import wait_for

pytestmark = pytest.mark.timeout(300)
SINCE = "1995-07-01T00:00:00"
SINCE_MS = 804_556_800_000




def test_spool_replay_and_double_ingest_lose_nothing(core_stack: Settings, tmp_path: Path) -> None:
    sample = dataset_path(NASA_SAMPLE)
    events = sample_events(sample)
    distinct = len({e.id for e in events})
    overlap = events[:300]  # already delivered, and also left in a spool by a process that died
    with IsolatedPipeline(core_stack, worker_command()) as p:
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
                p.sink.send_events(events[i:i + 250])
            p.sink.flush(timeout=60)
            wait_for(lambda: access_events("") > 0, 60, "the record sink's first batch")
            recorders[-1].kill()  # ...the record sink SIGKILLed during it...
            recorders[-1].wait()
            for i in range(0, len(events), 250):  # ...and the file ingested again while it is down
                p.sink.send_events(events[i:i + 250])
            p.sink.flush(timeout=60)
            start_recorder()

            spool = Spool(tmp_path / "spool", 4 * 1024 * 1024)
            spool.append([(s.kafka.topic_access, b"nasa/www0", encode_batch(overlap[i:i + 100]))
                          for i in range(0, len(overlap), 100)])
            replayer = KafkaSink(s.kafka, spool=spool, client_id="verify-test-replay")  # replays at start
            assert replayer.wait_replayed(60)
            replayer.close()

            wait_for(lambda: access_events() >= distinct, 120, "the record sink")
            sent_to_kafka = 2 * len(events) + len(overlap)

            def settled() -> bool:  # every copy the worker read is in a window, late, or dropped as a duplicate
                counted = sum(r.requests for r in p.feature_rows() if r.instance != "*")
                dropped = p.metric("foresight_stream_duplicates_total") or 0
                return counted >= distinct and counted + p.late_access_events() + dropped >= sent_to_kafka

            wait_for(settled, 120, "the stream worker's windows")
            time.sleep(2.0)  # anything counted twice would show now
            report = verify_report(s, SINCE_MS, distinct)
            print("verify report:", json.dumps(report))

            cli = subprocess.run([sys.executable, "-m", "infra.cli", "verify", "--since", SINCE, "--file",
                                  str(sample), "--copies", "2", "--json"], env=worker_env(s), capture_output=True,
                                 text=True, timeout=120)
        finally:
            for proc in recorders:
                proc.terminate()
                proc.wait(timeout=20)

    assert report["missing"] == 0
    assert report["in_access_events"] == report["distinct_in_kafka"] == distinct
    assert report["in_kafka"] == 2 * len(events) + len(overlap)
    if report["duplicates_metric"]:  # the stream worker drops duplicates by id
        assert report["in_features"] == distinct
        assert report["duplicates_dropped"] >= report["in_kafka"] - distinct
    else:  # no dedup in this worker: copies are counted (or late, once their window closed), none is lost
        assert distinct <= report["in_features"] <= report["in_kafka"]
    assert cli.returncode == 0, cli.stderr[-2000:]
    from_cli = json.loads(cli.stdout.strip().splitlines()[-1])
    assert list(from_cli)[:6] == ["sent", "in_kafka", "in_access_events", "in_features", "duplicates_dropped",
                                  "missing"]
    assert from_cli["sent"] == 2 * len(events) and from_cli["missing"] == 0
    assert from_cli["in_access_events"] == distinct
