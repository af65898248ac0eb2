"""Property tests: the HAProxy parser never raises, and what it builds always passes the contract."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

pytest.importorskip("hypothesis")

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.parsers.haproxy import HAProxyParser
from ingest.schemas import AccessEvent, Rejection

PARSER = HAProxyParser(UTC)
REAL = (b'<134>Nov 28 21:36:07 haproxy[3905]: 127.0.0.1:40408 [28/Nov/2026:21:36:07.277] fe_demo demo/s1 '
        b'0/0/0/5/5 200 182 - - ---- 1/1/0/0/0 0/0 "GET /index.html?x=1 HTTP/1.1"\n')
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def check(raw: bytes | str) -> None:
    result = PARSER(raw, 0)
    if isinstance(result, AccessEvent):
        AccessEvent.model_validate_json(result.model_dump_json())
    else:
        assert isinstance(result, Rejection)
        Rejection.model_validate_json(result.model_dump_json())


@given(st.binary(max_size=600))
@settings(database=None)  # no .hypothesis/ folder in the repository
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    check(raw)


@given(st.text(max_size=600))
@settings(database=None)
def test_arbitrary_text_never_raises(raw: str) -> None:
    check(raw)


@given(st.integers(0, len(REAL)), st.integers(0, 40), st.binary(max_size=40))
@settings(max_examples=500, database=None)
def test_mutated_real_lines_never_raise_nor_build_invalid_events(at: int, cut: int, insert: bytes) -> None:
    check(REAL[:at] + insert + REAL[at + cut:])


_name = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-", min_size=1, max_size=20)
_timer = st.one_of(st.just(-1), st.integers(0, 10**7))


@given(
    when=st.datetimes(datetime(1971, 1, 1), datetime(2200, 1, 1)),
    backend=_name, server=_name.filter(lambda s: s != "<NOSRV>"),
    timers=st.lists(_timer, min_size=5, max_size=5),
    status=st.integers(0, 999), sent=st.integers(0, 10**12),
    method=st.sampled_from(["GET", "POST", "PURGE"]),
    path=st.text("abc/%#-_~.", max_size=30).map(lambda p: "/" + p),
    query=st.one_of(st.just(""), st.text("a=&b", max_size=10).map(lambda q: "?" + q)),
)
@settings(database=None)
def test_generated_lines_round_trip(when: datetime, backend: str, server: str, timers: list[int], status: int,
                                   sent: int, method: str, path: str, query: str) -> None:
    date = f"{when:%d}/{MONTHS[when.month - 1]}/{when:%Y:%H:%M:%S}.{when.microsecond // 1000:03d}"
    line = (f"<134>Jan  1 00:00:00 haproxy[1]: 10.1.2.3:4567 [{date}] fe {backend}/{server} "
            f"{'/'.join(map(str, timers))} {status} {sent} - - ---- 1/1/0/0/0 0/0 \"{method} {path}{query} HTTP/1.1\"")
    e = PARSER(line.encode(), 0)
    assert isinstance(e, AccessEvent), e
    ta = timers[4]
    assert (e.service, e.instance, e.status, e.bytes_sent, e.method, e.route) == (
        backend, server, status, sent, method, path)
    assert e.latency_ms == (ta if ta >= 0 else sum(t for t in timers[:4] if t > 0))
    assert e.ts == int(when.replace(tzinfo=UTC, microsecond=0).timestamp()) * 1000 + when.microsecond // 1000
