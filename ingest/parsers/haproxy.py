"""HAProxy `option httplog` lines (2.x default format) to access events.

The format, after any syslog header (see `syslog_framing`):

    client:port [request date] frontend backend/server TR/Tw/Tc/Tr/Ta status bytes
    req_cookie resp_cookie term_state actconn/feconn/beconn/srv_conn/retries srv_queue/backend_queue
    [{captured request headers}] [{captured response headers}] "METHOD target PROTO"

Choices worth knowing:
- service/instance are HAProxy's backend/server; `<NOSRV>` or status -1 (HAProxy routed nothing,
  or got no response to log) is the rejection `no_server`: there is no instance to attribute it to.
- latency is Ta (with `option logasap` a `+`-prefixed "so far"). When Ta is -1 the event is kept
  with the sum of the non-negative TR/Tw/Tc/Tr, a lower bound of the time spent (0 if none is known):
  the status of such requests is signal, and the default format carries no Tt to fall back on.
- the date is HAProxy's local time without a zone; `tz` says which zone (None: this host's zone).
- the id hashes the message without its syslog header, so the same request logged twice (re-read,
  or sent to two log targets in different framings) gets one id. Two requests identical in every
  logged field, down to client port and millisecond, would share it too; HAProxy's default format
  has nothing more unique (add `%ID` to a custom log-format if that ever matters), so the sources
  number such repeats within one delivery unit (`base.Occurrences`).
- HAProxy escapes non-printable bytes as `#XX`, so input that is not UTF-8 did not come from it
  verbatim: `bad_encoding`.
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from functools import lru_cache

from ingest.parsers.base import ParseResult, event_id, reject
from ingest.parsers.syslog_framing import syslog_message
from ingest.schemas import AccessEvent

SOURCE = "haproxy"

_HTTPLOG = re.compile(
    r"(?P<client>\S+) \[(?P<date>[^\]]*)\] (?P<frontend>\S+) (?P<backend>[^/\s]+)/(?P<server>\S+) "
    r"(?P<timers>\S+) (?P<status>\S+) (?P<bytes>\S+) \S+ \S+ (?P<term>\S+) \S+ \S+ "
    r"(?:\{[^}]*\} ){0,2}\"(?P<request>[^\"]*)(?P<closed>\"?)"
)
# When the full pattern fails: enough of the line to say it is HAProxy's (so it was cut short),
# unless it is a complete `option tcplog` line (Tw/Tc/Tt bytes term conns queues, no request).
_PREFIX = re.compile(r"\S+ \[[^\]]*\] \S+ [^/\s]+/\S+")
_TCPLOG = re.compile(r"\S+ \[[^\]]*\] \S+ [^/\s]+/\S+ [^/\s]+/[^/\s]+/[^/\s]+ \S+ \S+ \S+ \S+")
# re.ASCII: `\d` would otherwise accept any Unicode digit, which int() then happily converts.
_DATE = re.compile(r"(\d\d)/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?", re.ASCII)
_TIMER = r"(-1|\+?\d+)"
_TIMERS = re.compile("/".join([_TIMER] * 5), re.ASCII)
_STATUS = re.compile(r"-1|\d{1,3}", re.ASCII)
_BYTES = re.compile(r"\+?\d+", re.ASCII)
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}
_NO_SERVER = "<NOSRV>"
_TRAILING = "\r\n\x00 \t"


class HAProxyParser:
    """Parses httplog lines whose dates are in `tz`; reuse one instance (it caches date lookups)."""

    source = SOURCE

    def __init__(self, tz: tzinfo | None = None) -> None:
        self.tz = tz
        self._epoch_s = lru_cache(maxsize=4096)(self._epoch_s_uncached)

    def __call__(self, raw: bytes | str, received_ms: int | None = None) -> ParseResult:
        try:
            line = raw.decode() if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as e:
            return reject(SOURCE, "bad_encoding", f"not UTF-8 at byte {e.start}", raw, received_ms)
        msg = syslog_message(line.rstrip(_TRAILING))
        if not msg:
            return reject(SOURCE, "empty", "no message", raw, received_ms)

        m = _HTTPLOG.match(msg)
        if m is None:
            return reject(SOURCE, *_why_not_httplog(msg), raw, received_ms)
        backend, server, status_s = m.group("backend", "server", "status")
        if server == _NO_SERVER:
            return reject(SOURCE, "no_server", f"{backend}/{server} status {status_s}", raw, received_ms)

        if _STATUS.fullmatch(status_s) is None:
            return reject(SOURCE, "bad_status", f"status {status_s[:32]!r}", raw, received_ms)
        status = int(status_s)
        if status < 0:
            return reject(SOURCE, "no_server", f"{backend}/{server} status -1: no response", raw, received_ms)

        ts = self._timestamp_ms(m.group("date"))
        if ts is None:
            return reject(SOURCE, "bad_date", f"date {m.group('date')[:40]!r}", raw, received_ms)

        t = _TIMERS.fullmatch(m.group("timers"))
        if t is None:
            return reject(SOURCE, "bad_timers", f"timers {m.group('timers')[:40]!r}", raw, received_ms)
        timers = [int(x) for x in t.groups()]
        latency = timers[4] if timers[4] >= 0 else sum(x for x in timers[:4] if x > 0)

        bytes_s = m.group("bytes")
        if _BYTES.fullmatch(bytes_s) is None:
            return reject(SOURCE, "bad_bytes", f"bytes {bytes_s[:32]!r}", raw, received_ms)

        request = m.group("request")
        parts = request.split(" ")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            return reject(SOURCE, "bad_request", f"request line {request[:64]!r}", raw, received_ms)
        target = parts[1]
        if not m.group("closed") and len(parts) < 3 and "?" not in target:
            # The line was cut (syslog `len`) inside the path: the route would be wrong.
            return reject(SOURCE, "truncated", "request line cut inside the path", raw, received_ms)

        return AccessEvent.model_construct(
            v=1,
            id=event_id(msg.encode()),
            ts=ts,
            service=backend,
            instance=server,
            method=parts[0],
            route=route_of(target),
            status=status,
            latency_ms=float(latency),
            bytes_sent=int(bytes_s),
            source=SOURCE,
        )

    def _timestamp_ms(self, date: str) -> int | None:
        d = _DATE.fullmatch(date)
        if d is None:
            return None
        day, mon, year, hh, mm, ss, frac = d.groups()
        month = _MONTHS.get(mon)
        if month is None:
            return None
        seconds = self._epoch_s(int(year), month, int(day), int(hh), int(mm), int(ss))
        if seconds is None:
            return None
        return seconds * 1000 + (int(frac.ljust(3, "0")[:3]) if frac else 0)

    def _epoch_s_uncached(self, year: int, month: int, day: int, hh: int, mm: int, ss: int) -> int | None:
        try:
            # A naive datetime's timestamp() uses this host's zone rules (DST included).
            return int(datetime(year, month, day, hh, mm, ss, tzinfo=self.tz).timestamp())
        except (ValueError, OverflowError, OSError):
            return None


def route_of(target: str) -> str:
    """The path of a request target: no query, no `scheme://authority` (HTTP/2 logs absolute URIs)."""
    if not target.startswith("/"):
        scheme_end = target.find("://")
        if scheme_end > 0:
            slash = target.find("/", scheme_end + 3)
            target = "/" if slash < 0 else target[slash:]
    q = target.find("?")
    return target if q < 0 else target[:q]


def _why_not_httplog(msg: str) -> tuple[str, str]:
    if '"' not in msg and _PREFIX.match(msg) is not None and _TCPLOG.fullmatch(msg) is None:
        return "truncated", "line ends before the request line"
    return "not_httplog", f"not an HAProxy httplog line: {msg[:48]!r}"


@lru_cache(maxsize=16)
def _parser_for(tz: tzinfo | None) -> HAProxyParser:
    return HAProxyParser(tz)


def parse_haproxy_line(raw: bytes | str, tz: tzinfo | None = None, received_ms: int | None = None) -> ParseResult:
    """One line to an event or a rejection; never raises. `tz`: zone of HAProxy's dates (None: local)."""
    return _parser_for(tz)(raw, received_ms)
