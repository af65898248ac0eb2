"""A record decoded into columns (`access_columns`) and folded in at once (`add_access_columns`)
gives exactly what `add_access` gives event by event: counts, lateness, windows, changelog bytes."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.access_columns import access_columns
from streams.state import InstanceState, PartitionClock

W = 10_000
LATENESS = 2_500
T0 = 1_700_000_000_000


def ev(ts: Any, status: Any = 200, latency: Any = 10.0, size: Any = 100, instance: str = "s1") -> dict[str, Any]:
    return {"ts": ts, "service": "web", "instance": instance, "status": status, "latency_ms": latency,
            "bytes_sent": size}


def envelope(events: list[Any]) -> bytes:
    """A batch record as ingest writes it (`ingest.schemas.encode_batch`), from plain dicts."""
    return orjson.dumps({"v": 1, "count": len(events), "events": events})


def buckets(acc: Any) -> dict[int, float]:
    store = acc.latency._store
    return {i + store.offset: c for i, c in enumerate(store.bins) if c}


def summary(st_: InstanceState) -> dict[int, Any]:
    return {start: (acc.requests, acc.by_class, acc.bytes_sent, acc.latency.count, acc.latency._zero_count,
                    acc.latency._min, acc.latency._max, buckets(acc))
            for start, acc in st_.windows.items()}


def fold(records: list[list[dict[str, Any]]], vectorised: bool, close_every: int, wall_ahead: int = 0
         ) -> tuple[list[tuple[int, int, bytes]], dict[str, InstanceState], PartitionClock, list[Any]]:
    """Records of two instances sharing one partition clock, closing windows every few records (at
    the watermark, or `wall_ahead` past it as an idle stream's wall clock does: then windows
    close that the event times have not passed, and only `closed_before` makes their events late)."""
    clock = PartitionClock(LATENESS)
    states = {name: InstanceState("web", name, 0) for name in ("s1", "s2")}
    answers: list[tuple[int, int, bytes]] = []
    closed: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        state = states[record[0]["instance"]]
        if vectorised:
            cols = access_columns(envelope(record))
            assert cols is not None and cols.instance == state.instance
            got = state.add_access_columns(cols.ts, cols.status, cols.latency_ms, cols.bytes_sent, W, clock)
            assert got is not None
        else:
            flags = [state.add_access(e, W, clock) for e in record]
            got = (sum(flags), len(flags) - sum(flags))
        answers.append((*got, state.dumps()))  # the changelog bytes after each record
        if i % close_every == close_every - 1:
            for s in states.values():
                closed.extend(w.model_dump() for w, _ in s.close(clock.watermark + wall_ahead, W, emitted_at=i))
    return answers, states, clock, closed


latency = st.one_of(st.sampled_from([0.0, -0.0, -5.0, 0.001, 1.0, 2.0]),
                    st.floats(min_value=-10.0, max_value=1e5, allow_nan=False), st.integers(-3, 10**6))


@st.composite
def records(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """Times that mostly advance but jump back now and then (late events), over several windows."""
    out, now = [], T0 + draw(st.integers(0, W))
    for _ in range(draw(st.integers(1, 12))):
        instance = draw(st.sampled_from(["s1", "s2"]))
        record = []
        for _ in range(draw(st.integers(1, 120))):
            now += draw(st.integers(0, 400))
            back = draw(st.sampled_from([0, 0, 0, 0, 1_000, 3_000, 12_000, 40_000]))
            record.append(ev(now - back, draw(st.integers(100, 599)), draw(latency), draw(st.integers(0, 10**7)),
                             instance))
        out.append(record)
    return out


def assert_same_folds(recs: list[list[dict[str, Any]]], close_every: int, wall_ahead: int = 0) -> None:
    one, one_states, one_clock, one_closed = fold(recs, False, close_every, wall_ahead)
    many, many_states, many_clock, many_closed = fold(recs, True, close_every, wall_ahead)
    assert many == one
    assert many_clock.max_ts == one_clock.max_ts
    assert many_closed == one_closed
    for name, a in one_states.items():
        b = many_states[name]
        assert (b.late, b.closed_before, b.max_ts) == (a.late, a.closed_before, a.max_ts)
        assert list(b.windows) == list(a.windows)  # opened in the same order
        assert summary(b) == summary(a)
        assert b.dumps() == a.dumps()  # the changelog bytes: sketch layout and sums included


@given(records(), st.integers(1, 4), st.sampled_from([0, 0, W // 2, 2 * W]))
@settings(database=None, max_examples=150, deadline=None)
def test_columns_fold_equals_the_per_event_loop(recs: list[list[dict[str, Any]]], close_every: int,
                                                  wall_ahead: int) -> None:
    assert_same_folds(recs, close_every, wall_ahead)


@pytest.mark.parametrize(("seed", "wall_ahead"), [(s, w) for s in range(3) for w in (0, W)])
def test_large_shuffled_records(seed: int, wall_ahead: int) -> None:
    """Records of 500 with partly shuffled times: many late events and windows, the vector sketch path."""
    rng = random.Random(seed)
    recs, now = [], T0
    for r in range(30):
        times = [now + rng.randrange(0, 25_000) for _ in range(500)]
        if r % 3:
            times.sort()
        elif r % 2:
            times.sort(reverse=True)  # windows open from the newest down
        now += rng.randrange(0, 20_000)
        recs.append([ev(t, rng.randrange(100, 600), rng.choice([0.0, -1.0, rng.lognormvariate(3, 1.5)]),
                        rng.randrange(0, 10**6), f"s{1 + r % 2}") for t in times])
    assert_same_folds(recs, 2, wall_ahead)
    answers, _, _, closed = fold(recs, True, 2, wall_ahead)
    assert sum(late for _, late, _ in answers) > 0 and len(closed) > 10


@pytest.mark.parametrize(("field", "value"), [
    ("ts", 2**62),  # beyond the range where times plus a window stay exact in int64
    ("ts", -(2**62)),
    ("bytes_sent", 2**62),  # the window's byte sum could overflow
    ("latency_ms", math.inf),
    ("latency_ms", math.nan),
])
def test_values_out_of_exact_range_are_left_to_the_per_event_path(field: str, value: Any) -> None:
    clock = PartitionClock(LATENESS, max_ts=T0)
    state = InstanceState("web", "s1", 0)
    before = state.dumps()
    cols: dict[str, list[Any]] = {"ts": [T0, T0 + 1], "status": [200, 200], "latency_ms": [1.0, 2.0],
                                  "bytes_sent": [10, 10]}
    cols[field][1] = value
    got = state.add_access_columns(np.array(cols["ts"], dtype=np.int64), np.array(cols["status"], dtype=np.int64),
                                   np.array(cols["latency_ms"], dtype=np.float64),
                                   np.array(cols["bytes_sent"], dtype=np.int64), W, clock)
    assert got is None
    assert state.dumps() == before and clock.max_ts == T0


def test_an_event_whose_window_ends_at_the_watermark_is_late() -> None:
    """The boundary itself: a window ending exactly at the watermark is closed for late events."""
    recs = [[ev(T0 + W + LATENESS), ev(T0), ev(T0 + W), ev(T0 + 1)]]
    assert_same_folds(recs, 1)
    answers, _, _, _ = fold(recs, True, 1)
    assert answers[0][:2] == (2, 2)
