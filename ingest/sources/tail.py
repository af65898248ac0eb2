"""Follow a log file like `tail -F`, across rotation and truncation, with a durable checkpoint.

Why polling: it works on every filesystem (inotify misses NFS and container bind mounts), and a
log file is its own buffer, so a quarter second of delay costs nothing.

- Rotation (rename, then a new file at the path): the old file is read to its end and until it has
  been quiet for `rotate_wait_s` (the writer may still hold it open), then the new file is read from
  its start. A last line without a newline in a finished file is handed over as it is.
- Truncation (copytruncate): when the file is shorter than what was read, or its first bytes
  changed, it is read again from offset 0.
- Only complete lines are handed over; a partial last line waits for its newline. A line longer
  than `max_line_bytes` is handed over cut to that length, the rest of it skipped.
- Restart: the checkpoint's file is found by inode, under the path or (rotated while stopped) a
  sibling name in the same folder, and finished first. Limits: a file rotated away twice while
  stopped is skipped, and copytruncate loses what is written between its copy and its truncate
  (as with any tailer; rename rotation has no such gap).

Delivery is at-least-once, and exactly-once across a clean stop. The checkpoint holds the end of
the last line handed over, and it is written only after the `durable` hook returned: that hook
flushes the sink (Kafka acknowledged, or the disk spool took it). Order, every `commit_interval_s`
and once more when stopping: snapshot position -> `durable()` -> atomic checkpoint write. A crash
re-reads at most the lines handed over since the last commit (their event ids are stable, so
downstream drops the duplicates); a clean stop re-reads nothing. If `durable` raises, no checkpoint
is written. A handler that raises gets the same lines again after a back-off, so a full sink
(back-pressure) stops the tailer reading instead of losing lines.

Identical lines are numbered apart (`Occurrences`) over a tailing session of a path, rotations
included: the session is the delivery unit. A restart counts afresh from the checkpoint, so a
re-read line whose twin lies before it gets a lower number than at its first read, i.e. the id of
an earlier twin: it is dropped as a duplicate. If it had been delivered before the crash nothing
is lost; if not, it is merged with its twin (as every twin was before the numbering). Never
counted twice, and a clean stop re-reads nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter

from infra.core.settings import IngestSettings
from ingest import metrics
from ingest.checkpoint import HEAD_BYTES, Checkpoint, CheckpointStore, head_digest
from ingest.parsers.auto import parser_for
from ingest.parsers.base import LineParser, Occurrences, now_ms
from ingest.runtime import run_until_signalled
from ingest.schemas import AccessEvent, Rejection
from ingest.sinks.base import EventSink

log = logging.getLogger(__name__)

LinesHandler = Callable[[list[bytes]], Awaitable[None] | None]
DurableHook = Callable[[], Awaitable[None] | None]

READ_CHUNK = 1 << 20
MAX_LINE_BYTES = 1 << 20
MAX_BACKOFF_S = 5.0
FLUSH_TIMEOUT_S = 30.0

ROTATIONS = Counter("foresight_ingest_tail_rotations", "Rotations followed (old file finished).", ["path"])
TRUNCATIONS = Counter("foresight_ingest_tail_truncations", "Truncations seen (file re-read from 0).", ["path"])
CUT_LINES = Counter("foresight_ingest_tail_cut_lines", "Lines longer than the limit, handed over cut.", ["path"])
ERRORS = Counter("foresight_ingest_tail_errors", "Failed polls or commits (retried).", ["path", "stage"])


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result


@dataclass
class _OpenFile:
    fd: int
    dev: int
    inode: int
    offset: int = 0  # end of the last line handed over
    pending: bytes = b""  # read after `offset`, no newline yet
    head: bytes = b""  # the file's first min(HEAD_BYTES, read_pos) bytes: changed means replaced
    skipping: bool = False  # inside an over-long line whose start was handed over cut

    @property
    def read_pos(self) -> int:
        return self.offset + len(self.pending)

    def checkpoint(self, path: Path) -> Checkpoint:
        head = self.head[:min(len(self.head), self.offset)]
        return Checkpoint(path=str(path), dev=self.dev, inode=self.inode, offset=self.offset,
                          head_len=len(head), head_hash=head_digest(head))

    def restart(self) -> None:
        self.offset, self.pending, self.head, self.skipping = 0, b"", b"", False


def _open(path: Path) -> _OpenFile | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    st = os.fstat(fd)
    return _OpenFile(fd=fd, dev=st.st_dev, inode=st.st_ino)


class FileTailer:
    """Hands complete lines of `path` to `on_lines` in batches; `run()` until a stop event."""

    def __init__(
        self,
        path: Path,
        on_lines: LinesHandler,
        *,
        store: CheckpointStore | None = None,
        durable: DurableHook | None = None,
        poll_interval_s: float = 0.25,
        commit_interval_s: float = 1.0,
        rotate_wait_s: float = 1.0,
        read_chunk: int = READ_CHUNK,
        max_line_bytes: int = MAX_LINE_BYTES,
        from_end: bool = False,
    ) -> None:
        self.path = path
        self.on_lines = on_lines
        self.store = store
        self.durable = durable
        self.poll_interval_s = poll_interval_s
        self.commit_interval_s = commit_interval_s
        self.rotate_wait_s = rotate_wait_s
        self.read_chunk = read_chunk
        self.max_line_bytes = max_line_bytes
        self.from_end = from_end
        self._file: _OpenFile | None = None
        self._started = False
        self._rotated_since: float | None = None
        self._saved: Checkpoint | None = None
        self._label = str(path)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set, committing on the way; the final commit makes a clean stop exact."""
        loop = asyncio.get_running_loop()
        next_commit = loop.time() + self.commit_interval_s
        delay = self.poll_interval_s
        try:
            while not stop.is_set():
                try:
                    await self.poll()
                    delay = self.poll_interval_s
                except Exception as e:  # the sink (back-pressure) or the filesystem: retry the same lines
                    ERRORS.labels(path=self._label, stage="poll").inc()
                    log.warning("tail %s: %s; retrying in %.1fs", self.path, e or type(e).__name__, delay,
                                exc_info=delay == self.poll_interval_s)  # the traceback once per streak
                    delay = min(delay * 2, MAX_BACKOFF_S)
                if loop.time() >= next_commit:
                    await self._commit_logged()
                    next_commit = loop.time() + self.commit_interval_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            await self._commit_logged()
        finally:
            self.close()

    async def poll(self) -> int:
        """One round: notice rotation or truncation, hand over every complete line. Returns lines handed."""
        if not self._started:
            self._file = self._open_initial()
            self._started = True
        elif self._file is None:
            self._file = _open(self.path)
        f = self._file
        if f is None:
            return 0
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None  # renamed away, new file not there yet: keep reading the old one
        rotated = st is not None and (st.st_dev, st.st_ino) != (f.dev, f.inode)
        if not rotated:
            self._check_truncation(f)
        handed, nread = await self._drain(f)
        if not rotated:
            return handed
        now = asyncio.get_running_loop().time()
        if nread or self._rotated_since is None:
            self._rotated_since = now
        if now - self._rotated_since < self.rotate_wait_s:
            return handed
        await self._finish(f)
        ROTATIONS.labels(path=self._label).inc()
        log.info("tail %s: rotated; finished inode %d at %d bytes", self.path, f.inode, f.offset)
        os.close(f.fd)
        self._file, self._rotated_since = _open(self.path), None
        if self._file is not None:
            handed += (await self._drain(self._file))[0]
        return handed

    async def commit(self) -> None:
        """Make what was handed over durable (the `durable` hook), then save the position."""
        f = self._file
        if f is None or self.store is None:
            return
        snapshot = f.checkpoint(self.path)
        if snapshot == self._saved:
            return
        if self.durable is not None:
            await _maybe_await(self.durable())
        self.store.save(self.path, snapshot)
        self._saved = snapshot

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file.fd)
            self._file = None

    async def _commit_logged(self) -> None:
        try:
            await self.commit()
        except Exception:  # not durable: keep the old checkpoint, so these lines are read again
            ERRORS.labels(path=self._label, stage="commit").inc()
            log.exception("tail %s: commit failed; checkpoint not advanced", self.path)

    def _open_initial(self) -> _OpenFile | None:
        """Where to start: the checkpoint if it still names this content, else the start (or the end)."""
        ck = self.store.load(self.path) if self.store is not None else None
        f = _open(self.path)
        if ck is None:
            if f is not None and self.from_end:
                self._seek_end(f)
            return f
        if f is not None and (f.dev, f.inode) == (ck.dev, ck.inode):
            if self._resume(f, ck):
                return f
            log.warning("tail %s: changed while stopped (truncated or replaced); reading from the start",
                        self.path)
            f.restart()
            return f
        old = self._find_rotated(ck)
        if old is not None:
            log.info("tail %s: rotated while stopped; finishing %s first", self.path, old[1])
            if f is not None:
                os.close(f.fd)
            return old[0]
        log.warning("tail %s: the file of the checkpoint (inode %d) is gone; lines after byte %d of it "
                    "may be lost", self.path, ck.inode, ck.offset)
        return f

    def _resume(self, f: _OpenFile, ck: Checkpoint) -> bool:
        head = os.pread(f.fd, HEAD_BYTES, 0)
        if not ck.head_matches(head) or os.fstat(f.fd).st_size < ck.offset:
            return False
        f.offset, f.head = ck.offset, head[:min(HEAD_BYTES, ck.offset)]
        self._saved = ck
        return True

    def _find_rotated(self, ck: Checkpoint) -> tuple[_OpenFile, Path] | None:
        """The checkpoint's file under its rotated name (same folder, same inode and first bytes)."""
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return None
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) != (ck.dev, ck.inode):
                continue
            f = _open(Path(entry.path))
            if f is not None and (f.dev, f.inode) == (ck.dev, ck.inode) and self._resume(f, ck):
                return f, Path(entry.path)
            if f is not None:
                os.close(f.fd)
        return None

    @staticmethod
    def _seek_end(f: _OpenFile) -> None:
        size = os.fstat(f.fd).st_size
        f.offset, f.head = size, os.pread(f.fd, min(HEAD_BYTES, size), 0)
        # mid-line: the rest of that line is not a line
        f.skipping = size > 0 and os.pread(f.fd, 1, size - 1) != b"\n"

    def _check_truncation(self, f: _OpenFile) -> None:
        shrunk = os.fstat(f.fd).st_size < f.read_pos
        if shrunk or (f.head and os.pread(f.fd, len(f.head), 0) != f.head):
            TRUNCATIONS.labels(path=self._label).inc()
            log.info("tail %s: truncated or rewritten; reading from the start", self.path)
            f.restart()

    async def _drain(self, f: _OpenFile) -> tuple[int, int]:
        """Read to the end of the file, handing over lines chunk by chunk. Returns (lines, bytes read)."""
        handed = nread = 0
        while True:
            handed += await self._hand_over(f)
            data = os.pread(f.fd, self.read_chunk, f.read_pos)
            if not data:
                return handed, nread
            if len(f.head) < HEAD_BYTES:
                f.head += data[:HEAD_BYTES - len(f.head)]
            f.pending += data
            nread += len(data)

    async def _hand_over(self, f: _OpenFile) -> int:
        """Hand the complete lines of `pending` to the handler; state moves only if it accepted them."""
        if f.skipping:
            nl = f.pending.find(b"\n")
            skipped = len(f.pending) if nl < 0 else nl + 1
            f.offset, f.pending, f.skipping = f.offset + skipped, f.pending[skipped:], nl < 0
        cut = f.pending.rfind(b"\n") + 1
        if cut == 0:
            if len(f.pending) < self.max_line_bytes:
                return 0
            await self._deliver([f.pending])  # a line that never ends: hand over its start
            f.offset, f.pending, f.skipping = f.read_pos, b"", True
            return 1
        lines = [line for line in f.pending[:cut].split(b"\n")[:-1] if line and line != b"\r"]
        if lines:
            await self._deliver(lines)
        f.offset, f.pending = f.offset + cut, f.pending[cut:]
        return len(lines)

    async def _finish(self, f: _OpenFile) -> None:
        """The rotated file gets no more writes: its unterminated last line is a line after all."""
        await self._drain(f)
        if f.pending and not f.skipping:
            await self._deliver([f.pending])
        f.offset, f.pending = f.read_pos, b""

    async def _deliver(self, lines: list[bytes]) -> None:
        cut = [line[:self.max_line_bytes] for line in lines]
        n_cut = sum(len(line) > self.max_line_bytes for line in lines)
        if n_cut:
            CUT_LINES.labels(path=self._label).inc(n_cut)
        await _maybe_await(self.on_lines(cut))


