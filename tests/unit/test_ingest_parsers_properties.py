"""Property tests for every line parser: whatever bytes arrive, the answer is an event or a typed rejection.

Arbitrary bytes and text, every truncation of real lines, mutated real lines and 1 MB lines go
through HAProxy, CLF, JSON and auto; what they build must pass the contract after a JSON round
trip. Generated CLF and JSON lines must come back with the fields they were made from.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from infra.core.datasets import NASA_SAMPLE, dataset_path

pytest.importorskip("hypothesis")

from hypothesis import given, settings
from hypothesis import strategies as st

from infra.core.settings import IngestSettings
from ingest.parsers.auto import parser_for
from ingest.parsers.base import LineParser
from ingest.schemas import AccessEvent, Rejection

SETTINGS = IngestSettings(log_timezone="UTC", default_service="svc")
PARSERS: dict[str, LineParser] = {fmt: parser_for(fmt, SETTINGS) for fmt in ("haproxy", "clf", "json", "auto")}
NAMES = sorted(PARSERS)
NASA = dataset_path(NASA_SAMPLE)
REAL = [
    *NASA.read_bytes().splitlines(keepends=True)[:12],
    b'2001:db8::1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a\\"b?x=1 HTTP/1.0" 200 2326 "http://r/" '
    b'"Mozilla/4.08 [en]" rt=0.012\n',
    b'<134>Nov 28 21:36:07 haproxy[3905]: 127.0.0.1:40408 [28/Nov/2026:21:36:07.277] fe_demo demo/s1 '
    b'0/0/0/5/5 200 182 - - ---- 1/1/0/0/0 0/0 "GET /index.html?x=1 HTTP/1.1"\n',
    b'{"time": "2023-11-14T22:13:20.123Z", "method": "GET", "path": "/a?b", "status": 200, "latency_ms": 1.5, '
    b'"bytes": 12, "host": "h"}\n',
]
MB = 1 << 20
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def check(name: str, raw: bytes | str) -> AccessEvent | Rejection:
    result = PARSERS[name](raw, 0)
    if isinstance(result, AccessEvent):
        assert AccessEvent.model_validate_json(result.model_dump_json()) == result
    else:
        assert isinstance(result, Rejection), result
        assert result.reason and " " not in result.reason
        Rejection.model_validate_json(result.model_dump_json())
    return result


@pytest.mark.parametrize("name", NAMES)
@given(raw=st.binary(max_size=600))
@settings(database=None)  # no .hypothesis/ folder in the repository
def test_arbitrary_bytes_never_raise(name: str, raw: bytes) -> None:
    check(name, raw)


@pytest.mark.parametrize("name", NAMES)
@given(raw=st.text(max_size=600))
@settings(database=None)
def test_arbitrary_text_never_raises(name: str, raw: str) -> None:
    check(name, raw)


@pytest.mark.parametrize("name", NAMES)
def test_every_truncation_of_real_lines(name: str) -> None:
    for line in REAL:
        for cut in range(len(line) + 1):
            check(name, line[:cut])
            check(name, line[cut:])


@pytest.mark.parametrize("name", NAMES)
@given(line=st.sampled_from(REAL), at=st.integers(0, 400), cut=st.integers(0, 40), insert=st.binary(max_size=40))
@settings(max_examples=300, database=None)
def test_mutated_real_lines(name: str, line: bytes, at: int, cut: int, insert: bytes) -> None:
    check(name, line[:at] + insert + line[at + cut:])


def _huge_lines() -> list[bytes]:
    rng = random.Random(1)
    clf_head = b'h - - [10/Oct/2000:13:55:36 -0700] "'
    return [
        rng.randbytes(MB),
        bytes(rng.choice(b' ["\\]{}:/-0123456789') for _ in range(MB)),
        clf_head + b"GET /" + b"a" * MB + b' HTTP/1.1" 200 1',
        clf_head + b'\\"' * (MB // 2) + b'" 200 1',
        clf_head + b'\\"' * (MB // 2),
        clf_head + b'"' * MB,
        b"h - - " + b" [" * (MB // 2),
        b"h - - [" + b"1" * MB,
        clf_head + b'GET / HTTP/1.1" 200 ' + b"9" * MB,
        clf_head + b'GET / HTTP/1.1" 200 1 "-" "' + b"x" * MB + b'" 12',
        clf_head + b'GET / HTTP/1.1" 200 1 ' + b"rt=" * (MB // 3),
        b"[" * MB,
        b"{" * MB,
        b'{"a":' * (MB // 5),
        b'{"time": 1, "method": "GET", "path": "/' + b"p" * MB + b'", "status": 200}',
        b"<134>" + b"Nov 28 21:36:07 haproxy[3905]: " * (MB // 32),
        b"<134>1 " + b"[x=" * (MB // 3),
        b"1.2.3.4:5 [" + b"]" * MB,
        REAL[-2][:200] + b"/" * MB,
    ]


HUGE = _huge_lines()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("index", range(len(HUGE)))
def test_one_megabyte_lines_are_handled_in_linear_time(name: str, index: int) -> None:
    started = time.process_time()
    check(name, HUGE[index])
    assert time.process_time() - started < 2.0  # a quadratic regex takes minutes on these


_host = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
)
_path = st.text("abcXYZ019/._~%-+!$&'()*,;=:@", max_size=40).map(lambda p: "/" + p)


@given(
    host=_host, when=st.datetimes(datetime(1900, 1, 2), datetime(2200, 1, 1)),
    offset_min=st.integers(-23 * 60 - 59, 23 * 60 + 59), method=st.sampled_from(["GET", "POST", "M-SEARCH", "PURGE"]),
    path=_path, query=st.one_of(st.just(""), st.text("a=&b", max_size=10).map(lambda q: "?" + q)),
    protocol=st.sampled_from(["", " HTTP/1.0", " HTTP/1.1", " HTTP/2.0"]), status=st.integers(0, 999),
    sent=st.one_of(st.just(None), st.integers(0, 10**18 - 1)),
    combined=st.one_of(st.just(""), st.tuples(st.text(max_size=20), st.text(max_size=20)).map(
        lambda t: ' "{}" "{}"'.format(*(x.replace("\\", "\\\\").replace('"', '\\"') for x in t)))),
    latency_us=st.one_of(st.just(None), st.integers(0, 10**9)),
)
@settings(max_examples=300, database=None)
def test_generated_clf_lines_round_trip(host: str, when: datetime, offset_min: int, method: str, path: str,
                                       query: str, protocol: str, status: int, sent: int | None, combined: str,
                                       latency_us: int | None) -> None:
    zone = timezone(timedelta(minutes=offset_min))
    sign = "-" if offset_min < 0 else "+"
    hh, mm = divmod(abs(offset_min), 60)
    date = f"{when:%d}/{MONTHS[when.month - 1]}/{when:%Y:%H:%M:%S} {sign}{hh:02d}{mm:02d}"
    line = (f'{host} - - [{date}] "{method} {path}{query}{protocol}" {status:03d} {"-" if sent is None else sent}'
            f'{combined}{"" if latency_us is None else f" {latency_us}"}\n')
    for name in ("clf", "auto"):
        e = check(name, line.encode())
        assert isinstance(e, AccessEvent), (line, e)
        assert (e.instance, e.method, e.route, e.status, e.bytes_sent, e.source) == (
            "-", method, path, status, sent or 0, "clf")  # the client host never names the instance
        assert e.ts == int(when.replace(tzinfo=zone, microsecond=0).timestamp()) * 1000
        assert e.latency_ms == pytest.approx(0.0 if latency_us is None else latency_us / 1000)


@given(
    ts_ms=st.integers(10**11, 7 * 10**12),  # 1973..2191: where the size tells seconds from ms
    shape=st.sampled_from(["s", "ms", "iso", "str"]),
    method=st.text(min_size=1, max_size=10), path=_path, status=st.integers(0, 999),
    latency=st.floats(0, 1e9, allow_nan=False), sent=st.integers(0, 10**18),
    service=st.one_of(st.none(), st.text(min_size=1, max_size=10)),
)
@settings(max_examples=300, database=None)
def test_generated_json_lines_round_trip(ts_ms: int, shape: str, method: str, path: str, status: int, latency: float,
                                         sent: int, service: str | None) -> None:
    when = datetime.fromtimestamp(ts_ms / 1000, UTC)
    ts: object = {"s": ts_ms / 1000, "ms": ts_ms, "str": str(ts_ms), "iso": when.isoformat()}[shape]
    obj = {"time": ts, "method": method, "path": path, "status": status, "latency_ms": latency, "bytes": sent,
           "host": "h1"}
    if service is not None:
        obj["service"] = service
    line = json.dumps(obj).encode()
    for name in ("json", "auto"):
        e = check(name, line)
        assert isinstance(e, AccessEvent), (line, e)
        assert e.ts == ts_ms
        assert (e.method, e.route, e.status, e.latency_ms, e.bytes_sent, e.source) == (
            method, path, status, latency, sent, "json")
        assert e.key == f"{service or 'svc'}/h1"
