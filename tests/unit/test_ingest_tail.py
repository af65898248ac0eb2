"""File tailer and checkpoint: real files in tmp_path, a real event loop, no sleeps on the clock.

Most tests drive `poll()` and `commit()` by hand so every step is deterministic; the restart tests
run the real `run()` loop and stop it the way a SIGTERM would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from infra.core.settings import IngestSettings
from ingest.checkpoint import CheckpointStore, atomic_write
from ingest.sources.tail import FileTailer, serve_tail_ingest
from tests.unit.fakes import RecordingSink

LINE = (b'<134>Nov 28 21:36:07 haproxy[3905]: 127.0.0.1:40408 [28/Nov/2026:21:36:07.277] fe_demo demo/s1 '
        b'0/0/0/5/5 200 182 - - ---- 1/1/0/0/0 0/0 "GET /index.html?x=1 HTTP/1.1"')


class Recorder:
    """The handler: keeps every line; optionally fails the next `fail` calls (a full sink)."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.fail = 0

    def __call__(self, lines: list[bytes]) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("sink full")
        self.lines.extend(lines)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def numbered(start: int, stop: int) -> bytes:
    return b"".join(f"line {i}\n".encode() for i in range(start, stop))


def expected(start: int, stop: int) -> list[bytes]:
    return [f"line {i}".encode() for i in range(start, stop)]


def tailer(path: Path, rec: Recorder, store: CheckpointStore | None = None, **kw: object) -> FileTailer:
    return FileTailer(path, rec, store=store, **kw)  # type: ignore[arg-type]


async def until(cond: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_only_complete_lines_are_handed_over(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"one\ntw")
    rec = Recorder()
    store = CheckpointStore(tmp_path / "ck")

    async def main() -> None:
        t = tailer(log, rec, store)
        assert await t.poll() == 1
        assert rec.lines == [b"one"]
        await t.commit()
        assert store.load(log).offset == 4  # type: ignore[union-attr]  # after "one\n", not "tw"
        append(log, b"o\r\n\nthree\n")
        assert await t.poll() == 2
        t.close()

    asyncio.run(main())
    assert rec.lines == [b"one", b"two\r", b"three"]  # blank lines skipped, bytes otherwise untouched


def test_rotation_finishes_the_old_file_then_reads_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 3))
    rec = Recorder()

    async def main() -> None:
        t = tailer(log, rec, rotate_wait_s=3600)
        await t.poll()
        with log.open("ab") as writer:  # the writer keeps the old file open across the rename
            writer.write(numbered(3, 5))
            os.rename(log, tmp_path / "app.log.1")
            log.write_bytes(numbered(7, 9))
            writer.write(numbered(5, 6) + b"line 6")  # still writing the old one; last line unfinished
            writer.flush()
            await t.poll()
            assert rec.lines == expected(0, 6)  # old file followed; the new one waits for rotate_wait_s
            writer.write(b"\n")
        t.rotate_wait_s = 0  # the old file has been quiet long enough
        await t.poll()
        append(log, numbered(9, 10))
        await t.poll()
        t.close()

    asyncio.run(main())
    assert rec.lines == expected(0, 10) and len(set(rec.lines)) == 10


def test_unterminated_last_line_of_a_rotated_file_is_not_lost(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\nb")
    rec = Recorder()

    async def main() -> None:
        t = tailer(log, rec, rotate_wait_s=0)
        await t.poll()
        os.rename(log, tmp_path / "app.log.1")
        log.write_bytes(b"c\n")
        await t.poll()
        t.close()

    asyncio.run(main())
    assert rec.lines == [b"a", b"b", b"c"]


def test_copytruncate_restarts_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 3))
    rec = Recorder()

    async def main() -> None:
        t = tailer(log, rec)
        await t.poll()
        with log.open("r+b") as f:  # copytruncate: same inode, size 0, the writer goes on
            f.truncate(0)
        append(log, numbered(3, 4))
        await t.poll()
        # truncated and refilled past the old offset between two polls: the first bytes tell
        with log.open("r+b") as f:
            f.truncate(0)
        append(log, b"new first line, longer than what was there\n" + numbered(4, 6))
        await t.poll()
        t.close()

    asyncio.run(main())
    assert rec.lines == [*expected(0, 4), b"new first line, longer than what was there", *expected(4, 6)]