def batch_handler(parser: LineParser, sink: EventSink) -> LinesHandler:
    """Parse a batch and hand it to `sink`: events in one call (all or nothing under back-pressure),
    then the rejections. If the sink raises, the tailer hands the same batch again later: the
    numbering of identical lines is rolled back, so the batch gets the same ids again."""
    lines_received = metrics.LINES_RECEIVED.labels(source=parser.source)
    distinct = Occurrences()

    def on_lines(lines: list[bytes]) -> None:
        received = now_ms()
        events: list[AccessEvent] = []
        rejections: list[Rejection] = []
        for line in lines:
            result = parser(line, received)
            if isinstance(result, Rejection):
                rejections.append(result)
            else:
                events.append(result)
        before = distinct.snapshot()
        try:
            if events:
                sink.send_events(distinct.number(events))
            for rej in rejections:
                sink.send_rejection(rej)
        except BaseException:
            distinct.restore(before)
            raise
        lines_received.inc(len(lines))
    return on_lines


async def serve_tail_ingest(paths: Sequence[Path], ingest: IngestSettings, sink: EventSink, checkpoint_dir: Path,
                            stop: asyncio.Event, *, fmt: str = "auto", from_end: bool = False,
                            poll_interval_s: float = 0.25, commit_interval_s: float = 1.0) -> None:
    """Tail `paths` into `sink` until `stop`; every tailer commits after `sink.flush` (see module doc).

    `fmt` is a parser name of `ingest.parsers.auto.parser_for`; each file gets its own parser, so
    `file` routing rules see which file a line came from.
    """
    store = CheckpointStore(checkpoint_dir)

    def durable() -> None:
        sink.flush(timeout=FLUSH_TIMEOUT_S)  # raises if not everything was acknowledged or spooled

    tailers = [FileTailer(p, batch_handler(parser_for(fmt, ingest, file=p), sink), store=store, durable=durable,
                          poll_interval_s=poll_interval_s, commit_interval_s=commit_interval_s, from_end=from_end)
               for p in paths]
    for p in paths:
        log.info("ingest: tailing %s (%s)", p, fmt)
    try:
        await asyncio.gather(*(t.run(stop) for t in tailers))
    finally:
        sink.flush(timeout=FLUSH_TIMEOUT_S)


def run_tail_ingest(paths: Sequence[Path], ingest: IngestSettings, sink: EventSink, checkpoint_dir: Path, *,
                    fmt: str = "auto", from_end: bool = False, metrics_port: int | None = None) -> None:
    """The `ingest tail` process: follows `paths` until SIGTERM/SIGINT, commits, flushes, returns.

    The caller owns `sink` (closes it afterwards). `checkpoint_dir`: `Settings.checkpoint_dir`.
    """
    run_until_signalled(lambda stop: serve_tail_ingest(paths, ingest, sink, checkpoint_dir, stop, fmt=fmt,
                                                       from_end=from_end), metrics_port=metrics_port)
    log.info("ingest: tail stopped")
