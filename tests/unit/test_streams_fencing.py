"""A worker the group expelled (a zombie) cannot undo the new owner's work: its changelog writes lose
at recovery (epochs, `streams.fencing`), a write of a partition it lost is not retried as a deletion,
its refused commits do not pass for the group's, and after standing still it does not close windows by
the wall clock. Without a broker: the app is built, never started; events are stand-ins carrying what
Faust's changelog events carry. The real thing is `tests/integration/test_streams_recovery.py`
(`test_an_expelled_worker_that_wakes_up_loses_nothing`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from infra.core.settings import KafkaSettings, StreamSettings
from streams.app import FeatureStream
from streams.fencing import changelog_event, epoch_of, fenced, stamp, unstamp


@pytest.fixture
def stream(tmp_path: Path) -> FeatureStream:
    return FeatureStream(StreamSettings(session_timeout_s=6.0), KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                         sink=None, data_dir=tmp_path, clock=lambda: 1_000.0)  # type: ignore[arg-type]


def test_a_stamp_carries_the_epoch_and_an_old_value_reads_as_epoch_0() -> None:
    assert unstamp(stamp(1_796_000_000_123, b'{"sv":"web"}')) == (1_796_000_000_123, b'{"sv":"web"}')
    assert unstamp(b'{"sv":"web"}') == (0, b'{"sv":"web"}')
    assert unstamp(stamp(7, b"")) == (7, b"")
    assert epoch_of(stamp(42, b'{"a":"1|2"}')) == 42 and epoch_of(b'{"a":"1|2"}') == 0 and epoch_of(None) == -1
    assert unstamp(b"12x|{}") == (0, b"12x|{}")  # not a stamp: the value as it is


def test_the_zombies_later_write_loses_to_the_new_owners_earlier_one() -> None:
    owner, zombie = stamp(2_000, b"owner-newer"), stamp(1_000, b"zombie-later")
    batch = [changelog_event(b"k", stamp(1_000, b"zombie-before")), changelog_event(b"k", owner),
             changelog_event(b"k", zombie), changelog_event(b"j", stamp(1_000, b"only-the-zombie"))]
    kept = fenced(batch, {})
    assert [e.value for e in kept] == [stamp(1_000, b"zombie-before"), owner, stamp(1_000, b"only-the-zombie")]


def test_a_value_held_before_the_batch_counts_and_the_same_writer_replaces_its_own() -> None:
    held = {b"k": stamp(5, b"held")}
    assert fenced([changelog_event(b"k", stamp(3, b"older"))], held) == []
    same = changelog_event(b"k", stamp(5, b"later write, same epoch"))
    assert fenced([same], held) == [same]


def test_deletions_always_apply_and_a_value_after_one_is_judged_alone() -> None:
    gone, back = changelog_event(b"k", None), changelog_event(b"k", stamp(1, b"again"))
    assert fenced([gone, back], {b"k": stamp(9, b"held")}) == [gone, back]


def test_the_table_recovers_the_newest_epoch_per_key(stream: FeatureStream) -> None:
    table = stream.instance_table
    table.data[b"k"] = stamp(3, b"held")
    table.apply_changelog_batch([changelog_event(b"k", stamp(4, b"owner")), changelog_event(b"k", stamp(2, b"zombie")),
                                 changelog_event(b"old", b'{"legacy":1}')])
    assert table.data[b"k"] == stamp(4, b"owner")
    assert table.data[b"old"] == b'{"legacy":1}'


def test_each_assignment_takes_an_epoch_above_the_last_the_clock_and_what_it_recovered(stream: FeatureStream) -> None:
    stream.app.consumer = SimpleNamespace(assignment=lambda: set())  # type: ignore[assignment]  # no broker

    async def rebalance() -> None:
        await stream._on_revoked(None, signal=None)
        await stream._on_assigned(None, set(), signal=None)
        await stream._on_settled(None, signal=None)

    asyncio.run(rebalance())
    assert stream._epoch == 1_000_000  # the clock, in ms
    asyncio.run(rebalance())
    assert stream._epoch == 1_000_001  # the same clock reading: still above the last
    stream.service_table.data[b"web|0"] = stamp(5_000_000, b"{}")  # recovered: another worker's clock ahead
    asyncio.run(rebalance())
    assert stream._epoch == 5_000_001


def test_written_states_and_marks_carry_the_epoch(stream: FeatureStream, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, bytes, bytes]] = []

    def send_changelog(partition: int, key: bytes, value: bytes, **_: Any) -> Any:
        sent.append((partition, key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    monkeypatch.setattr(stream.instance_table, "send_changelog", send_changelog)
    stream._epoch = 77
    from streams.state import InstanceState

    async def write() -> None:
        await asyncio.gather(*stream._persist(stream.instance_table, [InstanceState("web", "i0", 1)]),
                             *stream._persist_marks({1: {"access:1": 10}}))

    asyncio.run(write())
    assert [epoch_of(v) for _, _, v in sent] == [77, 77]
    assert stream._marks_of(1) == {"access:1": 10}
    assert stream._instances_of(1)[b"web/i0"].instance == "i0"  # read back through the stamp


def test_a_failed_write_of_a_key_no_longer_held_is_not_sent_again_as_a_deletion(
        stream: FeatureStream, monkeypatch: pytest.MonkeyPatch) -> None:
    """The partition went to another worker while the write was failing: a tombstone would delete the
    new owner's state at its next recovery."""
    sent: list[Any] = []

    def send_changelog(partition: int, key: bytes, value: bytes | None, **_: Any) -> Any:
        sent.append(value)
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(ConnectionError("broker gone"))
        return failed

    monkeypatch.setattr(stream.instance_table, "send_changelog", send_changelog)

    async def write() -> None:
        first = stream.instance_table.send_changelog(1, b"web/i0", b"state")
        stream.instance_table.data.pop(b"web/i0", None)  # revoked: recovery completed without it
        await asyncio.wait_for(stream._durable(stream.instance_table, 1, b"web/i0", first), 5)

    asyncio.run(write())
    assert sent == [b"state"]  # the failed write only; nothing sent after it


