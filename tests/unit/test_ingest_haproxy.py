"""HAProxy httplog parsing: real captured lines, their variants, and every way a line can be bad."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from ingest.parsers.haproxy import HAProxyParser, parse_haproxy_line, route_of
from ingest.parsers.syslog_framing import syslog_message
from ingest.schemas import RAW_LIMIT, AccessEvent, Rejection, encode_batch

UTC_PARSER = HAProxyParser(UTC)

# Captured from HAProxy 2.6.12 (`log 127.0.0.1:25514 local0`, `option httplog`) over UDP, verbatim.
REAL_3164 = (b'<134>Nov 28 21:36:07 haproxy[3905]: 127.0.0.1:40408 [28/Nov/2026:21:36:07.277] fe_demo demo/s1 '
             b'0/0/0/5/5 200 182 - - ---- 1/1/0/0/0 0/0 "GET /index.html?x=1 HTTP/1.1"\n')
# The same request sent to a second target with `format rfc5424`, and to a third with `format raw`.
REAL_3164_B = (b'<134>Nov 28 21:36:21 haproxy[4023]: 127.0.0.1:32996 [28/Nov/2026:21:36:21.396] fe_5424 demo/s1 '
               b'0/0/0/1/1 200 182 - - ---- 1/1/0/0/0 0/0 "GET /index.html?x=1 HTTP/1.1"\n')
REAL_5424_B = (b'<134>1 2026-11-28T21:36:21.399862+00:00 - haproxy 4023 - - 127.0.0.1:32996 '
               b'[28/Nov/2026:21:36:21.396] fe_5424 demo/s1 0/0/0/1/1 200 182 - - ---- 1/1/0/0/0 0/0 '
               b'"GET /index.html?x=1 HTTP/1.1"\n')
REAL_RAW_B = (b'127.0.0.1:32996 [28/Nov/2026:21:36:21.396] fe_5424 demo/s1 0/0/0/1/1 200 182 - - ---- '
              b'1/1/0/0/0 0/0 "GET /index.html?x=1 HTTP/1.1"\n')
REAL_LOGASAP_CAPTURES = (
    b'<134>Nov 28 21:36:21 haproxy[4023]: 127.0.0.1:46452 [28/Nov/2026:21:36:21.408] fe_cap slow/s2 '
    b'0/0/0/1/+1 200 +139 - - ---- 1/1/1/1/0 0/0 {127.0.0.1:28082} {text/plain} "GET /a/b?q=1 HTTP/1.1"\n')
REAL_SERVER_TIMEOUT = (
    b'<134>Nov 28 21:36:22 haproxy[4023]: 127.0.0.1:38262 [28/Nov/2026:21:36:21.939] fe_to slow_to/s3 '
    b'0/0/0/-1/501 504 198 - - sH-- 2/1/0/0/0 0/0 "GET /slow HTTP/1.1"\n')
REAL_CLIENT_ABORT = (
    b'<134>Nov 28 21:36:37 edge-01 haproxy[4268]: 127.0.0.1:57548 [28/Nov/2026:21:36:37.453] fe_ab '
    b'slow_ab/s4 0/0/0/-1/0 400 206 - - CH-- 2/2/1/1/0 0/0 "GET /slow HTTP/1.1"\n')
REAL_NOSRV = (b'<134>Nov 28 21:36:07 haproxy[3905]: 127.0.0.1:40428 [28/Nov/2026:21:36:07.312] fe_demo '
              b'nosrv/<NOSRV> 0/-1/-1/-1/0 503 217 - - SC-- 1/1/0/0/0 0/0 "GET /nosrv/x HTTP/1.1"\n')
REAL_BADREQ = (b'<134>Nov 28 21:36:28 haproxy[4023]: 127.0.0.1:35780 [28/Nov/2026:21:36:28.690] fe_raw '
               b'fe_raw/<NOSRV> -1/-1/-1/-1/0 400 0 - - PR-- 1/1/0/0/0 0/0 "<BADREQ>"\n')
REAL_H2 = (b'<134>Nov 28 21:39:30 haproxy[5895]: 127.0.0.1:41954 [28/Nov/2026:21:39:30.076] fe_h2 demo/s1 '
           b'0/0/0/1/1 200 182 - - ---- 1/1/0/0/0 0/0 "GET http://127.0.0.1:28086/index.html?x=1 HTTP/2.0"\n')
REAL_TCPLOG = (b'<134>Nov 28 21:39:30 haproxy[5895]: 127.0.0.1:46260 [28/Nov/2026:21:39:30.086] fe_tcp '
               b'demo_tcp/t1 1/0/1 187 -- 1/1/0/0/0 0/0\n')
# HAProxy cuts messages at the log target's `len` (1024 by default), keeping the newline.
_LONG = b"a" * 2000
_HEAD_1024 = (b'<134>Nov 28 21:39:30 haproxy[5895]: 127.0.0.1:59298 [28/Nov/2026:21:39:30.220] fe_http demo/s1 '
              b'0/0/0/1/1 404 500 - - ---- 1/1/0/0/0 0/0 "GET /')
REAL_CUT_IN_PATH = (_HEAD_1024 + _LONG)[:1023] + b"\n"
REAL_CUT_IN_QUERY = (_HEAD_1024 + b"p?" + _LONG)[:1023] + b"\n"

T_0707_277 = int(datetime(2026, 11, 28, 21, 36, 7, 277000, tzinfo=UTC).timestamp() * 1000)


def event(raw: bytes | str, parser: HAProxyParser = UTC_PARSER) -> AccessEvent:
    result = parser(raw, 1)
    assert isinstance(result, AccessEvent), result
    return result


def rejection(raw: bytes | str, parser: HAProxyParser = UTC_PARSER) -> Rejection:
    result = parser(raw, 1)
    assert isinstance(result, Rejection), result
    return result


def test_real_line_becomes_event_with_every_field() -> None:
    e = event(REAL_3164)
    assert e.model_dump() == {
        "v": 1, "id": e.id, "ts": T_0707_277, "service": "demo", "instance": "s1", "method": "GET",
        "route": "/index.html", "status": 200, "latency_ms": 5.0, "bytes_sent": 182, "source": "haproxy",
    }
    assert e.key == "demo/s1"
    # model_construct skipped validation: what we built must still pass it, and serialize.
    assert AccessEvent.model_validate_json(e.model_dump_json()) == e
    assert encode_batch([e, e]).startswith(b'{"v":1,"count":2,"events":[{')


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (REAL_LOGASAP_CAPTURES, {"service": "slow", "instance": "s2", "route": "/a/b", "latency_ms": 1.0,
                                 "bytes_sent": 139, "status": 200}),
        (REAL_SERVER_TIMEOUT, {"service": "slow_to", "instance": "s3", "status": 504, "latency_ms": 501.0}),
        (REAL_CLIENT_ABORT, {"instance": "s4", "status": 400, "latency_ms": 0.0, "route": "/slow"}),
        (REAL_H2, {"route": "/index.html", "method": "GET", "status": 200}),
        (REAL_CUT_IN_QUERY, {"route": "/p", "status": 404}),
        # Ta -1: the sum of the known phases (TR 3 + Tc 2 + Tr 40), a lower bound.
        (b'10.0.0.1:1 [01/Jan/2026:00:00:00.000] fe be/srv 3/-1/2/40/-1 200 5 - - CD-- 1/1/0/0/0 0/0 '
         b'"POST /api/v1/items HTTP/1.1"', {"latency_ms": 45.0, "method": "POST", "route": "/api/v1/items"}),
        (b'10.0.0.1:1 [01/Jan/2026:00:00:00.000] fe be/srv -1/-1/-1/-1/-1 200 5 - - CD-- 1/1/0/0/0 0/0 '
         b'"GET / HTTP/1.1"', {"latency_ms": 0.0, "route": "/"}),
        (b'10.0.0.1:1 [01/Jan/2026:00:00:00.000] fe be/srv 0/0/0/12345/98765 302 0 - - ---- 1/1/0/0/+2 0/0 '
         b'"DELETE /x?y HTTP/1.0"', {"latency_ms": 98765.0, "status": 302, "method": "DELETE", "route": "/x"}),
        # IPv6 client, SSL frontend (`~`), hostname in the 3164 header, CRLF, a str input.
        ('<134>Jan  5 01:02:03 lb-1 haproxy[9]: ::1:443 [05/Jan/2026:01:02:03.004] fe~ api/web-1.a 1/0/1/2/4 '
         '201 77 - - ---- 1/1/0/0/0 0/0 "PUT /v2/k HTTP/1.1"\r\n',
         {"service": "api", "instance": "web-1.a", "latency_ms": 4.0, "status": 201}),
    ],
)
def test_line_variants(raw: bytes | str, expected: dict[str, object]) -> None:
    got = event(raw).model_dump()
    assert {k: got[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (REAL_NOSRV, "no_server"),
        (REAL_BADREQ, "no_server"),
        (REAL_TCPLOG, "not_httplog"),
        (REAL_CUT_IN_PATH, "truncated"),
        (REAL_3164[:110], "truncated"),
        (b"", "empty"),
        (b"\n", "empty"),
        (b"<134>Nov 28 21:36:07 haproxy[3905]: ", "empty"),
        (b"\x00\x01\x02 garbage \x7f", "not_httplog"),
        (b"hello world", "not_httplog"),
        (b"<134>Nov 28 21:36:07 haproxy[3905]: Proxy fe_demo started.", "not_httplog"),
        (REAL_3164.replace(b"/index", b"/\xff\xfeindex"), "bad_encoding"),
        (REAL_3164.replace(b" 200 ", b" -1 "), "no_server"),
        (REAL_3164.replace(b" 200 ", b" 2x0 "), "bad_status"),
        (REAL_3164.replace(b" 200 ", b" 1000 "), "bad_status"),
        (REAL_3164.replace(b" 200 ", " \u0662\u0660\u0660 ".encode()), "bad_status"),  # Arabic-Indic 200
        (REAL_3164.replace(b"0/0/0/5/5", "0/0/0/5/\u0665".encode()), "bad_timers"),
        (REAL_3164.replace(b"28/Nov/2026", b"31/Nov/2026"), "bad_date"),
        (REAL_3164.replace(b"28/Nov/2026", b"28/Foo/2026"), "bad_date"),
        (REAL_3164.replace(b":21:36:07.277]", b":25:36:07.277]"), "bad_date"),
        (REAL_3164.replace(b"0/0/0/5/5", b"0/0/0/5"), "bad_timers"),
        (REAL_3164.replace(b"0/0/0/5/5", b"0/0/0/5/x"), "bad_timers"),
        (REAL_3164.replace(b"0/0/0/5/5", b"0/0/0/5/-2"), "bad_timers"),
        (REAL_3164.replace(b"0/0/0/5/5", b"0/0/0/5/1_0"), "bad_timers"),
        (REAL_3164.replace(b" 182 ", b" -5 "), "bad_bytes"),
        (REAL_3164.replace(b'"GET /index.html?x=1 HTTP/1.1"', b'"GET"'), "bad_request"),
        (REAL_3164.replace(b'"GET /index.html?x=1 HTTP/1.1"', b'""'), "bad_request"),
    ],
)
def test_rejections_are_typed(raw: bytes, reason: str) -> None:
    rej = rejection(raw)
    assert (rej.reason, rej.source, rej.ts_received) == (reason, "haproxy", 1), rej.detail
    assert rej.detail
    Rejection.model_validate_json(rej.model_dump_json())


def test_rejection_keeps_raw_truncated_and_escaped() -> None:
    rej = rejection(b"\xff" * (RAW_LIMIT + 100))
    assert rej.reason == "bad_encoding"
    assert rej.raw == ("\\xff" * RAW_LIMIT)[:RAW_LIMIT]  # the contract cuts bytes, then characters
    assert rejection(REAL_NOSRV).raw == REAL_NOSRV.decode()


def test_received_time_defaults_to_now() -> None:
    before = time.time_ns() // 1_000_000
    result = parse_haproxy_line(b"junk")
    assert isinstance(result, Rejection)
    assert before <= result.ts_received <= time.time_ns() // 1_000_000


def test_id_is_deterministic_and_ignores_framing() -> None:
    ids = {event(raw).id for raw in (REAL_3164_B, REAL_5424_B, REAL_RAW_B, REAL_3164_B.rstrip(b"\n"))}
    assert len(ids) == 1
    (the_id,) = ids
    assert len(the_id) == 32 and int(the_id, 16) >= 0
    assert event(REAL_3164_B, HAProxyParser(ZoneInfo("Asia/Tokyo"))).id == the_id
    assert event(REAL_3164).id != the_id
    # Different requests on one keep-alive connection differ somewhere in the line, so in id.
    assert event(REAL_3164.replace(b".277]", b".278]")).id != event(REAL_3164).id


def test_timezone_conversion() -> None:
    ny = HAProxyParser(ZoneInfo("America/New_York"))
    # November: EST, UTC-5.
    assert event(REAL_3164, ny).ts == T_0707_277 + 5 * 3600 * 1000
    # July: EDT, UTC-4.
    july = REAL_3164.replace(b"28/Nov/2026", b"04/Jul/2026")
    july_utc = int(datetime(2026, 7, 4, 21, 36, 7, 277000, tzinfo=UTC).timestamp() * 1000)
    assert event(july, ny).ts == july_utc + 4 * 3600 * 1000
    assert event(REAL_3164, HAProxyParser(timezone(timedelta(hours=2)))).ts == T_0707_277 - 2 * 3600 * 1000
    assert parse_haproxy_line(REAL_3164, ZoneInfo("America/New_York")) == event(REAL_3164, ny)


def test_default_timezone_is_the_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(time, "tzset"):
        pytest.skip("needs time.tzset")
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+5:30, no DST
    time.tzset()
    try:
        assert event(REAL_3164, HAProxyParser()).ts == T_0707_277 - (5 * 3600 + 1800) * 1000
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("date", "ms"), [("01/Jan/2026:00:00:00", 0), ("01/Jan/2026:00:00:00.5", 500), ("01/Jan/2026:00:00:00.123456", 123)]
)
def test_date_fractions(date: str, ms: int) -> None:
    line = f'1.2.3.4:5 [{date}] fe be/s 0/0/0/0/0 200 0 - - ---- 0/0/0/0/0 0/0 "GET / HTTP/1.1"'
    assert event(line).ts == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * 1000 + ms


@pytest.mark.parametrize(
    ("target", "route"),
    [
        ("/a/b?c=d", "/a/b"),
        ("/", "/"),
        ("/a?", "/a"),
        ("https://example.com/x/y?z", "/x/y"),
        ("http://example.com", "/"),
        ("http://example.com?q", "/"),
        ("*", "*"),
        ("example.com:443", "example.com:443"),
    ],
)
def test_route_of(target: str, route: str) -> None:
    assert route_of(target) == route


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("<134>Nov 28 21:36:07 haproxy[3905]: msg x", "msg x"),
        ("<134>Nov  8 21:36:07 host haproxy[1]: msg", "msg"),
        ("<134>Nov 28 21:36:07 haproxy: msg", "msg"),
        ("<134>1 2026-11-28T21:30:07.123456+00:00 host haproxy 1234 - - msg", "msg"),
        ('<134>1 2026-11-28T21:30:07Z host app - ID1 [ex@1 a="b\\]c"][x@2 y="z"] msg', "msg"),
        ("<134>1 2026-11-28T21:30:07Z host app - - - \ufeffmsg", "msg"),
        ("<134>msg", "msg"),
        ("msg", "msg"),
        ("<notpri>msg", "<notpri>msg"),
    ],
)
def test_syslog_framing(line: str, message: str) -> None:
    assert syslog_message(line) == message
