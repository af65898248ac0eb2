"""Duplicates by event id: keys are stable and equal on both paths, a copy in an open window is not
counted (event by event or in columns, the same bytes either way), the keys survive the changelog
and go with the window's close."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.parsers.base import event_id
from streams.access_columns import access_columns
from streams.event_ids import IdSet, id_key, id_keys
from streams.state import InstanceState, PartitionClock
from tests.unit.test_streams_vectorised import LATENESS, T0, W, envelope, ev


def test_hex_ids_key_by_their_first_64_bits_others_by_xxh3_64() -> None:
    eid = event_id(b"a log line")
    assert id_key(eid) == id_key(eid.upper()) == int(eid[:16], 16)
    for other in ("e17", eid + "0", eid[:-1], "é" * 32, eid[:8] + " " + eid[9:], eid[:-1] + "g"):
        assert id_key(other) == xxhash.xxh3_64_intdigest(other.encode())
    ids = [eid, "e17", eid.upper(), eid + "0", eid[:-1], event_id(b"x"), "é" * 32, "g" * 32]
    assert id_keys([eid, eid.upper(), event_id(b"x")]).tolist() == [id_key(eid), id_key(eid), id_key(event_id(b"x"))]
    spaced = [eid[:8] + " " + eid[9:], eid[:10] + "  " + eid[10:-2]]  # 32 characters that fromhex would half take
    assert id_keys(spaced).tolist() == [id_key(i) for i in spaced]
    assert id_keys(ids).tolist() == [id_key(i) for i in ids]
    assert id_keys(["e1", "e2"]).tolist() == [id_key("e1"), id_key("e2")]  # all shorter than a hex id
    assert id_keys([]).dtype == np.uint64


@given(st.lists(st.one_of(st.text(max_size=40), st.sampled_from([event_id(bytes([i])) for i in range(4)])),
                max_size=30))
@settings(database=None, max_examples=200, deadline=None)
def test_vectorised_keys_equal_the_scalar_ones(ids: list[str]) -> None:
    try:
        want = [id_key(i) for i in ids]
    except UnicodeEncodeError:
        pytest.skip("lone surrogates")
    assert id_keys(ids).tolist() == want


def test_id_set_finds_repeats_within_keys_and_against_what_it_holds() -> None:
    ids = IdSet()
    assert ids.add(5) and not ids.add(5)
    fresh = ids.add_new(np.array([9, 5, 9, 7, 1], dtype=np.uint64))
    assert fresh.tolist() == [True, False, False, True, True]
    assert not ids.add(7) and len(ids) == 4
    back = IdSet.loads(ids.dumps())
    assert back.add_new(np.array([1, 5, 7, 9, 2], dtype=np.uint64)).tolist() == [False] * 4 + [True]


def with_ids(record: list[dict[str, Any]], rng: random.Random, pool: list[str]) -> list[dict[str, Any]]:
    """Each event gets an id: mostly new, sometimes one already used (a copy of an earlier event)."""
    out = []
    for e in record:
        if pool and rng.random() < 0.3:
            e = {**e, "id": rng.choice(pool)}
        else:
            e = {**e, "id": event_id(repr((e, len(pool))).encode())}
            pool.append(e["id"])
        out.append(e)
    return out


def fold(records: list[list[dict[str, Any]]], vectorised: bool, close_every: int
         ) -> tuple[list[tuple[int, int, int, bytes]], InstanceState]:
    clock = PartitionClock(LATENESS)
    state = InstanceState("web", "s1", 0)
    answers = []
    for i, record in enumerate(records):
        if vectorised:
            cols = access_columns(envelope(record))
            assert cols is not None and cols.keys is not None
            got = state.add_access_columns(cols.ts, cols.status, cols.latency_ms, cols.bytes_sent, W, clock,
                                           cols.keys)
            assert got is not None
            counted, late = got
        else:
            flags = [state.add_access(e, W, clock, id_key(e["id"])) for e in record]
            counted, late = flags.count(True), flags.count(False)
        answers.append((counted, late, len(record) - counted - late, state.dumps()))
        if i % close_every == close_every - 1:
            state.close(clock.watermark, W, emitted_at=i)
    return answers, state


@given(st.integers(0, 2**32), st.integers(1, 4))
@settings(database=None, max_examples=60, deadline=None)
def test_columns_and_events_drop_the_same_duplicates(seed: int, close_every: int) -> None:
    rng = random.Random(seed)
    pool: list[str] = []
    records, now = [], T0
    for _ in range(rng.randint(1, 8)):
        record = []
        for _ in range(rng.randint(1, 80)):
            now += rng.randrange(0, 600)
            record.append(ev(now - rng.choice([0, 0, 0, 3_000, 15_000]), rng.randrange(100, 600), 1.0 + rng.random()))
        records.append(with_ids(record, rng, pool))
    one, _ = fold(records, False, close_every)
    many, _ = fold(records, True, close_every)
    assert many == one


def test_a_copy_in_an_open_window_is_not_counted_and_survives_the_changelog() -> None:
    clock = PartitionClock(LATENESS)
    events = [{**ev(T0 + i * 100), "id": event_id(b"%d" % i)} for i in range(50)]
    state = InstanceState("web", "s1", 0)
    cols = access_columns(envelope(events))
    assert cols is not None and cols.keys is not None
    assert state.add_access_columns(cols.ts, cols.status, cols.latency_ms, cols.bytes_sent, W, clock,
                                    cols.keys) == (50, 0)
    recovered = InstanceState.loads(state.dumps())  # a restarted worker, from the changelog
    again = access_columns(envelope([*events[10:], {**ev(T0 + 6_000), "id": event_id(b"new")}]))
    assert again is not None and again.keys is not None
    assert recovered.add_access_columns(again.ts, again.status, again.latency_ms, again.bytes_sent, W, clock,
                                        again.keys) == (1, 0)
    assert recovered.add_access(events[0], W, clock, id_key(events[0]["id"])) is None
    assert sum(acc.requests for acc in recovered.windows.values()) == 51
    recovered.close(T0 + W, W, emitted_at=1)
    assert recovered.ids == {} and b'"ids":[]' in recovered.dumps()  # the keys go with the window
    assert recovered.add_access(events[0], W, clock, id_key(events[0]["id"])) is False  # now simply late
