"""Pick the parser for a `--format`, and `auto`: the format guessed line by line, cheaply.

`auto` looks at a line's first bytes, never tries parsers in turn (so a broken line gets the
rejection of the format it was meant to be, and a good one costs one parse):
- `{` -> JSON lines;
- `<digits>` -> a syslog header: the message behind it decides (HAProxy parses the whole line
  itself, so its ids match `ingest syslog`'s; a CLF or JSON message is parsed without the header);
- otherwise the position of the first ` [`: one token before it (`client:port [date] ...`) is
  HAProxy's httplog, more (`host ident user [date] ...`) Common/Combined;
- none of these: the rejection `unknown_format` (source `auto`).
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Final
from zoneinfo import ZoneInfo

from infra.core.settings import IngestSettings
from ingest.parsers.base import LineParser, ParseResult, reject
from ingest.parsers.clf import CLFParser
from ingest.parsers.haproxy import HAProxyParser
from ingest.parsers.jsonlines import JSONLinesParser
from ingest.parsers.syslog_framing import syslog_message
from ingest.routing import Router

SOURCE = "auto"
FORMATS: Final = ("auto", "clf", "combined", "haproxy", "json")
_LEADING = b" \t\r\n\x00"
_UTF8_BOM = b"\xef\xbb\xbf"


class AutoParser:
    """Dispatches each line to the HAProxy, CLF or JSON parser by its shape."""

    source = SOURCE

    def __init__(self, haproxy: LineParser, clf: LineParser, json: LineParser) -> None:
        self.haproxy = haproxy
        self.clf = clf
        self.json = json

    def __call__(self, raw: bytes | str, received_ms: int | None = None) -> ParseResult:
        if isinstance(raw, str):  # as the parsers would see it: a lone surrogate must not reach a model
            raw = raw.encode("utf-8", "surrogatepass")
        data = raw.lstrip(_LEADING)
        if data[:1] == b"{":
            return self.json(raw, received_ms)
        if data[:1] == b"<" and data[1:2].isdigit():
            # latin-1 maps bytes 1:1, so the message's own bytes come back for the parser to decode and hash.
            msg = syslog_message(data.decode("latin-1").rstrip()).encode("latin-1")
            if msg.startswith(_UTF8_BOM):  # RFC 5424 marks a UTF-8 message so
                msg = msg[len(_UTF8_BOM):]
            if msg[:1] == b"{":
                return self.json(msg, received_ms)
            if _is_clf(msg):
                return self.clf(msg, received_ms)
            return self.haproxy(data, received_ms)
        if _is_clf(data):
            return self.clf(raw, received_ms)
        if data.find(b" [") > 0:
            return self.haproxy(data, received_ms)
        return reject(SOURCE, "unknown_format", "neither HAProxy httplog, Common/Combined nor JSON", raw, received_ms)


def _is_clf(data: bytes) -> bool:
    """More than one token before the first ` [` (HAProxy has just `client:port`)."""
    bracket = data.find(b" [")
    return bracket > 0 and data.find(b" ", 0, bracket) >= 0


def parser_for(fmt: str, settings: IngestSettings, *, file: str | PurePath | None = None) -> LineParser:
    """The parser for `--format` `fmt`; `file` (the file being read, if any) feeds the routing rules.

    `clf` and `combined` are one parser (it accepts both); HAProxy lines name their own
    backend/server, so routing rules do not apply to them.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    tz = ZoneInfo(settings.log_timezone) if settings.log_timezone else None
    router = Router(settings.routes, settings.default_service, file)
    if fmt == "haproxy":
        return HAProxyParser(tz)
    if fmt in ("clf", "combined"):
        return CLFParser(router, tz)
    if fmt == "json":
        return JSONLinesParser(settings.json_fields, router, tz)
    return AutoParser(HAProxyParser(tz), CLFParser(router, tz), JSONLinesParser(settings.json_fields, router, tz))
