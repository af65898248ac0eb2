"""`--format auto` picks the parser per line by its shape; `parser_for` builds each format from settings;
`ingest_file` (the `foresight ingest file` command) runs it over plain, gzip and bzip2 files."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pytest

from infra.core.datasets import NASA_SAMPLE, dataset_path
from infra.core.settings import IngestSettings, KafkaSettings, RouteRule
from ingest import file_ingest
from ingest.file_ingest import ingest_file, ingest_file_command, open_log
from ingest.parsers.auto import FORMATS, AutoParser, parser_for
from ingest.parsers.clf import CLFParser
from ingest.parsers.haproxy import HAProxyParser
from ingest.parsers.jsonlines import JSONLinesParser
from ingest.schemas import AccessEvent, Rejection

NASA = dataset_path(NASA_SAMPLE)
SETTINGS = IngestSettings(log_timezone="UTC", default_service="web")
HAPROXY_RAW = (b'127.0.0.1:40408 [28/Nov/2026:21:36:07.277] fe_demo demo/s1 0/0/0/5/5 200 182 - - ---- '
               b'1/1/0/0/0 0/0 "GET /index.html?x=1 HTTP/1.1"')
HAPROXY_3164 = b"<134>Nov 28 21:36:07 haproxy[3905]: " + HAPROXY_RAW + b"\n"
HAPROXY_5424 = b"<134>1 2026-11-28T21:36:21.399862+00:00 - haproxy 4023 - - " + HAPROXY_RAW
CLF = b'mjv.lib.uconn.edu - - [06/Jul/1995:13:34:03 -0400] "GET /shuttle/ HTTP/1.0" 200 5 "-" "m\xe9"'
JSON = json.dumps({"time": 1_700_000_000, "method": "GET", "path": "/j", "status": 204}).encode()


def parse(raw: bytes | str) -> AccessEvent | Rejection:
    return parser_for("auto", SETTINGS)(raw, 1)


def event(raw: bytes | str) -> AccessEvent:
    result = parse(raw)
    assert isinstance(result, AccessEvent), result
    return result


@pytest.mark.parametrize(
    ("raw", "source", "route"),
    [
        (HAPROXY_RAW, "haproxy", "/index.html"),
        (HAPROXY_3164, "haproxy", "/index.html"),
        (HAPROXY_5424, "haproxy", "/index.html"),
        (HAPROXY_3164.decode(), "haproxy", "/index.html"),
        (CLF, "clf", "/shuttle/"),
        (b"  " + CLF + b"\r\n", "clf", "/shuttle/"),
        (b"<190>Nov 28 21:36:07 web-1 nginx: " + CLF, "clf", "/shuttle/"),
        (b"<190>1 2026-11-28T21:36:21Z web-1 nginx - - - " + CLF, "clf", "/shuttle/"),
        (JSON, "json", "/j"),
        (b" " + JSON, "json", "/j"),
        (b"<190>Nov 28 21:36:07 web-1 app: " + JSON, "json", "/j"),
        (b"<190>1 2026-11-28T21:36:21Z web-1 app - - - \xef\xbb\xbf" + JSON, "json", "/j"),  # BOM: UTF-8 msg
        (b" \t" + HAPROXY_3164, "haproxy", "/index.html"),
        (JSON.decode(), "json", "/j"),
    ],
)
def test_each_line_goes_to_its_format(raw: bytes | str, source: str, route: str) -> None:
    e = event(raw)
    assert (e.source, e.route) == (source, route)


def test_a_syslog_header_does_not_change_the_event_nor_its_id() -> None:
    plain = event(CLF)
    assert plain.route == "/shuttle/"
    for header in (b"<190>Nov 28 21:36:07 web-1 nginx: ", b"<190>1 2026-11-28T21:36:21Z web-1 nginx - - - "):
        assert event(header + CLF) == plain
    assert event(HAPROXY_3164) == event(HAPROXY_5424.replace(b"21:36:21.399862", b"21:36:07.000000"))
    assert event(b"<14>Jan  1 00:00:00 h app: " + JSON) == event(JSON)


@pytest.mark.parametrize(
    ("raw", "source", "reason"),
    [
        (b"hello world", "auto", "unknown_format"),
        (b"", "auto", "unknown_format"),
        (b"\xff\xfe\x00", "auto", "unknown_format"),
        (b"{not json", "json", "bad_json"),
        (b'{"method": "GET"}', "json", "missing_ts"),
        (CLF.replace(b" 200 ", b" 2x0 "), "clf", "bad_status"),
        (CLF[:60], "clf", "truncated"),
        (HAPROXY_3164.replace(b"demo/s1", b"demo/<NOSRV>"), "haproxy", "no_server"),
        (HAPROXY_3164[:110], "haproxy", "truncated"),
        (b"<134>Nov 28 21:36:07 haproxy[3905]: Proxy fe started.", "haproxy", "not_httplog"),
        (b"<134>Nov 28 21:36:07 haproxy[3905]: " + HAPROXY_RAW.replace(b"/index", b"/\xff"), "haproxy",
         "bad_encoding"),
        ("<134>Nov 28 21:36:07 h[1]: " + HAPROXY_RAW.decode().replace("/index", "/\udcff"), "haproxy",
         "bad_encoding"),
    ],
)
def test_broken_lines_get_the_rejection_of_their_format(raw: bytes, source: str, reason: str) -> None:
    rej = parse(raw)
    assert isinstance(rej, Rejection), rej
    assert (rej.source, rej.reason) == (source, reason)
    Rejection.model_validate_json(rej.model_dump_json())


def test_every_nasa_line_through_auto_is_clf() -> None:
    parser = parser_for("auto", SETTINGS, file=NASA)
    events = [parser(line, 0) for line in NASA.read_bytes().splitlines()]
    assert all(isinstance(e, AccessEvent) and e.source == "clf" for e in events)


def test_parser_for_each_format() -> None:
    assert isinstance(parser_for("clf", SETTINGS), CLFParser)
    assert isinstance(parser_for("combined", SETTINGS), CLFParser)
    assert isinstance(parser_for("haproxy", SETTINGS), HAProxyParser)
    assert isinstance(parser_for("json", SETTINGS), JSONLinesParser)
    assert isinstance(parser_for("auto", SETTINGS), AutoParser)
    assert set(FORMATS) == {"auto", "clf", "combined", "haproxy", "json"}
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        parser_for("xml", SETTINGS)


def test_parser_for_applies_timezone_routes_and_file() -> None:
    no_offset = b'h - - [06/Jul/1995:13:34:03] "GET /x HTTP/1.0" 200 1'
    utc = parser_for("clf", IngestSettings(log_timezone="UTC"))(no_offset, 0)
    ny = parser_for("clf", IngestSettings(log_timezone="America/New_York"))(no_offset, 0)
    assert isinstance(utc, AccessEvent) and isinstance(ny, AccessEvent)
    assert ny.ts - utc.ts == 4 * 3600 * 1000
    routed = IngestSettings(log_timezone="UTC", routes=[RouteRule(match="file", value="web-*.log", service="shop")])
    for fmt in ("clf", "auto"):
        e = parser_for(fmt, routed, file="/var/log/web-7.log")(no_offset, 0)
        assert isinstance(e, AccessEvent) and e.key == "shop/web-7", fmt
        other = parser_for(fmt, routed, file="/var/log/api.log")(no_offset, 0)
        assert isinstance(other, AccessEvent) and other.key == "unknown/api", fmt  # file stem, not the client
    j = parser_for("json", routed, file="web-2.log")(JSON, 0)
    assert isinstance(j, AccessEvent) and j.key == "shop/web-2"


# --- `foresight ingest file`: the auto parser's main user --------------------------------------------------


class FakeSink:
    """In-memory stand-in for KafkaSink (the real one is tested in test_ingest_kafka_sink)."""

    def __init__(self) -> None:
        self.batches: list[list[AccessEvent]] = []
        self.rejections: list[Rejection] = []
        self.flushes = 0

    def send_events(self, events: list[AccessEvent]) -> None:
        self.batches.append(list(events))

    def send_rejection(self, rej: Rejection) -> None:
        self.rejections.append(rej)

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1


BAD = [b"garbage line\n", CLF.replace(b" 200 ", b" 2x0 ") + b"\n", b'{"method": "GET"}\n']


def write_log(path: Path, body: bytes) -> Path:
    path.write_bytes(gzip.compress(body) if path.suffix == ".gz" else bz2.compress(body) if path.suffix == ".bz2"
                     else body)
    return path


@pytest.mark.parametrize("name", ["access.log", "access.log.gz", "access.log.bz2"])
def test_ingest_file_plain_gzip_bzip2(tmp_path: Path, name: str) -> None:
    body = NASA.read_bytes() + b"".join(BAD) + JSON + b"\n" + HAPROXY_3164 + CLF  # last line: no newline
    path = write_log(tmp_path / name, body)
    sink = FakeSink()
    summary = ingest_file(path, parser_for("auto", SETTINGS, file=path), sink, batch_size=128)
    assert summary.as_dict() == {"parsed": 1003, "rejected": 3,
                                 "reasons": {"bad_status": 1, "missing_ts": 1, "unknown_format": 1}}
    events = [e for batch in sink.batches for e in batch]
    assert len(events) == 1003 and max(len(b) for b in sink.batches) == 128
    assert {e.source for e in events} == {"clf", "json", "haproxy"}
    assert sorted(r.reason for r in sink.rejections) == ["bad_status", "missing_ts", "unknown_format"]
    assert sink.flushes == 1
    again = FakeSink()
    ingest_file(path, parser_for("auto", SETTINGS, file=path), again)
    assert [e.id for b in again.batches for e in b] == [e.id for e in events]  # re-reading: same ids


def test_ingest_file_dry_run_and_compression_by_content(tmp_path: Path) -> None:
    path = tmp_path / "misnamed.log"  # gzip content, plain name: told by the first bytes
    path.write_bytes(gzip.compress(NASA.read_bytes()))
    summary = ingest_file(path, parser_for("clf", SETTINGS), None)
    assert summary.as_dict() == {"parsed": 1000, "rejected": 0, "reasons": {}}
    reader, disk = open_log(path)
    assert reader.readline() == NASA.read_bytes().split(b"\n")[0] + b"\n"
    reader.close()
    disk.close()


def test_ingest_file_cuts_overlong_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_ingest, "MAX_LINE_BYTES", 128)
    long_clf = CLF.replace(b"/shuttle/", b"/" + b"x" * 300 + b"/")
    path = write_log(tmp_path / "a.log", long_clf + b"\n" + CLF + b"\n" + b"y" * 128 + b"\n" + CLF)
    seen: list[bytes] = []

    def recording(raw: bytes | str, received_ms: int | None = None) -> AccessEvent | Rejection:
        assert isinstance(raw, bytes)
        seen.append(raw)
        return parser_for("clf", SETTINGS)(raw, received_ms)

    recording.source = "clf"  # type: ignore[attr-defined]
    summary = ingest_file(path, recording, None)  # type: ignore[arg-type]
    assert seen[0] == long_clf[:128] and seen[1] == CLF + b"\n" and seen[3] == CLF
    assert len(seen) == 4
    assert summary.as_dict() == {"parsed": 2, "rejected": 2, "reasons": {"not_clf": 1, "truncated": 1}}


def test_ingest_file_keeps_what_it_read_from_a_cut_gzip(tmp_path: Path) -> None:
    whole = gzip.compress(NASA.read_bytes() * 20)
    path = tmp_path / "cut.log.gz"
    path.write_bytes(whole[: len(whole) // 2])
    sink = FakeSink()
    summary = ingest_file(path, parser_for("clf", SETTINGS), sink)
    assert summary.error is not None and "EOFError" in summary.error
    assert 1000 < summary.parsed < 20000
    assert sum(len(b) for b in sink.batches) == summary.parsed and sink.flushes == 1
    assert "error" in summary.as_dict()


def test_ingest_file_progress_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(file_ingest, "PROGRESS_MIN_BYTES", 10)
    monkeypatch.setattr(file_ingest, "_CLOCK_EVERY", 100)
    path = write_log(tmp_path / "a.log.gz", NASA.read_bytes())
    summary = ingest_file(path, parser_for("clf", SETTINGS), None, progress=True)
    assert summary.parsed == 1000
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays free for --json
    assert "a.log.gz" in captured.err


def test_ingest_file_command(tmp_path: Path) -> None:
    path = write_log(tmp_path / "web-3.log", NASA.read_bytes())
    summary = ingest_file_command(path, fmt="auto", ingest=SETTINGS, kafka=KafkaSettings(), dry_run=True,
                                  progress=False)
    assert summary.parsed == 1000
    with pytest.raises(FileNotFoundError):
        ingest_file_command(tmp_path / "nope.log", ingest=SETTINGS, kafka=KafkaSettings(), dry_run=True)
    with pytest.raises(ValueError, match="unknown format"):
        ingest_file_command(path, fmt="xml", ingest=SETTINGS, kafka=KafkaSettings(), dry_run=True)
