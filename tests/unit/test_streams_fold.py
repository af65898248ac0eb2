"""How the worker folds a batch of records (`FeatureStream._apply`), without a broker: duplicates by
id on both paths, the instance cap, bad events, idle instances forgotten. The app object is built
but never started; records are stand-ins carrying what Faust's events carry (topic, partition,
offset, value). The real worker on the real stack is `tests/integration/test_streams_dedup.py`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.types import TP

from infra.core.settings import KafkaSettings, StreamSettings
from ingest.parsers.base import event_id
from streams.app import FeatureStream

T0 = 1_700_000_000_000


def access(n: int, instance: str, ts: int = T0, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "id": event_id(f"{instance}-{n}".encode()), "ts": ts + n, "service": "web", "instance": instance,
            "method": "GET", "route": "/", "status": 200, "latency_ms": 1.0, "bytes_sent": 10, "source": "t", **extra}


def envelope(events: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"v": 1, "count": len(events), "events": events})


class Records:
    """Stand-ins for Faust events of the access topic, offsets counted per partition."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.offsets: dict[int, int] = {}

    def __call__(self, value: bytes, partition: int = 0) -> Any:
        offset = self.offsets.get(partition, -1) + 1
        self.offsets[partition] = offset
        msg = SimpleNamespace(topic=self.topic, partition=partition, offset=offset, tp=TP(self.topic, partition))
        return SimpleNamespace(message=msg, value=value)


@pytest.fixture
def fs(tmp_path: Path) -> FeatureStream:
    return FeatureStream(StreamSettings(max_instances_per_service=2, instance_retain_s=0), KafkaSettings(),
                         sink=None, data_dir=tmp_path)  # type: ignore[arg-type]  # never written to here


def counter(fs: FeatureStream, name: str, **labels: str) -> float:
    return fs.metrics.registry.get_sample_value(name, labels) or 0.0


def requests(fs: FeatureStream) -> dict[str, int]:
    return {st.instance: sum(acc.requests for acc in st.windows.values())
            for states in fs._instances.values() for st in states.values()}


def test_a_copy_is_dropped_whichever_path_decodes_it(fs: FeatureStream) -> None:
    rec = Records(fs.topic_access)
    events = [access(n, "i1") for n in range(20)]
    mixed = [*events[:5], access(0, "i2"), {**events[5], "status": "200"}]  # two instances, a string status: per event
    rejects, touched, _ = fs._apply([rec(envelope(events)), rec(envelope(events[10:])), rec(envelope(mixed))], {})
    assert rejects == [] and {st.instance for st in touched} == {"i1", "i2"}
    assert requests(fs) == {"i1": 20, "i2": 1}
    assert counter(fs, "foresight_stream_duplicates_total") == 10 + 6
    assert counter(fs, "foresight_stream_events_total") == 21


def test_an_access_event_without_an_id_is_dead_lettered(fs: FeatureStream) -> None:
    rec = Records(fs.topic_access)
    bare = access(1, "i1")
    del bare["id"]
    rejects, _, _ = fs._apply([rec(envelope([access(0, "i1"), bare]))], {})
    assert [(reason, detail) for _, reason, detail in rejects] == [("bad_event", "KeyError: 'id'")]
    assert requests(fs) == {"i1": 1}


def test_instances_past_the_cap_are_set_aside_with_their_reason(fs: FeatureStream) -> None:
    rec = Records(fs.topic_access)
    batch = [rec(envelope([access(n, i) for n in range(3)])) for i in ("i1", "i2", "i3")]
    batch.append(rec(envelope([access(9, "i1"), access(0, "i4"), access(1, "i4")])))  # per event: i1 in, i4 out
    rejects, _, _ = fs._apply(batch, {})
    assert [reason for _, reason, _ in rejects] == ["too_many_instances"] * 2
    assert "'web'" in rejects[0][2] and "i3" in rejects[0][2] and "i4" in rejects[1][2]
    assert requests(fs) == {"i1": 4, "i2": 3}
    assert counter(fs, "foresight_stream_over_cap_events_total") == 3 + 2
    rejects, _, _ = fs._apply([rec(envelope([access(5, "i3")]))], {})  # still over: nothing was forgotten
    assert [reason for _, reason, _ in rejects] == ["too_many_instances"]


def test_a_forgotten_instance_frees_its_place(fs: FeatureStream, monkeypatch: pytest.MonkeyPatch) -> None:
    tombstones: list[tuple[Any, ...]] = []
    # A fake changelog (there is no broker here): notes the deletions the worker sends.
    monkeypatch.setattr(fs.instance_table, "send_changelog", lambda *a, **k: tombstones.append(a))
    rec = Records(fs.topic_access)
    fs._apply([rec(envelope([access(0, i)])) for i in ("i1", "i2")], {})
    states = fs._instances[0]
    for st in states.values():
        st.close(T0 + 10_000, 10_000, emitted_at=1)
        st.pending.clear()  # acknowledged by ClickHouse
    fs._forget_idle_instances()
    assert tombstones == []  # the partition's event time has not passed their closed windows yet
    fs._apply([rec(envelope([access(0, "i1", ts=T0 + 10_000 + 2_000)]))], {})  # moves the watermark to T0 + 10 s
    fs._forget_idle_instances()
    assert [key for _, key, _ in tombstones] == [b"web/i2"]  # i1 has a window open again
    rejects, _, _ = fs._apply([rec(envelope([access(0, "i3", ts=T0 + 12_000)]))], {})
    assert rejects == [] and requests(fs) == {"i1": 1, "i3": 1}


def test_short_instance_windows_through_the_worker(tmp_path: Path) -> None:
    """`streams.instance_window_s = 2`: the worker folds into 2 s instance windows, files each closed one
    under the 10 s service-wide window holding it, and the `*` row is their sum. Metric samples no window
    keeps create no instance state."""
    fs = FeatureStream(StreamSettings(instance_window_s=2), KafkaSettings(), sink=None,  # type: ignore[arg-type]
                       data_dir=tmp_path)
    rec, met = Records(fs.topic_access), Records(fs.topic_metrics)
    events = [access(n, i, ts=T0 + 700 * n) for i in ("i1", "i2") for n in range(14)]  # 0 .. 9.1 s
    samples = [{"v": 1, "ts": T0 + 3_000, "service": "web", "instance": i, "name": name, "value": 0.5}
               for i, name in [("i1", "foresight_backend_resource_ratio"), ("127.0.0.1:9", "process_open_fds")]]
    in_time = [rec(envelope([e])) for e in sorted(events, key=lambda e: e["ts"])]  # one partition, one clock
    rejects, _, _ = fs._apply([met(envelope(samples)), *in_time], {})
    assert rejects == [] and set(requests(fs)) == {"i1", "i2"}
    _, closed = fs._close([0], wall_ms=T0 + 60_000)
    windows = [w for w, _ in closed]
    assert {(w.window_start - T0, w.window_end - w.window_start) for w in windows} == {
        (s, 2_000) for s in range(0, 10_000, 2_000)}
    assert [w.resource_max for w in windows if w.instance == "i1" and w.window_start == T0 + 2_000] == [0.5]
    for _, p in closed:
        assert p is not None and fs._service_window(p, 0).add(p, now=0.0)
    (sw,) = fs._services[0].values()
    assert sw.window_start == T0 - T0 % 10_000 == T0
    star = sw.emit(fs.window_ms, now_ms=1)
    assert (star.requests, star.window_end - star.window_start) == (28, 10_000)
    assert star.requests == sum(w.requests for w in windows)
