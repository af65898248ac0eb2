"""Ingest a whole log file once (`foresight ingest file PATH`): backfills and benchmarks.

Plain, gzip or bzip2 (told by the first bytes, not the name), read line by line in binary so a
line in a foreign encoding reaches the parser intact. Events go to the sink in batches,
rejections one by one; without a sink (dry run) only the counts are kept. Event ids hash the
raw line, and identical lines are numbered over the whole file (`Occurrences`: the file is the
delivery unit), so ingesting the same file twice sends the same ids (downstream drops the
duplicates) while two identical lines stay two events. A file that grew in between gets the same
ids for its old part; a file ingested in pieces (split, or tailed before) may merge twins the
piece boundary separates.
A line longer than `MAX_LINE_BYTES` is handed over cut to that length and the rest skipped, as
the tailer does. A compressed file that ends early keeps what was read and says so in `error`.
"""

from __future__ import annotations

import bz2
import gzip
import io
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from infra.core.settings import IngestSettings, KafkaSettings
from ingest.parsers.base import LineParser, Occurrences, now_ms
from ingest.schemas import AccessEvent, Rejection
from ingest.sinks.base import EventSink

MAX_LINE_BYTES = 1 << 20
PROGRESS_MIN_BYTES = 5 * 1024 * 1024  # smaller files are done before a bar would help
_CLOCK_EVERY = 4096  # lines between received-time (and progress) updates


class LogReader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def readline(self, size: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


@dataclass
class IngestSummary:
    parsed: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"parsed": self.parsed, "rejected": self.rejected,
                               "reasons": dict(sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0])))}
        if self.error is not None:
            out["error"] = self.error
        return out


def open_log(path: str | Path) -> tuple[LogReader, io.BufferedReader]:
    """(decompressed reader, the file on disk): the latter's position is the progress through the file.

    Close both. Told by the first bytes, not the name: rotated logs are often misnamed.
    """
    raw = open(path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
    try:
        magic = raw.peek(3)[:3]
        if magic[:2] == b"\x1f\x8b":
            return gzip.GzipFile(fileobj=raw, mode="rb"), raw
        if magic == b"BZh":
            return bz2.BZ2File(raw, mode="rb"), raw
        return raw, raw
    except BaseException:
        raw.close()
        raise


def ingest_file(path: str | Path, parser: LineParser, sink: EventSink | None, *, progress: bool = False,
                batch_size: int = 500) -> IngestSummary:
    """Parse every line of `path`; send to `sink` unless it is None (dry run); flush it at the end."""
    summary = IngestSummary()
    reasons: Counter[str] = Counter()
    batch: list[AccessEvent] = []
    distinct = Occurrences()  # numbered batch by batch, in file order
    size = Path(path).stat().st_size
    lines, disk = open_log(path)
    bar = _Bar(str(path), size) if progress and size > PROGRESS_MIN_BYTES else None
    try:
        received = now_ms()
        n = 0
        for raw in _lines(lines, summary):
            n += 1
            if n % _CLOCK_EVERY == 0:
                received = now_ms()
                if bar is not None:
                    bar.update(disk.tell())
            result = parser(raw, received)
            if isinstance(result, Rejection):
                reasons[result.reason] += 1
                if sink is not None:
                    sink.send_rejection(result)
                continue
            summary.parsed += 1
            if sink is not None:
                batch.append(result)
                if len(batch) >= batch_size:
                    sink.send_events(distinct.number(batch))
                    batch = []
    finally:
        lines.close()
        disk.close()
        if bar is not None:
            bar.close(size)
    if sink is not None:
        if batch:
            sink.send_events(distinct.number(batch))
        sink.flush()
    summary.rejected = sum(reasons.values())
    summary.reasons = dict(reasons)
    return summary


def ingest_file_command(path: str | Path, *, fmt: str = "auto", ingest: IngestSettings, kafka: KafkaSettings,
                        dry_run: bool = False, progress: bool = True) -> IngestSummary:
    """`foresight ingest file PATH [--format F] [--dry-run]`: parser from settings, Kafka unless a dry run.

    Raises FileNotFoundError for a missing file and ValueError for an unknown format.
    """
    from ingest.parsers.auto import parser_for
    from ingest.sinks.kafka import KafkaSink  # kafka-python is imported only when sending

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    parser = parser_for(fmt, ingest, file=path)
    if dry_run:
        return ingest_file(path, parser, None, progress=progress, batch_size=ingest.batch_max)
    sink = KafkaSink(kafka, ingest.batch_max, client_id="foresight-ingest-file")
    try:
        return ingest_file(path, parser, sink, progress=progress, batch_size=ingest.batch_max)
    finally:
        sink.close()


def _lines(f: LogReader, summary: IngestSummary) -> Iterator[bytes]:
    """Lines of `f`, each at most MAX_LINE_BYTES (a longer one cut, its rest skipped).

    A read error (a compressed file cut short or corrupt, a disk error) ends the lines and is noted
    in `summary.error`: what was read before it is still sent.
    """
    readline = f.readline
    try:
        while True:
            line = readline(MAX_LINE_BYTES)
            if not line:
                return
            if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
                rest = readline(MAX_LINE_BYTES)
                while rest and not rest.endswith(b"\n"):
                    rest = readline(MAX_LINE_BYTES)
            yield line
    except (EOFError, zlib.error, OSError) as e:  # gzip.BadGzipFile is an OSError
        summary.error = f"{type(e).__name__}: {e}"[:200]


class _Bar:
    """A rich progress bar by bytes of the file on disk, on stderr (stdout may carry `--json`)."""

    def __init__(self, name: str, total: int) -> None:
        import rich.console  # only when a bar is shown
        import rich.progress as rp

        self._progress = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.DownloadColumn(),
                                     rp.TransferSpeedColumn(), rp.TimeRemainingColumn(),
                                     console=rich.console.Console(stderr=True))
        self._progress.start()
        self._task = self._progress.add_task(Path(name).name, total=total)

    def update(self, done: int) -> None:
        self._progress.update(self._task, completed=done)

    def close(self, total: int) -> None:
        self._progress.update(self._task, completed=total)
        self._progress.stop()
