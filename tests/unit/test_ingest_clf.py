"""Common/Combined parsing: the NASA sample, the oddities of real logs, and every way a line can be bad."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from infra.core.datasets import NASA_SAMPLE, dataset_path
from infra.core.settings import RouteRule
from ingest.parsers import clf
from ingest.parsers.base import event_id
from ingest.parsers.clf import CLFParser, clf_date_ms, latency_ms, make_event, split_request
from ingest.routing import Router
from ingest.schemas import AccessEvent, Rejection

NASA = dataset_path(NASA_SAMPLE)
PARSER = CLFParser(Router([], "nasa"), UTC)

LINE = b'mjv.lib.uconn.edu - - [06/Jul/1995:13:34:03 -0400] "GET /shuttle/missions/sts-71/movies/sts-71-launch-2.mpg HTTP/1.0" 200 543680\n'  # noqa: E501
T_LINE = int(datetime(1995, 7, 6, 17, 34, 3, tzinfo=UTC).timestamp()) * 1000
COMBINED = (b'2001:db8::1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif?x=1 HTTP/1.0" 200 2326 '
            b'"http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"')
T_COMBINED = int(datetime(2000, 10, 10, 20, 55, 36, tzinfo=UTC).timestamp()) * 1000


def event(raw: bytes | str, parser: CLFParser = PARSER) -> AccessEvent:
    result = parser(raw, 1)
    assert isinstance(result, AccessEvent), result
    return result


def rejection(raw: bytes | str) -> Rejection:
    result = PARSER(raw, 7)
    assert isinstance(result, Rejection), result
    return result


def test_every_nasa_sample_line_parses_and_passes_the_contract() -> None:
    lines = NASA.read_bytes().splitlines(keepends=True)
    assert len(lines) == 1000
    events = [event(line) for line in lines]
    for e in events:
        assert AccessEvent.model_validate_json(e.model_dump_json()) == e
    assert {e.service for e in events} == {"nasa"}
    assert all(e.method in {"GET", "POST", "HEAD"} for e in events)
    # July and August 1995, all in -0400: every instant within those months (UTC).
    lo, hi = datetime(1995, 7, 1, 4, tzinfo=UTC), datetime(1995, 9, 1, 4, tzinfo=UTC)
    assert all(lo.timestamp() * 1000 <= e.ts < hi.timestamp() * 1000 for e in events)
    assert sum(e.bytes_sent == 0 for e in events) > 50  # the 304s and the `-` bytes
    assert len({e.id for e in events}) == len(set(lines))


def test_real_line_becomes_event_with_every_field() -> None:
    e = event(LINE)
    assert e.model_dump() == {
        "v": 1, "id": event_id(LINE.rstrip(b"\n")), "ts": T_LINE, "service": "nasa", "instance": "-",
        "method": "GET", "route": "/shuttle/missions/sts-71/movies/sts-71-launch-2.mpg", "status": 200,
        "latency_ms": 0.0, "bytes_sent": 543680, "source": "clf",
    }


def test_combined_line() -> None:
    e = event(COMBINED)
    assert (e.instance, e.ts, e.method, e.route, e.status, e.bytes_sent, e.latency_ms) == (
        "-", T_COMBINED, "GET", "/apache_pb.gif", 200, 2326, 0.0)  # the client is never the instance


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Real NASA oddities: no protocol, `-` bytes, a fragment in the path.
        (b'beast.cs.iastate.edu - - [14/Jul/1995:16:06:07 -0400] "GET /history/apollo/apollo-13/images/70HC464.GIF"'
         b' 200 85750', {"route": "/history/apollo/apollo-13/images/70HC464.GIF", "bytes_sent": 85750}),
        (b'line029.nwm.mindlink.net - - [04/Jul/1995:00:27:34 -0400] "GET /shuttle/missions/sts-71/news HTTP/1.0"'
         b' 302 -', {"status": 302, "bytes_sent": 0}),
        # Escaped quotes in the request and in the agent; the agent's number is not a latency.
        (b'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /a\\"b HTTP/1.1" 404 - "-" "ua \\"x\\" 5"',
         {"route": '/a"b', "status": 404, "latency_ms": 0.0}),
        # A stray unescaped quote (old servers), with and without a space after it.
        (b'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /a"b HTTP/1.0" 200 7', {"route": '/a"b', "bytes_sent": 7}),
        (b'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /a" b HTTP/1.0" 200 7', {"route": '/a" b', "status": 200}),
        # Unescaped spaces in the path, lowercase/odd methods, absolute URI (proxy), CONNECT.
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET /a b/c HTTP/1.1" 200 1', {"route": "/a b/c"}),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "M-SEARCH * HTTP/1.1" 200 1', {"method": "M-SEARCH", "route": "*"}),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET http://x.org/p?q HTTP/1.0" 200 1', {"route": "/p"}),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "CONNECT x.org:443 HTTP/1.1" 200 1',
         {"method": "CONNECT", "route": "x.org:443"}),
        # Requests the server could not read: kept (the 400 is signal), method and route `-`.
        (b'h - - [10/Oct/2000:13:55:36 -0700] "" 400 0', {"method": "-", "route": "-", "status": 400}),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "\\x16\\x03\\x01\\x00\\xA5" 400 157 "-" "-"',
         {"method": "-", "route": "-", "status": 400, "bytes_sent": 157}),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET" 400 0', {"method": "-", "route": "-"}),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "G<T /x HTTP/1.1" 400 0', {"method": "-", "route": "-"}),
        # Hosts: IPv4, IPv6, names; an authuser with a space; ident set.
        (b'::1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1', {"route": "/", "bytes_sent": 1}),
        (b'fe80::1%eth0 ident John Doe [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1',
         {"route": "/", "ts": T_COMBINED}),
        # Not UTF-8 (the NASA logs are ISO-8859-1): decoded as latin-1, never rejected; UTF-8 stays UTF-8.
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET /caf\xe9 HTTP/1.1" 200 5', {"route": "/caf\u00e9"}),
        ('h - - [10/Oct/2000:13:55:36 -0700] "GET /caf\u00e9 HTTP/1.1" 200 5'.encode(), {"route": "/caf\u00e9"}),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET /\xff\xfe HTTP/1.1" 200 5', {"route": "/\u00ff\u00fe"}),
        # Line endings, a str input.
        (COMBINED + b"\r\n", {"ts": T_COMBINED}),
        (COMBINED.decode() + "\n", {"ts": T_COMBINED, "bytes_sent": 2326}),
        # Status 000 (nginx, client gone) and 999 are three digits; huge byte counts up to 18 digits.
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 000 0', {"status": 0}),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 999999999999999999', {"bytes_sent": 10**18 - 1}),
    ],
)
def test_oddities_of_real_logs_are_accepted(raw: bytes | str, expected: dict[str, object]) -> None:
    e = event(raw)
    got = e.model_dump()
    assert {k: got[k] for k in expected} == expected
    assert AccessEvent.model_validate_json(e.model_dump_json()) == e


@pytest.mark.parametrize(
    ("date", "utc"),
    [
        ("10/Oct/2000:13:55:36 -0700", datetime(2000, 10, 10, 20, 55, 36, tzinfo=UTC)),
        ("10/Oct/2000:20:55:36 +0000", datetime(2000, 10, 10, 20, 55, 36, tzinfo=UTC)),
        ("11/Oct/2000:02:25:36 +0530", datetime(2000, 10, 10, 20, 55, 36, tzinfo=UTC)),
        ("11/Oct/2000:02:25:36 +05:30", datetime(2000, 10, 10, 20, 55, 36, tzinfo=UTC)),
        ("01/Jan/2000:00:00:00 +1400", datetime(1999, 12, 31, 10, tzinfo=UTC)),
        ("10/Oct/2000:13:55:36.250 -0700", datetime(2000, 10, 10, 20, 55, 36, 250000, tzinfo=UTC)),
        ("29/Feb/2024:23:59:59 -0000", datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
        ("01/Jan/1960:00:00:00 +0000", datetime(1960, 1, 1, tzinfo=UTC)),
    ],
)
def test_dates_honour_their_offset(date: str, utc: datetime) -> None:
    expected = round(utc.timestamp() * 1000)
    assert clf_date_ms(date, None) == expected
    assert event(f'h - - [{date}] "GET / HTTP/1.1" 200 1').ts == expected


def test_date_without_offset_is_in_the_configured_zone() -> None:
    ny = CLFParser(Router([], "s"), ZoneInfo("America/New_York"))
    line = 'h - - [06/Jul/1995:13:34:03] "GET / HTTP/1.0" 200 1'
    assert event(line, ny).ts == T_LINE  # EDT, -0400
    assert event(line).ts == T_LINE - 4 * 3600 * 1000  # the UTC parser
    winter = event('h - - [06/Jan/1995:13:34:03] "GET / HTTP/1.0" 200 1', ny).ts
    assert winter == int(datetime(1995, 1, 6, 18, 34, 3, tzinfo=UTC).timestamp()) * 1000  # EST, -0500


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        (' "-" "curl/8" 1234', 1.234),  # Apache %D, microseconds
        (" 250000", 250.0),  # CLF + %D
        (' "-" "curl/8" 0.005', 5.0),  # nginx $request_time, seconds
        (' "-" "curl/8" rt=0.250 uct="0.001" urt="0.249"', 250.0),
        (' "-" "curl/8" request_time=1.5', 1500.0),
        (' "-" "curl/8" rt="0.042"', 42.0),
        (' "-" "curl/8"', 0.0),
        (' "-" "curl/8" -', 0.0),
        (' "-" "curl/8 1234"', 0.0),
        (' "-" "curl/8" 1e9', 0.0),
        (' "-" "curl/8" 12345678901234567890', 0.0),  # absurd: ignored rather than an infinite latency
        (' "-" "curl/8" urt=0.3', 0.0),  # upstream time alone is not the request's
    ],
)
def test_latency_from_trailing_fields(rest: str, expected: float) -> None:
    assert latency_ms(rest) == pytest.approx(expected)
    e = event(f'h - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1{rest}')
    assert e.latency_ms == pytest.approx(expected)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"\r\n", "empty"),
        (b"hello world", "not_clf"),
        (b"\x00\x01\x02 garbage \x7f", "not_clf"),
        (b'h - - 10/Oct/2000:13:55:36 -0700 "GET / HTTP/1.1" 200 1', "not_clf"),
        (LINE[:20], "not_clf"),
        (LINE[:40], "truncated"),  # inside the date
        (LINE[:53], "truncated"),  # right after the date
        (LINE[:80], "truncated"),  # inside the request
        (LINE[:-12], "truncated"),  # before the status
        (LINE[:-8], "truncated"),  # before the bytes
        (b'h - - [10/Oct/2000:13:55:36 -0700] GET / HTTP/1.1 200 1', "missing_fields"),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 2x0 1', "bad_status"),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 2000 1', "bad_status"),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" - 1', "bad_status"),
        ('h - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" \u0662\u0660\u0660 1'.encode(), "bad_status"),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1x', "bad_bytes"),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 -5', "bad_bytes"),
        (b'h - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1234567890123456789', "bad_bytes"),
        (b'h - - [32/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1', "bad_date"),
        (b'h - - [31/Nov/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1', "bad_date"),
        (b'h - - [10/Foo/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1', "bad_date"),
        (b'h - - [10/Oct/2000:25:55:36 -0700] "GET / HTTP/1.1" 200 1', "bad_date"),
        (b'h - - [10/Oct/2000:13:55:36 +2500] "GET / HTTP/1.1" 200 1', "bad_date"),
        (b'h - - [10/Oct/2000 13:55:36 -0700] "GET / HTTP/1.1" 200 1', "bad_date"),
        (b'h - - [] "GET / HTTP/1.1" 200 1', "bad_date"),
    ],
)
def test_rejections_are_typed(raw: bytes, reason: str) -> None:
    rej = rejection(raw)
    assert (rej.source, rej.reason, rej.ts_received) == ("clf", reason, 7)
    assert rej.detail
    assert Rejection.model_validate_json(rej.model_dump_json()) == rej


def test_ids_are_stable_across_reads_line_endings_and_input_types() -> None:
    first = event(LINE).id
    assert event(LINE).id == first == event(LINE.rstrip(b"\n")).id == event(LINE.rstrip(b"\n") + b"\r\n").id
    assert event(LINE.decode()).id == first
    assert CLFParser(Router([], "other"), None)(LINE, 0).id == first  # type: ignore[union-attr]
    assert event(LINE.replace(b"13:34:03", b"13:34:04")).id != first


def test_routing_rules_name_service_and_instance() -> None:
    rules = [RouteRule(match="path_prefix", value="/shuttle/", service="shuttle", instance="web-1"),
             RouteRule(match="host", value="*.ksc.nasa.gov", service="internal")]
    parser = CLFParser(Router(rules, "nasa"))
    assert event(LINE, parser).key == "shuttle/web-1"
    internal = LINE.replace(b"mjv.lib.uconn.edu", b"n1.ksc.nasa.gov").replace(b"/shuttle/", b"/images/")
    assert event(internal, parser).key == "internal/-"  # host rules match the client; it names no instance
    assert event(LINE.replace(b"/shuttle/", b"/images/"), parser).key == "nasa/-"
    from_file = CLFParser(Router(rules, "nasa", file="/var/log/web-3.access.log"))
    assert event(LINE.replace(b"/shuttle/", b"/images/"), from_file).key == "nasa/web-3.access"


def test_date_cache_is_bounded_and_stays_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clf, "_DATE_CACHE_MAX", 5)
    parser = CLFParser(Router([], "s"))
    base = datetime(2000, 1, 1, tzinfo=timezone(timedelta(hours=-4)))
    for i in range(40):
        when = base + timedelta(seconds=i)
        line = f'h - - [{when:%d}/Jan/{when:%Y:%H:%M:%S %z}] "GET / HTTP/1.1" 200 1'
        assert event(line, parser).ts == int(when.timestamp()) * 1000
        assert len(parser._dates) <= 5


def test_split_request() -> None:
    assert split_request("GET /a?b HTTP/1.1") == ("GET", "/a")
    assert split_request("GET /a") == ("GET", "/a")
    assert split_request("GET /a b HTTP/1.0") == ("GET", "/a b")
    assert split_request("GET /a b c") == ("GET", "/a b c")
    assert split_request('GET /a\\"b\\\\c HTTP/1.1') == ("GET", '/a"b\\c')
    assert split_request("GET  HTTP/1.1") == ("GET", "-")
    assert split_request("") == ("-", "-")
    assert split_request("GET") == ("-", "-")


def test_make_event_is_model_construct() -> None:
    fast = make_event("0123456789abcdef0123", 5, "svc", "inst", "GET", "/", 200, 1.5, 10, "clf")
    slow = AccessEvent.model_construct(v=1, id="0123456789abcdef0123", ts=5, service="svc", instance="inst",
                                       method="GET", route="/", status=200, latency_ms=1.5, bytes_sent=10, source="clf")
    assert fast == slow == AccessEvent.model_validate(slow.model_dump())
    assert fast.model_fields_set == slow.model_fields_set
    again = make_event("0123456789abcdef0123", 5, "svc", "inst", "GET", "/", 200, 1.5, 10, "clf")
    # Shared between events, and yet it never changes: assignment only adds names already in it.
    again.route = "/changed"
    assert fast.model_fields_set == again.model_fields_set == set(AccessEvent.model_fields)
    assert (fast.route, again.route) == ("/", "/changed")
    copy = fast.model_copy(update={"route": "/c"})
    assert copy.model_fields_set == set(AccessEvent.model_fields) and copy.route == "/c"
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.key == "svc/inst"
    assert clf._FAST_CONSTRUCT  # the shortcut is live: a pydantic or schema change would switch it off


def test_str_input_with_a_lone_surrogate_still_serializes() -> None:
    e = event('h - - [10/Oct/2000:13:55:36 -0700] "GET /\udcff HTTP/1.1" 200 1')
    assert e.route == "/\xed\xb3\xbf"  # its surrogatepass bytes, read as latin-1
    assert AccessEvent.model_validate_json(e.model_dump_json()) == e
    rej = rejection("junk \udcff")
    assert Rejection.model_validate_json(rej.model_dump_json()).raw == "junk \\xed\\xb3\\xbf"


@pytest.mark.parametrize("request_line", [
    "GET /a/b.html HTTP/1.0", "GET /a?x=1&y=2 HTTP/1.1", "get /?q HTTP/1.0", "GET / ", "POST /a?b?c HTTP/2.0",
    "GET /a\tb HTTP/1.0", "GET /a/ HTTP/1.0\\", "GET /a\\x HTTP/1.0", "GET a HTTP/1.0", "GÉT /a HTTP/1.0",
    "M-SEARCH * HTTP/1.1", "GET /a b HTTP/1.0", "GET /a", "GET http://h/p?q HTTP/1.1", "", "\\x16\\x03"])
def test_the_common_line_shortcut_agrees_with_the_general_path(request_line: str) -> None:
    line = f'h - - [10/Oct/2000:13:55:36 -0700] "{request_line}" 200 5'
    result = PARSER(line, 1)
    m = clf._CLF.match(line)
    if m is None or m.group(3).endswith("\\"):
        m = clf._ESCAPED.match(line) or clf._LENIENT.match(line) or m
    assert m is not None
    assert isinstance(result, AccessEvent)
    assert (result.method, result.route) == split_request(m.group(3))
    assert result == make_event(event_id(line.encode()), T_COMBINED, "nasa", "-", result.method, result.route,
                                200, 0.0, 5, "clf")


def test_a_router_answering_every_line_alike_is_asked_once() -> None:
    file_rule = RouteRule(match="file", value="*.log", service="web", instance="*")
    host_rule = RouteRule(match="host", value="*.nasa.gov", service="nasa", instance="*")
    path_rule = RouteRule(match="path_prefix", value="/api", service="api", instance="x")
    for routes, constant in [([file_rule], ("web", "access")), ([host_rule, file_rule], None),
                             ([path_rule, file_rule], None), ([file_rule, host_rule], ("web", "access")),
                             ([], None), ([host_rule], None)]:
        router = Router(routes, "dflt", file="/var/log/access.log")
        parser = CLFParser(router, UTC)
        assert clf._constant_route(router) == constant
        for host, path in [("a.nasa.gov", "/api/v"), ("b.example", "/x")]:
            e = event(f'{host} - - [10/Oct/2000:13:55:36 -0700] "GET {path} HTTP/1.0" 200 5', parser)
            assert (e.service, e.instance) == router(host, path, host_is_instance=False)
