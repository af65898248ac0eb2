"""The column decoder of access envelopes folds a record exactly as the general (orjson) path does,
and hands anything it does not take plainly back to that path."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings

from ingest.schemas import decode_access_record
from streams.access_columns import access_columns
from streams.state import InstanceState, PartitionClock
from tests.unit.test_streams_vectorised import LATENESS, T0, W, ev, records, summary


def envelope(events: list[Any]) -> bytes:
    return orjson.dumps({"v": 1, "count": len(events), "events": events})


def fold_both(recs: list[list[dict[str, Any]]]) -> tuple[Any, Any]:
    """Each record through the columns and through orjson + `add_access_many`, on separate states."""
    out = []
    for columns in (True, False):
        clock = PartitionClock(LATENESS)
        states = {name: InstanceState("web", name, 0) for name in ("s1", "s2")}
        answers = []
        for record in recs:
            raw = envelope(record)
            state = states[record[0]["instance"]]
            if columns:
                cols = access_columns(raw)
                assert cols is not None and (cols.service, cols.instance) == ("web", state.instance)
                got = state.add_access_columns(cols.ts, cols.status, cols.latency_ms, cols.bytes_sent, W, clock)
            else:
                got = state.add_access_many(decode_access_record(raw), W, clock)
            answers.append((got, state.dumps()))
        out.append((answers, clock.max_ts, {n: (s.late, s.max_ts, summary(s)) for n, s in states.items()}))
    return out[0], out[1]


@given(records())
@settings(database=None, max_examples=150, deadline=None)
def test_columns_fold_equals_the_orjson_path(recs: list[list[dict[str, Any]]]) -> None:
    columns, general = fold_both(recs)
    assert columns == general


def test_fields_the_windows_do_not_use_are_skipped() -> None:
    full = [{**ev(T0 + i, 200 + i, 1.5 * i, 10 * i), "v": 1, "id": f"{i:032x}", "method": "GET",
             "route": "/a", "source": "clf", "extra": {"nested": [1, 2]}} for i in range(3)]
    cols = access_columns(envelope(full))
    assert cols is not None
    assert cols.ts.tolist() == [T0, T0 + 1, T0 + 2]
    assert cols.status.tolist() == [200, 201, 202]
    assert cols.latency_ms.tolist() == [0.0, 1.5, 3.0]
    assert cols.bytes_sent.tolist() == [0, 10, 20]
    assert str(cols.ts.dtype) == "int64" and str(cols.latency_ms.dtype) == "float64"


@pytest.mark.parametrize("raw", [
    orjson.dumps(ev(T0)),  # a lone event, not an envelope
    envelope([]),
    envelope([ev(T0), ev(T0, instance="s2")]),  # two instances
    envelope([ev("1700000000000")]),  # a numeric string: int() takes it, the general path decides
    envelope([ev(float(T0))]),  # a float time
    envelope([ev(T0, status=True)]),
    envelope([ev(T0, latency="7.5")]),
    envelope([ev(T0, size=2**63 - 1)]).replace(b"9223372036854775807", b"9223372036854775808"),  # int64 + 1
    envelope([ev(T0, size=2**63 - 1)]).replace(b"9223372036854775807", b"18446744073709551616"),  # uint64 + 1
    envelope([ev(T0, size=None)]),
    envelope([{"ts": T0, "service": "web", "instance": "s1"}]),  # fields missing
    envelope(["not an event"]),
    b'{"events": [',  # not JSON
    b"[]",
])
def test_anything_else_goes_back_to_the_general_path(raw: bytes) -> None:
    assert access_columns(raw) is None
