"""Every window the real worker writes to ClickHouse equals an offline computation over the raw events.

Events go the way ingest sends them (Common Log parser, keyed batch envelopes through `KafkaSink`)
to a fresh topic; a real `foresight stream` worker (its own group and ClickHouse database) turns
them into windows; `streams.reference` recomputes them from the same events without the worker's
code. Counts must be equal, quantiles within the sketch's relative accuracy.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence

import pytest

from infra.benches.streams import IsolatedPipeline, replicated_trace, sample_events, worker_command
from infra.core.datasets import NASA_SAMPLE, dataset_path
from infra.core.settings import Settings
from ingest.schemas import AccessEvent
from streams.reference import SERVICE_WIDE, WindowRow, compare_windows, reference_windows
from streams.windows import SKETCH_RELATIVE_ACCURACY

pytestmark = pytest.mark.timeout(420)


def replay_and_collect(stack: Settings, chunks: Sequence[list[AccessEvent]], timeout_s: float
                       ) -> tuple[list[WindowRow], int, str]:
    """Send `chunks` through a fresh worker; the rows (FINAL) once every event is in a window, or at the timeout."""
    expected = sum(len(c) for c in chunks)
    with IsolatedPipeline(stack, worker_command()) as p:
        p.start_worker()
        for chunk in chunks:
            p.sink.send_events(chunk)
        p.sink.flush(timeout=60)
        deadline = time.monotonic() + timeout_s
        rows = p.feature_rows()
        while time.monotonic() < deadline:
            per_instance = sum(r.requests for r in rows if r.instance != SERVICE_WIDE)
            per_service = sum(r.requests for r in rows if r.instance == SERVICE_WIDE)
            if per_instance >= expected and per_service >= expected:
                break
            time.sleep(0.5)
            rows = p.feature_rows()
        time.sleep(1.0)  # anything written twice would show now (FINAL keeps one row per window)
        return p.feature_rows(), p.late_access_events(), p.worker_log()


def check(stack: Settings, events: list[AccessEvent], rows: list[WindowRow], late: int, log: str) -> None:
    window_s = stack.streams.window_s
    reference = reference_windows((e.__dict__ for e in events), window_s)
    problems = compare_windows(reference, rows, window_s, SKETCH_RELATIVE_ACCURACY)
    shown = "\n".join(problems[:25])
    assert not problems, (f"{len(problems)} differences over {len(reference)} windows "
                          f"(worker counted {late} access events late):\n{shown}\n--- worker log ---\n{log}")
    assert {r.instance for r in rows} >= {e.instance for e in events} | {SERVICE_WIDE}


def test_nasa_sample_windows_equal_offline_reference(stack: Settings) -> None:
    """The 1,000 real lines with their 1995 dates, in time order, as one server: about a window per line."""
    events = sample_events(dataset_path(NASA_SAMPLE))
    assert len(events) >= 990  # the sample parses (a few odd lines may be rejected, never most)
    rows, late, log = replay_and_collect(stack, [events[i:i + 250] for i in range(0, len(events), 250)],
                                         timeout_s=120)
    check(stack, events, rows, late, log)


def test_nasa_sample_over_partitions_equal_offline_reference(stack: Settings) -> None:
    """The same lines spread over 6 instances (by a hash of their id), so over every partition, one record
    per line: partitions are read in no common order, and no event may become late for that."""
    events = [e.model_copy(update={"instance": f"www{zlib.crc32(e.id.encode()) % 6}"})
              for e in sample_events(dataset_path(NASA_SAMPLE))]
    assert len({e.instance for e in events}) == 6
    rows, late, log = replay_and_collect(stack, [[e] for e in events], timeout_s=120)
    check(stack, events, rows, late, log)


def test_replicated_trace_windows_equal_offline_reference(stack: Settings) -> None:
    """50,000 events: the sample replicated a second apart over 8 instances (every partition), with latencies."""
    chunks = list(replicated_trace(dataset_path(NASA_SAMPLE), 50_000, instances=8))
    events = [e for c in chunks for e in c]
    assert len(events) >= 49_000 and len({e.instance for e in events}) == 8
    assert len({e.latency_ms for e in events}) > 1000  # the quantiles have something to measure
    rows, late, log = replay_and_collect(stack, chunks, timeout_s=180)
    check(stack, events, rows, late, log)
