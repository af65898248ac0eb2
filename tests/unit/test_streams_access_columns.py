"""The column decoder of access envelopes takes the fields the windows use, in event order, and hands
anything it does not take plainly back to the general path. (That the columns fold exactly as the
per-event path does is `test_streams_vectorised`.)"""

from __future__ import annotations

import orjson
import pytest

from streams.access_columns import access_columns
from tests.unit.test_streams_vectorised import T0, envelope, ev


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