def test_a_refused_commit_does_not_pass_for_the_groups(stream: FeatureStream) -> None:
    """Faust's own map takes the offsets of a refused commit too (an expelled worker's): noted, they made
    the group's real, lower offset look like a broker that lost its log."""
    tp = TP(stream.topic_access, 2)
    committed: dict[TP, int | None] = {}
    stream.app.consumer = SimpleNamespace(_committed_offset=committed)  # type: ignore[assignment]
    stream._marks = {2: {f"{tp.topic}:2": 94}}
    stream.app.tables.on_commit({tp: 24})  # accepted by the broker (Faust's tables hear of those only)
    committed[tp] = 95  # a refused commit: in Faust's map only, never handed to the tables
    committed[tp] = 24  # the next assignment reads the group's offset from the broker again
    assert stream._log_restarted(tp) is None
    stream.app.tables.on_commit({tp: 95})
    assert "went back from 95 to 24" in (stream._log_restarted(tp) or "")
    committed[tp] = None
    assert "to None" in (stream._log_restarted(tp) or "")


def test_after_standing_still_the_worker_waits_a_session_before_closing_by_the_wall_clock(
        stream: FeatureStream) -> None:
    stream._last_tick = time.monotonic() - 0.5
    stream._note_stall()
    assert stream._closes_held_until == 0.0  # an on-time tick
    stream._last_tick = time.monotonic() - 9.0  # paused longer than half the session timeout
    stream._note_stall()
    assert stream._closes_held_until > time.monotonic() + 5.0
    assert stream.metrics.registry.get_sample_value("foresight_stream_stalls_total") == 1.0
    stream.app.consumer = SimpleNamespace(assignment=lambda: set())  # type: ignore[assignment]
    asyncio.run(stream._on_settled(None, signal=None))  # the group answered: a new assignment
    assert stream._closes_held_until == 0.0


