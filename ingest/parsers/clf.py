"""NCSA Common and Combined log lines (Apache and nginx defaults) to access events.

    host ident authuser [dd/Mon/yyyy:HH:MM:SS -0400] "METHOD target PROTO" status bytes ["referer" "agent"] [extra]

Real logs are messier than the format, so the parser accepts:
- `-` for bytes (0); a request without a protocol (`"GET /path"`); a path with spaces; a stray
  unescaped quote in the request (`"GET /a"b HTTP/1.0"`, as old servers logged it); `\\"` escapes;
- a request line that is not `METHOD target` (`""`, TLS bytes sent to an HTTP port): the server
  still answered (usually 400), so the event is kept with method and route `-`;
- an IPv6 address or a host name as client; an authuser with spaces;
- bytes that are not UTF-8: decoded as ISO-8859-1 (the NASA logs' encoding), never rejected;
- the date's own offset (`-0400`), converted to UTC; a date without offset is in `tz` (None: this
  host's zone); optional fractional seconds (`:13:34:03.123 -0400`).
CLF has no latency, so latency_ms is 0.0 unless the line ends with one (after the Combined fields):
- `rt=N` or `request_time=N` anywhere after the bytes (nginx `$request_time`): seconds;
- a bare last number: an integer is Apache `%D` (microseconds), a decimal nginx `$request_time`
  (seconds, e.g. `0.005`).
Rejected, with the reason: `empty`, `not_clf` (no `host ident user [date]` head), `truncated`
(the line ends before the status and bytes), `missing_fields` (no quoted request after the date),
`bad_date`, `bad_status` (not three digits), `bad_bytes` (not digits or `-`, or absurdly long).
Referer and agent are not part of the event, so a cut inside them still yields one.

service/instance come from the routing rules (`ingest.routing.Router`) given the client host and
the route. The id hashes the raw line without surrounding whitespace (line ending included), so
re-reading a file gives the same ids; the sources number repeats of a line (`base.Occurrences`).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo

import xxhash
from pydantic import BaseModel

from ingest.parsers.base import ParseResult, event_id, reject
from ingest.parsers.haproxy import route_of
from ingest.routing import Router
from ingest.schemas import AccessEvent

SOURCE = "clf"
NO_REQUEST = "-"

# re.ASCII: `\d` would otherwise take any Unicode digit; DOTALL: the rest is whatever follows.
# The authuser may hold spaces but no `[`: the date is then the first ` [...]`, and matching stays linear.
# Possessive quantifiers (`++`, `*+`) spare the engine backtracking it could never succeed with.
_HEAD_RE = r"(\S++) \S++ [^\[]*? \[([^\]]*+)\] "
_TAIL = r" (\d{3}) (\d{1,18}+|-)(?= |$)(.*)"
_FLAGS = re.ASCII | re.DOTALL
# The common line in one go: `METHOD /route[?query] PROTO`, a letters-only method, no escape, three
# words; it yields what the general path below would (route without its query) and is tried first.
_COMMON = re.compile(_HEAD_RE + r'"([A-Za-z]++) (/[^ "?\\]*+)(?:\?[^ "\\]*+)? [^ "\\]*+"' + _TAIL, _FLAGS)
# Else three tries, fastest first: a request without escapes (almost every line) ...
_CLF = re.compile(_HEAD_RE + r'"([^"]*+)"' + _TAIL, _FLAGS)
# ... with `\x` escapes (only when the first try's request ends in `\`, i.e. at an escaped quote) ...
_ESCAPED = re.compile(_HEAD_RE + r'"([^"\\]*+(?:\\.[^"\\]*+)*+)"' + _TAIL, _FLAGS)
# ... and, for a stray unescaped quote in the request, up to the first `" status bytes`.
_LENIENT = re.compile(_HEAD_RE + r'"(.*?)"' + _TAIL, _FLAGS)
# For the reason of a rejection only.
_HEAD = re.compile(r"\S+ \S+ [^\[]*? \[[^\]]*\]", re.ASCII | re.DOTALL)
_CUT_IN_DATE = re.compile(r"\S+ \S+ \S+ \[[^\]]*$", re.ASCII | re.DOTALL)
_AFTER_HEAD = re.compile(r' "(?:[^"\\]|\\.)*"(?: (\S+))?(?: (\S+))?', re.ASCII | re.DOTALL)
_STATUS = re.compile(r"\d{3}", re.ASCII)
_BYTES = re.compile(r"\d{1,18}|-", re.ASCII)

_DATE = re.compile(
    r"(\d{1,2})/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?: ?([+-])(\d\d):?(\d\d))?", re.ASCII)
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}
_DATE_CACHE_MAX = 100_000  # distinct date strings kept (one per logged second)

_RT = re.compile(r'(?:^|[\s"])(?:rt|request_time)="?(\d{1,9}(?:\.\d{1,9})?)', re.ASCII)
_LAST_NUMBER = re.compile(r"\d{1,15}(?:\.\d{1,9})?", re.ASCII)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)  # RFC 9110 token: what a method may be
_TRAILING_B = b"\r\n\x00 \t"

_EVENT_FIELDS = ("v", "id", "ts", "service", "instance", "method", "route", "status", "latency_ms", "bytes_sent",
                 "source")
_FAST_CONSTRUCT = (tuple(AccessEvent.model_fields) == _EVENT_FIELDS and not AccessEvent.__private_attributes__
                   and AccessEvent.__pydantic_post_init__ is None and not AccessEvent.__pydantic_root_model__)
_new = object.__new__
# The slots `model_construct` fills, set through their descriptors (cheaper than `object.__setattr__`).
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
# Every event shares this one set: pydantic only ever adds a field's name to it (on assignment),
# and every name is in it already, so it never changes. A copy per event was a tenth of a parse.
_ALL_FIELDS_SET = set(_EVENT_FIELDS)
_event_id = xxhash.xxh3_128_hexdigest  # event_id's, without a call in between
_STATUS_INT = {f"{i:03d}": i for i in range(1000)}  # `(\d{3})`: every status string the regex lets through


class CLFParser:
    """Parses Common/Combined lines; reuse one instance per file (it caches date conversions)."""

    source = SOURCE

    def __init__(self, router: Router, tz: tzinfo | None = None) -> None:
        self.router = router
        self.tz = tz
        self._dates: dict[str, int] = {}
        # (service, instance) when the router gives every line of this file the same answer, whatever
        # its client and route: a file rule and no host or path rule before it (the usual setup).
        self._route = _constant_route(router)

    def __call__(self, raw: bytes | str, received_ms: int | None = None) -> ParseResult:
        if isinstance(raw, str):  # as its UTF-8 bytes: same id; a lone surrogate becomes a latin-1 char, not a crash
            raw = raw.encode("utf-8", "surrogatepass")
        data = raw.strip(_TRAILING_B)
        try:
            line = data.decode()
        except UnicodeDecodeError:
            line = data.decode("latin-1")
        if not line:
            return reject(SOURCE, "empty", "no message", raw, received_ms)

        m = _COMMON.match(line)
        if m is not None:
            host, date, method, route, status_s, bytes_s, rest = m.groups()
        else:
            m = _CLF.match(line)
            if m is None or m.group(3)[-1:] == "\\":
                m = _ESCAPED.match(line) or _LENIENT.match(line) or m
            if m is None:
                return reject(SOURCE, *_why_not_clf(line), raw, received_ms)
            host, date, request, status_s, bytes_s, rest = m.groups()
            method, route = split_request(request)

        ts = self._dates.get(date)
        if ts is None:
            ts = self._date_ms(date)
            if ts is None:
                return reject(SOURCE, "bad_date", f"date {date[:40]!r}", raw, received_ms)

        if self._route is None:
            service, instance = self.router(host, route, host_is_instance=False)
        else:
            service, instance = self._route
        if not _FAST_CONSTRUCT:
            return make_event(event_id(data), ts, service, instance, method, route, int(status_s),
                              latency_ms(rest) if rest else 0.0, 0 if bytes_s == "-" else int(bytes_s), SOURCE)
        # make_event inlined (a call with ten arguments is a tenth of a parse); the id is event_id's.
        event = _new(AccessEvent)
        _set_dict(event, {
            "v": 1, "id": _event_id(data), "ts": ts, "service": service,
            "instance": instance, "method": method, "route": route, "status": _STATUS_INT[status_s],
            "latency_ms": latency_ms(rest) if rest else 0.0, "bytes_sent": 0 if bytes_s == "-" else int(bytes_s),
            "source": SOURCE})
        _set_fields_set(event, _ALL_FIELDS_SET)
        _set_extra(event, None)
        _set_private(event, None)
        return event

    def _date_ms(self, date: str) -> int | None:
        """Epoch ms of a date, cached by its string: a log has at most one per second (or ms)."""
        ms = clf_date_ms(date, self.tz)
        if ms is not None:
            if len(self._dates) >= _DATE_CACHE_MAX:
                self._dates.clear()
            self._dates[date] = ms
        return ms


def _constant_route(router: Router) -> tuple[str, str] | None:
    """What `router(host, route, host_is_instance=False)` returns for every line, if it does not depend on them.

    So it is when no host or path rule precedes the file rule that matched the file (Router settles
    file rules when built and keeps only the rules before that one); else None: ask per line.
    """
    if type(router) is not Router or router._rules or router._final is None:
        return None
    return router._final


def clf_date_ms(date: str, tz: tzinfo | None) -> int | None:
    """`10/Oct/2000:13:55:36 -0700` (offset and fraction optional; no offset: `tz`, None: local) to epoch ms."""
    d = _DATE.fullmatch(date)
    if d is None:
        return None
    day, mon, year, hh, mm, ss, frac, sign, off_h, off_m = d.groups()
    month = _MONTHS.get(mon)
    if month is None:
        return None
    try:
        zone = tz if sign is None else timezone(
            (-1 if sign == "-" else 1) * timedelta(hours=int(off_h), minutes=int(off_m)))
        # A naive datetime (no offset, tz None) is taken in this host's zone by timestamp().
        seconds = int(datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=zone).timestamp())
    except (ValueError, OverflowError, OSError):
        return None
    return seconds * 1000 + (int(frac[:3].ljust(3, "0")) if frac else 0)


def make_event(id: str, ts: int, service: str, instance: str, method: str, route: str, status: int,
               latency_ms: float, bytes_sent: int, source: str) -> AccessEvent:
    """`AccessEvent.model_construct` for checked values, in a quarter of the time (half a parse).

    It sets what model_construct sets (`__dict__`, fields set, no extra, no private) without its
    per-field alias and default lookups; it falls back to model_construct should AccessEvent ever
    gain what that shortcut skips (a post-init hook, private attributes, other fields).
    """
    if not _FAST_CONSTRUCT:
        return AccessEvent.model_construct(
            v=1, id=id, ts=ts, service=service, instance=instance, method=method, route=route, status=status,
            latency_ms=latency_ms, bytes_sent=bytes_sent, source=source)
    event = _new(AccessEvent)
    _set_dict(event, {"v": 1, "id": id, "ts": ts, "service": service, "instance": instance, "method": method,
                      "route": route, "status": status, "latency_ms": latency_ms, "bytes_sent": bytes_sent,
                      "source": source})
    _set_fields_set(event, _ALL_FIELDS_SET)
    _set_extra(event, None)
    _set_private(event, None)
    return event


def split_request(request: str) -> tuple[str, str]:
    """(method, route) of a logged request line; (`-`, `-`) when it is not `METHOD target [PROTO]`."""
    parts = request.split(" ")
    n = len(parts)
    if n == 3 or n == 2:
        target = parts[1]
    elif n > 3:  # unescaped spaces in the target
        target = " ".join(parts[1:-1] if parts[-1].startswith("HTTP/") else parts[1:])
    else:
        return NO_REQUEST, NO_REQUEST
    method = parts[0]
    if not (method.isascii() and method.isalpha()) and _TOKEN.fullmatch(method) is None:
        return NO_REQUEST, NO_REQUEST
    if not target:
        return method, NO_REQUEST
    if "\\" in target:
        target = target.replace('\\"', '"').replace("\\\\", "\\")
    return method, route_of(target)


def latency_ms(rest: str) -> float:
    """Latency from what follows the bytes field: `rt=`/`request_time=` seconds, else a last number."""
    if "=" in rest:
        m = _RT.search(rest)
        if m is not None:
            return float(m.group(1)) * 1000.0
    if not rest[-1].isdigit():
        return 0.0
    last = rest.rpartition(" ")[2]
    if _LAST_NUMBER.fullmatch(last) is None:
        return 0.0
    return float(last) * 1000.0 if "." in last else int(last) / 1000.0


def _why_not_clf(line: str) -> tuple[str, str]:
    head = _HEAD.match(line)
    if head is None:
        if _CUT_IN_DATE.match(line) is not None:
            return "truncated", "line ends inside the date"
        return "not_clf", f"not a Common/Combined log line: {line[:48]!r}"
    rest = line[head.end():]
    after = _AFTER_HEAD.match(rest)
    if after is None:
        if rest in ("", " ") or rest.startswith(' "'):
            return "truncated", "line ends before the end of the request"
        return "missing_fields", f"no quoted request after the date: {rest[:48]!r}"
    status, sent = after.groups()
    if status is None:
        return "truncated", "line ends before the status"
    if _STATUS.fullmatch(status) is None:
        return "bad_status", f"status {status[:32]!r}"
    if sent is None:
        return "truncated", "line ends before the bytes"
    if _BYTES.fullmatch(sent) is None:
        return "bad_bytes", f"bytes {sent[:32]!r}"
    return "not_clf", f"not a Common/Combined log line: {line[:48]!r}"