def test_failing_handler_gets_the_same_lines_again(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 3))
    rec = Recorder()
    rec.fail = 1

    async def main() -> None:
        t = tailer(log, rec)
        with pytest.raises(RuntimeError):
            await t.poll()
        assert await t.poll() == 3
        t.close()

    asyncio.run(main())
    assert rec.lines == expected(0, 3)


def test_checkpoint_waits_for_durable_and_is_not_advanced_when_it_fails(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 2))
    rec = Recorder()
    store = CheckpointStore(tmp_path / "ck")
    seen: list[int | None] = []
    broken = True

    def durable() -> None:
        ck = store.load(log)
        seen.append(None if ck is None else ck.offset)  # the checkpoint as it was when the sink flushed
        if broken:
            raise TimeoutError("kafka did not acknowledge")

    async def main() -> None:
        nonlocal broken
        t = tailer(log, rec, store, durable=durable)
        await t.poll()
        with pytest.raises(TimeoutError):
            await t.commit()
        assert store.load(log) is None
        broken = False
        await t.commit()
        t.close()

    asyncio.run(main())
    assert seen == [None, None]  # flushed before the checkpoint was written, both times
    assert store.load(log).offset == len(numbered(0, 2))  # type: ignore[union-attr]


def test_long_line_is_cut_and_the_rest_skipped(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"x" * 25 + b"\nok\n" + b"y" * 12)
    rec = Recorder()

    async def main() -> None:
        t = tailer(log, rec, max_line_bytes=10, read_chunk=4)
        await t.poll()
        append(log, b"yyy\nlast\n")
        await t.poll()
        t.close()

    asyncio.run(main())
    assert rec.lines == [b"x" * 10, b"ok", b"y" * 10, b"last"]


def test_from_end_skips_history_and_a_partial_last_line(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"old\nhalf")
    rec = Recorder()

    async def main() -> None:
        t = tailer(log, rec, from_end=True)
        await t.poll()
        append(log, b" line\nnew\n")
        await t.poll()
        t.close()

    asyncio.run(main())
    assert rec.lines == [b"new"]


async def run_until(t: FileTailer, cond: Callable[[], object]) -> None:
    """Run the real loop until `cond`, then stop it as SIGTERM would (final commit included)."""
    stop = asyncio.Event()
    task = asyncio.create_task(t.run(stop))
    await until(cond)
    stop.set()
    await asyncio.wait_for(task, 10)


def test_restarts_lose_and_repeat_nothing_across_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    store = CheckpointStore(tmp_path / "ck")
    rec = Recorder()
    fast = {"poll_interval_s": 0.01, "commit_interval_s": 0.02, "rotate_wait_s": 0.0}

    def new_tailer() -> FileTailer:
        return tailer(log, rec, store, **fast)

    log.write_bytes(numbered(0, 3) + b"line 3")

    async def main() -> None:
        t1 = new_tailer()
        task = asyncio.create_task(run_until(t1, lambda: len(rec.lines) >= 5))
        await until(lambda: len(rec.lines) == 3)
        append(log, b"\n" + numbered(4, 5))  # written while running
        await task
        append(log, numbered(5, 7))  # written while stopped
        await run_until(new_tailer(), lambda: len(rec.lines) >= 7)

        # rotated while stopped, with unread lines in the old file: finished first
        append(log, numbered(7, 9))
        os.rename(log, tmp_path / "app.log.1")
        log.write_bytes(numbered(9, 11))
        await run_until(new_tailer(), lambda: len(rec.lines) >= 11)

        # copytruncated while stopped: read from the start
        with log.open("r+b") as f:
            f.truncate(0)
        append(log, numbered(11, 12))
        await run_until(new_tailer(), lambda: len(rec.lines) >= 12)

        # nothing new: a restart hands over nothing
        t = new_tailer()
        assert await t.poll() == 0
        t.close()

    asyncio.run(main())
    assert rec.lines == expected(0, 12)


