"""The disk spool: order, bound, restart, torn writes, segments, fsync policy, one writer."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.core.spool import Spool, SpooledRecord, SpoolFull, SpoolLocked, encode_record


def rec(i: int, size: int = 10, topic: str = "fs.access") -> tuple[str, bytes | None, bytes]:
    return topic, f"k{i % 3}".encode(), f"{i:06d}".encode().ljust(size, b".")


def drain(spool: Spool, chunk: int = 7) -> list[SpooledRecord]:
    out: list[SpooledRecord] = []
    while got := spool.peek(chunk):
        out += got
        spool.commit(len(got))
    return out


def test_records_come_back_in_order_with_topic_key_and_value(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        spool.append([rec(0), ("fs.dlq", None, b""), rec(1)])
        spool.append([rec(2)])
        assert len(spool) == 4 and not spool.empty
        assert spool.peek(2) == [SpooledRecord(*rec(0)), SpooledRecord("fs.dlq", None, b"")]
        assert spool.peek(10) == [SpooledRecord(*r) for r in (rec(0), ("fs.dlq", None, b""), rec(1), rec(2))]
        spool.commit(3)
        assert spool.peek(10) == [SpooledRecord(*rec(2))]  # peek without commit starts again at the head
        spool.commit(1)
        assert spool.empty and len(spool) == 0 and spool.pending_bytes == 0 and spool.peek(10) == []


def test_commit_more_than_peeked_is_an_error(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        spool.append([rec(0), rec(1)])
        spool.peek(1)
        with pytest.raises(ValueError):
            spool.commit(2)


def test_full_spool_refuses_the_whole_append_and_writes_nothing(tmp_path: Path) -> None:
    one = len(encode_record(*rec(0)))
    with Spool(tmp_path, one * 3) as spool:
        spool.append([rec(0), rec(1)])
        with pytest.raises(SpoolFull) as e:
            spool.append([rec(2), rec(3)])
        assert (e.value.needed, e.value.free) == (2 * one, one)
        assert len(spool) == 2 and spool.pending_bytes == 2 * one
        spool.append([rec(2)])  # what fits still goes
        spool.peek(1)
        spool.commit(1)  # replaying makes room
        spool.append([rec(3)])
        assert [r.value for r in drain(spool)] == [rec(i)[2] for i in (1, 2, 3)]


def test_survives_a_restart_and_resumes_after_what_was_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append([rec(i) for i in range(5)])
    spool.peek(2)
    spool.commit(2)
    spool.close()
    again = Spool(tmp_path, 1 << 20)
    assert len(again) == 3
    assert [r.value for r in drain(again)] == [rec(i)[2] for i in (2, 3, 4)]
    again.append([rec(9)])
    again.close()
    assert [r.value for r in drain(Spool(tmp_path, 1 << 20))] == [rec(9)[2]]


def test_a_write_torn_by_a_crash_is_cut_off_and_the_rest_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append([rec(0), rec(1)])
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    whole = encode_record(*rec(2))
    with segment.open("ab") as f:
        f.write(whole[: len(whole) // 2])  # the process died in the middle of a write
    again = Spool(tmp_path, 1 << 20)
    assert len(again) == 2
    again.append([rec(3)])
    assert [r.value for r in drain(again)] == [rec(i)[2] for i in (0, 1, 3)]


def test_a_corrupt_record_is_not_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append([rec(0), rec(1)])
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the second record's value
    segment.write_bytes(bytes(data))
    assert [r.value for r in drain(Spool(tmp_path, 1 << 20))] == [rec(0)[2]]


def test_segments_rotate_and_are_deleted_once_replayed(tmp_path: Path) -> None:
    one = len(encode_record(*rec(0, size=1000)))
    with Spool(tmp_path, 100 * one, segment_bytes=4 * one) as spool:
        assert spool.segment_bytes == 4 * one
        for i in range(0, 20, 2):
            spool.append([rec(i, 1000), rec(i + 1, 1000)])
        assert len(list(tmp_path.glob("*.seg"))) == 5
        got = spool.peek(9)
        spool.commit(9)  # two whole segments and one record of the third
        assert len(list(tmp_path.glob("*.seg"))) == 3
        got += drain(spool)
        assert [r.value for r in got] == [rec(i, 1000)[2] for i in range(20)]
        assert len(list(tmp_path.glob("*.seg"))) == 1  # an empty tail keeps the numbering going
        spool.append([rec(50)])
    assert [r.value for r in drain(Spool(tmp_path, 100 * one))] == [rec(50)[2]]


def test_peek_returns_a_record_larger_than_its_byte_budget_whole(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        spool.append([rec(0, 50_000), rec(1, 10)])
        assert [len(r.value) for r in spool.peek(10, max_bytes=100)] == [50_000]
        assert [len(r.value) for r in spool.peek(10, max_bytes=200_000)] == [50_000, 10]


def test_one_process_at_a_time(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20), pytest.raises(SpoolLocked):
        Spool(tmp_path, 1 << 20)
    Spool(tmp_path, 1 << 20).close()  # free again once closed


def test_fsync_at_most_once_per_interval_and_always_on_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        syncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    now = [100.0]
    spool = Spool(tmp_path, 1 << 20, fsync_interval_s=1.0, clock=lambda: now[0])
    syncs.clear()  # the directory sync of a new spool does not count
    spool.append([rec(0)])  # first segment: the directory entry is synced, the data not yet
    dir_syncs = len(syncs)
    spool.append([rec(1)])
    spool.maybe_sync()
    assert len(syncs) == dir_syncs
    now[0] += 1.5
    spool.maybe_sync()
    assert len(syncs) == dir_syncs + 1
    spool.append([rec(2)])
    spool.close()
    assert len(syncs) == dir_syncs + 2


def test_fsync_every_append_when_interval_is_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path, 1 << 20, fsync_interval_s=0)
    spool.append([rec(0)])
    syncs: list[int] = []
    monkeypatch.setattr(os, "fsync", syncs.append)
    for i in range(3):
        spool.append([rec(i)])
    assert len(syncs) == 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 4), st.integers(0, 3000)),
    st.tuples(st.just("replay"), st.integers(1, 6), st.integers(0, 6)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0)),
), max_size=40))
def test_behaves_like_a_bounded_queue(tmp_path_factory: pytest.TempPathFactory,
                                      ops: list[tuple[str, int, int]]) -> None:
    """Whatever the appends, partial replays and restarts: out in order, each record once, never past the bound."""
    path = tmp_path_factory.mktemp("spool")
    max_bytes = 12_000
    model: deque[bytes] = deque()
    spool = Spool(path, max_bytes, segment_bytes=4096)
    n = 0
    for op, a, b in ops:
        if op == "append":
            batch = [("t", None, f"{n + i}:".encode().ljust(b, b"x")) for i in range(a)]
            size = sum(len(encode_record(*r)) for r in batch)
            try:
                spool.append(batch)
            except SpoolFull:
                assert spool.pending_bytes + size > max_bytes
            else:
                model.extend(v for _, _, v in batch)
                n += a
        elif op == "replay":
            got = spool.peek(a)
            assert [r.value for r in got] == list(model)[: len(got)]
            assert len(got) == min(a, len(model))
            done = min(b, len(got))
            spool.commit(done)
            for _ in range(done):
                model.popleft()
        else:
            spool.close()
            spool = Spool(path, max_bytes, segment_bytes=4096)
        assert len(spool) == len(model)
        assert spool.pending_bytes == sum(len(encode_record("t", None, v)) for v in model) <= max_bytes
    assert [r.value for r in drain(spool)] == list(model)
    spool.close()
