"""JSON lines (one object per line, e.g. nginx `escape=json` or app logs) to access events.

Which input key holds which event field is configuration (`IngestSettings.json_fields`: event
field -> key, dotted for nesting, e.g. `"method": "http.request.method"`; a literal key with dots
wins over nesting). Fields and what is accepted:
- `ts` (required): epoch seconds, ms, µs or ns as a number or numeric string (told apart by size:
  below 1e11 seconds, 1e14 ms, 1e17 µs, else ns), an ISO-8601 string (`Z` or offset; none: `tz`),
  or a CLF date (`10/Oct/2000:13:55:36 -0700`, nginx `$time_local`);
- `method`, `route` (required): strings; the route loses its query;
- `status` (required): 0..999, number or digit string;
- `latency_ms`, `bytes_sent`: non-negative numbers (or numeric strings, `-` = 0); absent: 0;
- `service`, `instance`, `host`: strings; a missing service or instance comes from the routing
  rules given `host` and the route (`ingest.routing`).
A missing required field is the rejection `missing_<field>`, a wrong one `bad_<field>`, both with
the input key in the detail; input that is not JSON is `bad_json`, not UTF-8 `bad_encoding`, not an
object `not_object`. The id hashes the raw line, so re-reading a file gives the same ids; the
sources number repeats of a line (`base.Occurrences`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from ingest.parsers.base import ParseResult, event_id, reject
from ingest.parsers.clf import clf_date_ms, make_event
from ingest.parsers.haproxy import route_of
from ingest.routing import Router

try:  # several times faster than json on log-sized objects; optional
    import orjson

    _loads: Callable[[bytes | str], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

SOURCE = "json"
REQUIRED = ("ts", "method", "route", "status")
OPTIONAL = ("latency_ms", "bytes_sent", "service", "instance", "host")
MAX_BYTES = 10**18  # larger is a broken counter, not a response size
_TRAILING_B = b"\r\n\x00 \t"
_MISSING = object()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class JSONLinesParser:
    """Parses JSON-lines logs with a field mapping; a mapping naming no event field is a ValueError."""

    source = SOURCE

    def __init__(self, fields: Mapping[str, str], router: Router, tz: tzinfo | None = None) -> None:
        unknown = set(fields) - set(REQUIRED) - set(OPTIONAL)
        if unknown:
            raise ValueError(f"json_fields: unknown event field(s) {sorted(unknown)}; known: {REQUIRED + OPTIONAL}")
        missing = [f for f in REQUIRED if f not in fields]
        if missing:
            raise ValueError(f"json_fields: required event field(s) {missing} have no input key")
        self.fields = dict(fields)
        self.router = router
        self.tz = tz
        # event field -> (key as written, its dotted path)
        self._keys = {f: (key, tuple(key.split("."))) for f, key in fields.items()}

    def __call__(self, raw: bytes | str, received_ms: int | None = None) -> ParseResult:
        if isinstance(raw, str):  # as its UTF-8 bytes: same id; a lone surrogate is then `bad_encoding`, not a crash
            raw = raw.encode("utf-8", "surrogatepass")
        data = raw.strip(_TRAILING_B)
        if not data:
            return reject(SOURCE, "empty", "no message", raw, received_ms)
        try:
            obj = _loads(data)
        except (ValueError, RecursionError) as e:  # orjson.JSONDecodeError is a ValueError
            try:
                data.decode()
            except UnicodeDecodeError as u:
                return reject(SOURCE, "bad_encoding", f"not UTF-8 at byte {u.start}", raw, received_ms)
            return reject(SOURCE, "bad_json", str(e)[:120], raw, received_ms)
        if not isinstance(obj, dict):
            return reject(SOURCE, "not_object", f"a JSON {type(obj).__name__}, not an object", raw, received_ms)

        values: dict[str, Any] = {}
        for field in REQUIRED:
            value = self._get(obj, field)
            if value is _MISSING or value is None:
                detail = f"no {field!r} (key {self.fields[field]!r})"
                return reject(SOURCE, f"missing_{field}", detail, raw, received_ms)
            values[field] = value
        ts = self._ts_ms(values["ts"])
        if ts is None:
            return self._bad("ts", values["ts"], raw, received_ms)
        status = _int(values["status"])
        if status is None or not 0 <= status <= 999:
            return self._bad("status", values["status"], raw, received_ms)
        method, target = values["method"], values["route"]
        if not isinstance(method, str) or not method:
            return self._bad("method", method, raw, received_ms)
        if not isinstance(target, str) or not target:
            return self._bad("route", target, raw, received_ms)
        latency = _number(raw_latency := self._get(obj, "latency_ms"), 0.0)
        if latency is None or latency < 0:
            return self._bad("latency_ms", raw_latency, raw, received_ms)
        sent = _int(raw_sent := self._get(obj, "bytes_sent"), 0)
        if sent is None or not 0 <= sent <= MAX_BYTES:
            return self._bad("bytes_sent", raw_sent, raw, received_ms)

        route = route_of(target)
        service, instance = self._str("service", obj), self._str("instance", obj)
        if service is None or instance is None:
            routed_service, routed_instance = self.router(self._str("host", obj), route)
            service = service or routed_service
            instance = instance or routed_instance
        return make_event(event_id(data), ts, service, instance, method, route, status, latency, sent, SOURCE)

    def _bad(self, field: str, value: Any, raw: bytes, received_ms: int | None) -> ParseResult:
        return reject(SOURCE, f"bad_{field}", f"{self.fields[field]!r}: {_short(value)}", raw, received_ms)

    def _get(self, obj: dict[str, Any], field: str) -> Any:
        spec = self._keys.get(field)
        if spec is None:
            return _MISSING
        key, path = spec
        value = obj.get(key, _MISSING)
        if value is not _MISSING or len(path) == 1:
            return value
        for part in path:
            if not isinstance(obj, dict):
                return _MISSING
            obj = obj.get(part, _MISSING)
        return obj

    def _str(self, field: str, obj: dict[str, Any]) -> str | None:
        value = self._get(obj, field)
        return value if isinstance(value, str) and value else None

    def _ts_ms(self, value: Any) -> int | None:
        if isinstance(value, str):
            number = _number(value, None)
            if number is None:
                return self._date_ms(value)
            value = number
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return epoch_ms(value)

    def _date_ms(self, text: str) -> int | None:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return clf_date_ms(text, self.tz)
        try:
            if when.tzinfo is None:  # no offset: `tz`, or (None) this host's zone, as astimezone() assumes
                when = when.replace(tzinfo=self.tz) if self.tz is not None else when.astimezone()
            return (when - _EPOCH) // _MS
        except (ValueError, OverflowError, OSError):
            return None


def epoch_ms(value: float) -> int | None:
    """Epoch seconds, ms, µs or ns (told apart by magnitude) to whole ms; None if not a plausible time."""
    if isinstance(value, int):
        n = abs(value)
        if n >= 10**20:
            return None
        return value * 1000 if n < 10**11 else value if n < 10**14 else value // 1000 if n < 10**17 \
            else value // 1_000_000
    if not math.isfinite(value) or abs(value) >= 1e20:
        return None
    size = abs(value)
    # Through whole µs: 1700000000.123 s is stored as ...122.9999 ms and must not truncate to 122.
    micros = round(value * 1e6 if size < 1e11 else value * 1e3 if size < 1e14 else value if size < 1e17
                   else value / 1e3)
    return micros // 1000


def _number(value: Any, default: float | None) -> float | None:
    """A finite float from a number or numeric string (`-` and absent: `default`); else None."""
    if value is _MISSING or value is None or value == "-":
        return default
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _int(value: Any, default: int | None = None) -> int | None:
    """An int from an integer number, integral float or digit string (`-` and absent: `default`)."""
    if value is _MISSING or value is None or value == "-":
        return default
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _short(value: Any) -> str:
    return "absent" if value is _MISSING else repr(value)[:64]