def test_crash_before_commit_repeats_lines_but_loses_none(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    store = CheckpointStore(tmp_path / "ck")
    log.write_bytes(numbered(0, 2))
    first, second = Recorder(), Recorder()

    async def main() -> None:
        t = tailer(log, first, store)
        await t.poll()
        await t.commit()
        append(log, numbered(2, 4))
        await t.poll()
        t.close()  # killed: no commit of lines 2-3
        t2 = tailer(log, second, store)
        await t2.poll()
        t2.close()

    asyncio.run(main())
    assert first.lines == expected(0, 4)
    assert second.lines == expected(2, 4)


def test_checkpoint_store_roundtrip_and_corrupt_file(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    store = CheckpointStore(tmp_path / "ck")
    assert store.load(log) is None

    async def main() -> None:
        t = tailer(log, Recorder(), store)
        await t.poll()
        await t.commit()
        t.close()

    asyncio.run(main())
    ck = store.load(log)
    assert ck is not None and ck.offset == 2 and ck.inode == os.stat(log).st_ino
    assert json.loads(store.file_for(log).read_bytes())["v"] == 1
    assert [p.name for p in (tmp_path / "ck").iterdir()] == [store.file_for(log).name]  # no temp left
    atomic_write(store.file_for(log), b"{not json")
    assert store.load(log) is None


def test_serve_tail_ingest_parses_into_the_sink_and_commits_after_flush(tmp_path: Path) -> None:
    log = tmp_path / "haproxy.log"
    log.write_bytes(LINE + b"\n" + b"garbage\n" + LINE.replace(b"/index.html", b"/b") + b"\n")
    sink = RecordingSink()
    store = CheckpointStore(tmp_path / "ck")

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve_tail_ingest([log], IngestSettings(), sink, tmp_path / "ck", stop,
                                                     fmt="haproxy", poll_interval_s=0.01))
        await until(lambda: sum(map(len, sink.batches)) == 2)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert [e.route for b in sink.batches for e in b] == ["/index.html", "/b"]
    assert [r.reason for r in sink.rejections] == ["not_httplog"]
    assert sink.flushed >= 1
    assert store.load(log).offset == log.stat().st_size  # type: ignore[union-attr]


TAIL_SCRIPT = """
import sys
from pathlib import Path
from infra.core.settings import IngestSettings
from ingest.sources.tail import run_tail_ingest

log, ckdir, out = map(Path, sys.argv[1:4])

def note(text):
    with out.open("a") as f:
        f.write(text + "\\n")

class Sink:
    def send_events(self, events): note(f"events {len(events)}")
    def send_rejection(self, rej): note("rejection")
    def flush(self, timeout=None): note("flush")
    def close(self, timeout=None): pass

run_tail_ingest([log], IngestSettings(), Sink(), ckdir)  # fmt auto: finds the HAProxy lines
note("returned")
"""


def test_run_tail_ingest_commits_and_returns_on_sigterm(tmp_path: Path) -> None:
    log, out, script = tmp_path / "haproxy.log", tmp_path / "out.txt", tmp_path / "tail.py"
    log.write_bytes(LINE + b"\n" + LINE.replace(b"/index.html", b"/b") + b"\n")
    script.write_text(TAIL_SCRIPT)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, str(script), str(log), str(tmp_path / "ck"), str(out)],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and "events 2" in out.read_text()):
            assert proc.poll() is None, "tailer exited early"
            assert time.monotonic() < deadline, "no events"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    notes = out.read_text().split("\n")[:-1]
    assert notes[0] == "events 2" and notes[-1] == "returned" and "flush" in notes
    assert CheckpointStore(tmp_path / "ck").load(log).offset == log.stat().st_size  # type: ignore[union-attr]


def test_back_pressure_from_the_sink_delays_lines_without_losing_them(tmp_path: Path) -> None:
    log = tmp_path / "haproxy.log"
    log.write_bytes(LINE + b"\n")
    sink = RecordingSink(refusals=2)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve_tail_ingest([log], IngestSettings(), sink, tmp_path / "ck", stop,
                                                     fmt="haproxy", poll_interval_s=0.01))
        await until(lambda: sink.batches)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert sink.refusals == 0 and [len(b) for b in sink.batches] == [1]
