"""A bounded, append-only disk spool of (topic, key, value) records, for when their destination cannot take them.

Layout of the spool directory (one process at a time: `LOCK` is held with `flock`):

    000000000001.seg, 000000000002.seg, ...   segments, appended to, deleted once replayed
    cursor                                    `<segment> <offset>` of the first record not yet replayed
    LOCK

A record is length-prefixed and checksummed, so a write torn by a crash is detected and cut off
when the spool is opened again:

    crc32 (u32) | topic length (u16) | key length (u32, 0xFFFFFFFF = no key) | value length (u32)
    | topic (UTF-8) | key | value                                        (big-endian)

the CRC covering everything after itself.

Durability (the fsync policy): every `append` reaches the operating system with `os.write` before it
returns, so spooled records survive the process being killed or crashing. Surviving a power loss or
kernel crash needs an fsync, which costs milliseconds on real disks: by default it happens at most
once per `fsync_interval_s` (on the first append or `maybe_sync` after the interval), on every new
segment and on `close`; `fsync_interval_s=0` syncs every append, `None` leaves it to the OS. So with
the default an OS crash can lose up to about a second of spooled records, a process crash none.
The cursor is replaced atomically but not fsynced: losing it replays records again (duplicates,
which downstream drops by event id), never loses any.

Bounded: `max_bytes` limits the records not yet replayed (headers included); an append that would
pass it raises `SpoolFull` and writes nothing. Replayed records stay on disk until their whole
segment is replayed, so disk use can exceed `max_bytes` by at most one segment.

Thread-safe: one thread may append while another peeks and commits.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">IHII")  # crc32, topic length, key length, value length
_NO_KEY = 0xFFFFFFFF
_SUFFIX = ".seg"
SEGMENT_BYTES = 16 * 1024 * 1024

Record = tuple[str, bytes | None, bytes]  # topic, key, value


class SpoolFull(Exception):
    """Nothing of the append was written: it needs `needed` bytes and only `free` are left."""

    def __init__(self, needed: int, free: int, reason: str = "full") -> None:
        super().__init__(f"spool {reason}: {needed} bytes needed, {free} free")
        self.needed = needed
        self.free = free
        self.reason = reason


class SpoolLocked(RuntimeError):
    """Another process has this spool directory open; two writers would corrupt it."""


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    topic: str
    key: bytes | None
    value: bytes


def record_size(topic: str, key: bytes | None, value: bytes) -> int:
    """Bytes the record takes in the spool (what `max_bytes` counts)."""
    return _HEADER.size + len(topic.encode()) + (0 if key is None else len(key)) + len(value)


def encode_record(topic: str, key: bytes | None, value: bytes) -> bytes:
    t = topic.encode()
    k = b"" if key is None else key
    body = struct.pack(">HII", len(t), _NO_KEY if key is None else len(k), len(value)) + t + k + value
    return struct.pack(">I", zlib.crc32(body)) + body


def _decode_at(buf: bytes | memoryview, pos: int) -> tuple[SpooledRecord, int] | None:
    """The record starting at `pos` and the offset after it; None if it is cut short or corrupt."""
    if len(buf) - pos < _HEADER.size:
        return None
    crc, tlen, klen, vlen = _HEADER.unpack_from(buf, pos)
    key_len = 0 if klen == _NO_KEY else klen
    end = pos + _HEADER.size + tlen + key_len + vlen
    if end > len(buf) or zlib.crc32(buf[pos + 4:end]) != crc:
        return None
    p = pos + _HEADER.size
    try:
        topic = bytes(buf[p:p + tlen]).decode()
    except UnicodeDecodeError:
        return None
    p += tlen
    key = None if klen == _NO_KEY else bytes(buf[p:p + key_len])
    p += key_len
    return SpooledRecord(topic, key, bytes(buf[p:end])), end


class Spool:
    """Records appended in order, read back (`peek`) in the same order, dropped once replayed (`commit`)."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        fsync_interval_s: float | None = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 1 or segment_bytes < 1:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.directory = directory
        self.max_bytes = max_bytes
        # Small spools get small segments, so replayed bytes are given back to the disk early.
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 4))
        self.fsync_interval_s = fsync_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lock_fd)
            raise SpoolLocked(f"spool {directory} is in use by another process") from e
        self._sizes: dict[int, int] = {}  # segment -> bytes of whole records in it
        self._counts: dict[int, int] = {}  # segment -> records not yet replayed in it
        self._head = (0, 0)  # segment, offset of the first record not yet replayed
        self._peeked: list[tuple[int, int, int]] = []  # (segment, end offset, size) of each peeked record
        self._tail_fd: int | None = None
        self._pending_bytes = 0
        self._dirty = False
        self._last_sync = clock()
        self._closed = False
        self._recover()

    # -- state -------------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes of records not yet replayed (what `max_bytes` bounds)."""
        return self._pending_bytes

    @property
    def free_bytes(self) -> int:
        return self.max_bytes - self._pending_bytes

    def __len__(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    @property
    def empty(self) -> bool:
        return self._pending_bytes == 0

    # -- writing -----------------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> None:
        """Append all `records` in order with one write, or none of them (`SpoolFull`)."""
        if not records:
            return
        data = b"".join(encode_record(t, k, v) for t, k, v in records)
        with self._lock:
            self._check_open()
            free = self.max_bytes - self._pending_bytes
            if len(data) > free:
                raise SpoolFull(len(data), free)
            seg = self._writable_segment(len(data))
            start = self._sizes[seg]
            fd = self._tail_fd
            assert fd is not None
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as e:  # disk full or failing: leave no half record behind
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise SpoolFull(len(data), free, reason=f"write failed ({e.strerror})") from e
            self._sizes[seg] = start + len(data)
            self._counts[seg] = self._counts.get(seg, 0) + len(records)
            self._pending_bytes += len(data)
            self._dirty = True
            if self.fsync_interval_s is not None and self._clock() - self._last_sync >= self.fsync_interval_s:
                self._sync_locked()

    def maybe_sync(self) -> None:
        """Fsync if appends are waiting for it and the interval has passed (call it now and then)."""
        with self._lock:
            if (self._dirty and not self._closed and self.fsync_interval_s is not None
                    and self._clock() - self._last_sync >= self.fsync_interval_s):
                self._sync_locked()

    def sync(self) -> None:
        with self._lock:
            if self._dirty and not self._closed:
                self._sync_locked()

    # -- reading -----------------------------------------------------------------------------

    def peek(self, max_records: int, max_bytes: int = 8 * 1024 * 1024) -> list[SpooledRecord]:
        """The oldest records not yet replayed (at least one, if any), without removing them.

        `commit(n)` then removes the first n of them; a `peek` without `commit` starts again at the head.
        """
        with self._lock:
            self._check_open()
            self._peeked = []
            out: list[SpooledRecord] = []
            total = 0
            head_seg, head_off = self._head
            for seg in sorted(s for s in self._sizes if s >= head_seg):
                off, size = (head_off if seg == head_seg else 0), self._sizes[seg]
                while off < size and len(out) < max_records and total < max_bytes:
                    buf = self._read(seg, off, min(size - off, max_bytes - total))
                    pos = 0
                    while len(out) < max_records and total < max_bytes:
                        got = _decode_at(buf, pos)
                        if got is None:
                            break
                        rec, end = got
                        out.append(rec)
                        self._peeked.append((seg, off + end, end - pos))
                        total += end - pos
                        pos = end
                    if pos == 0:  # the next record is longer than what was read: read it whole
                        whole = self._read_one(seg, off)
                        if whole is None:
                            raise RuntimeError(f"spool segment {self._path(seg)} is corrupt at offset {off}")
                        rec, end = whole
                        out.append(rec)
                        self._peeked.append((seg, end, end - off))
                        total += end - off
                        pos = end - off
                    off += pos
                if len(out) >= max_records or total >= max_bytes:
                    break
            return out

    def commit(self, n: int) -> None:
        """Drop the first `n` records of the last `peek`: they are in Kafka now."""
        if n <= 0:
            return
        with self._lock:
            if n > len(self._peeked):
                raise ValueError(f"commit({n}) after peeking {len(self._peeked)} records")
            done, self._peeked = self._peeked[:n], []
            for seg, _end, size in done:
                self._counts[seg] -= 1
                self._pending_bytes -= size
            seg, end, _ = done[-1]
            self._head = (seg, end)
            self._drop_replayed_segments()
            self._write_cursor()

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._dirty:
                self._sync_locked()
            if self._tail_fd is not None:
                os.close(self._tail_fd)
                self._tail_fd = None
            self._closed = True
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _path(self, seg: int) -> Path:
        return self.directory / f"{seg:012d}{_SUFFIX}"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("spool is closed")

    def _writable_segment(self, nbytes: int) -> int:
        tail = max(self._sizes) if self._sizes else 0
        if tail == 0 or (self._sizes[tail] > 0 and self._sizes[tail] + nbytes > self.segment_bytes):
            if self._tail_fd is not None:
                if self._dirty:
                    os.fsync(self._tail_fd)  # a finished segment is synced whatever the interval
                os.close(self._tail_fd)
            tail += 1
            self._tail_fd = os.open(self._path(tail), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._sizes[tail] = 0
            self._counts[tail] = 0
            self._sync_dir()
            if not self._sizes.keys() - {tail}:
                self._head = (tail, 0)
        elif self._tail_fd is None:
            self._tail_fd = os.open(self._path(tail), os.O_WRONLY | os.O_APPEND)
        return tail

    def _sync_locked(self) -> None:
        if self._tail_fd is not None:
            os.fsync(self._tail_fd)
        self._dirty = False
        self._last_sync = self._clock()

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read(self, seg: int, off: int, n: int) -> bytes:
        with open(self._path(seg), "rb") as f:
            f.seek(off)
            return f.read(n)

    def _read_one(self, seg: int, off: int) -> tuple[SpooledRecord, int] | None:
        header = self._read(seg, off, _HEADER.size)
        if len(header) < _HEADER.size:
            return None
        _crc, tlen, klen, vlen = _HEADER.unpack(header)
        body_len = tlen + (0 if klen == _NO_KEY else klen) + vlen
        got = _decode_at(header + self._read(seg, off + _HEADER.size, body_len), 0)
        return None if got is None else (got[0], off + got[1])

    def _drop_replayed_segments(self) -> None:
        """Delete segments whose every record is replayed; the tail too when nothing is left."""
        tail = max(self._sizes)
        for seg in sorted(self._sizes):
            if self._counts[seg] > 0:
                break
            if seg == tail and self._tail_fd is not None:
                os.close(self._tail_fd)
                self._tail_fd = None
            self._path(seg).unlink(missing_ok=True)
            del self._sizes[seg], self._counts[seg]
        if not self._sizes:
            # Keep numbering increasing across an empty spool, so the cursor never points back.
            self._sizes[tail] = 0
            self._counts[tail] = 0
            self._path(tail).touch()
            self._head = (tail, 0)
        elif self._head[0] not in self._sizes:
            self._head = (min(self._sizes), 0)

    def _write_cursor(self) -> None:
        tmp = self.directory / "cursor.tmp"
        tmp.write_text(f"{self._head[0]} {self._head[1]}\n")
        tmp.replace(self.directory / "cursor")

    def _read_cursor(self) -> tuple[int, int]:
        try:
            seg_s, off_s = (self.directory / "cursor").read_text().split()
            return int(seg_s), int(off_s)
        except (OSError, ValueError):
            return 0, 0

    def _recover(self) -> None:
        """Find the segments, skip what the cursor says is replayed, cut off a torn tail record."""
        segs = sorted(int(p.name.removesuffix(_SUFFIX)) for p in self.directory.glob(f"*{_SUFFIX}")
                      if p.name.removesuffix(_SUFFIX).isdigit())
        cur_seg, cur_off = self._read_cursor()
        for seg in segs:
            if seg < cur_seg:
                self._path(seg).unlink(missing_ok=True)
                continue
            start = cur_off if seg == cur_seg else 0
            data = self._path(seg).read_bytes()
            if start > len(data):
                start = 0  # a cursor from a different spool: replay everything rather than skip
            pos, count = start, 0
            while pos < len(data):
                got = _decode_at(data, pos)
                if got is None:
                    break
                pos = got[1]
                count += 1
            if pos < len(data):
                log.warning("spool: %s has %d unreadable bytes at %d (a write cut short); dropped them",
                            self._path(seg), len(data) - pos, pos)
                os.truncate(self._path(seg), pos)
            self._sizes[seg] = pos
            self._counts[seg] = count
            self._pending_bytes += pos - start
            if len(self._sizes) == 1:
                self._head = (seg, start)
        if not self._sizes:
            # Nothing left to replay: a cursor alone would point past the numbering of new segments.
            (self.directory / "cursor").unlink(missing_ok=True)
        else:
            self._drop_replayed_segments()
            if self._pending_bytes:
                log.info("spool: %d records (%d bytes) from before are waiting to be replayed",
                         len(self), self._pending_bytes)