def test_each_recovery_is_completed_with_the_rest_of_the_last_batch(
        stream: FeatureStream, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tansu lists a partition's end as its last batch's first record + 1, so Faust's recovery stops there:
    the worker reads the whole batch and applies it, fenced, before it goes on."""
    import infra.core.kafka_admin as kafka_admin

    changelog = stream.instance_table.changelog_topic.get_topic_name()
    stream.app.consumer = SimpleNamespace(assignment=lambda: {TP(changelog, 1), TP(stream.topic_access, 1)})  # type: ignore[assignment]
    stream.instance_table.data[b"web/i0"] = stamp(5, b"first of the batch")  # what Faust's recovery applied
    asked: list[list[tuple[str, int]]] = []

    def read_last_batches(kafka: Any, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], list[Any]]:
        asked.append(partitions)
        records = [SimpleNamespace(key=b"web/i0", value=stamp(5, b"first of the batch"), partition=1),
                   SimpleNamespace(key=b"web/i1", value=stamp(5, b"the rest"), partition=1),
                   SimpleNamespace(key=b"__position__/1", value=stamp(5, b'{"access:1":9}'), partition=1)]
        return {(changelog, 1): records}

    monkeypatch.setattr(kafka_admin, "read_last_batches", read_last_batches)
    asyncio.run(stream._on_settled(None, signal=None))
    assert asked == [[(changelog, 1)]]  # the owned changelog partitions only
    assert stream.instance_table.data[b"web/i1"] == stamp(5, b"the rest")
    assert stream._marks_of(1) == {"access:1": 9}

    def unreachable(kafka: Any, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], list[Any]]:
        raise TimeoutError("broker gone")

    monkeypatch.setattr(kafka_admin, "read_last_batches", unreachable)
    asyncio.run(stream._on_settled(None, signal=None))  # logged, not raised: the worker goes on
    assert stream._settled


def test_records_of_a_partition_no_longer_held_are_left_to_its_owner(stream: FeatureStream) -> None:
    """An expelled worker hears of it as the revocation of an assignment it no longer has: Faust does not
    wait for its agents, and their batch in hand must not load and fold the partition's states again."""
    import orjson

    def record(partition: int, offset: int, instance: str) -> Any:
        event = {"v": 1, "id": f"{instance}-{offset}", "ts": 1_700_000_000_000 + offset, "service": "web",
                 "instance": instance, "method": "GET", "route": "/", "status": 200, "latency_ms": 1.0,
                 "bytes_sent": 10, "source": "t"}
        msg = SimpleNamespace(topic=stream.topic_access, partition=partition, offset=offset,
                              tp=TP(stream.topic_access, partition))
        return SimpleNamespace(message=msg, value=orjson.dumps({"v": 1, "count": 1, "events": [event]}))

    _, touched, marks = stream._apply([record(0, 0, "i0"), record(1, 0, "i1")], {}, owned={1})
    assert {st.instance for st in touched} == {"i1"} and set(marks) == {1}
    assert 0 not in stream._instances  # the revoked partition's states were not loaded again
    assert stream.metrics.registry.get_sample_value("foresight_stream_not_owned_records_total") == 1.0


def test_service_windows_of_a_partition_no_longer_held_are_not_emitted(
        stream: FeatureStream, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.state import ServiceWindow
    from streams.windows import WindowAcc

    def due_window(partition: int) -> ServiceWindow:
        st = ServiceWindow("web", 0, partition=partition)
        st.parts, st.version, st.updated = {"i1": {"late": 0, "acc": WindowAcc().to_dict()}}, 1, 0.0
        return st

    held, stale = due_window(1), due_window(2)
    stream._services = {1: {held.key: held}, 2: {stale.key: stale}}
    published: list[Any] = []

    async def finish(futures: list[Any], closed: list[Any], rejects: list[Any]) -> None:
        published.extend(window for window, _ in closed)

    monkeypatch.setattr(stream, "_finish", finish)
    monkeypatch.setattr(stream, "_persist", lambda table, states: [])
    asyncio.run(stream._emit_services(owned={0, 1}))
    assert [w.window_start for w in published] == [0] and held.pending is not None  # the held one only
    assert stale.emitted_version == 0 and stale.pending is None
