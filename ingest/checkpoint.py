"""Durable read positions of tailed files, so a restarted tailer neither loses nor repeats lines.

A checkpoint names the file by device and inode (a name moves on rotation, an inode does not) plus
a fingerprint of its first bytes (an inode is reused once its file is deleted, and copytruncate
keeps the inode while replacing the content). `offset` is the end of the last line handed over
*and* made durable by the sink; the tailer decides when that is (see `ingest.sources.tail`).

Writes are atomic: a temporary file in the same folder, fsync, rename over the old checkpoint,
fsync of the folder. A crash leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HEAD_BYTES = 256  # fingerprint length: enough to tell two log files apart by their first lines
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Checkpoint:
    path: str  # for people reading the file; identity is dev + inode + head
    dev: int
    inode: int
    offset: int
    head_len: int
    head_hash: str

    def head_matches(self, head: bytes) -> bool:
        return len(head) >= self.head_len and head_digest(head[:self.head_len]) == self.head_hash


def head_digest(head: bytes) -> str:
    return hashlib.blake2b(head, digest_size=16).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash at any point leaves the old or the new content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a power cut
    finally:
        os.close(dir_fd)


class CheckpointStore:
    """One JSON file per tailed path in `directory` (created on first save)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def file_for(self, source: Path) -> Path:
        absolute = str(source.absolute())
        digest = hashlib.blake2b(absolute.encode(), digest_size=8).hexdigest()
        return self.directory / f"{_UNSAFE.sub('_', source.name)[:64]}-{digest}.json"

    def load(self, source: Path) -> Checkpoint | None:
        """The saved position, or None; an unreadable checkpoint is None (re-reading beats losing)."""
        file = self.file_for(source)
        try:
            data = json.loads(file.read_bytes())
            return Checkpoint(path=str(data["path"]), dev=int(data["dev"]), inode=int(data["inode"]),
                              offset=int(data["offset"]), head_len=int(data["head_len"]),
                              head_hash=str(data["head_hash"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("checkpoint %s unreadable (%r): %s is read from its start", file, e, source)
            return None

    def save(self, source: Path, checkpoint: Checkpoint) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"v": 1, **asdict(checkpoint)}, sort_keys=True).encode()
        atomic_write(self.file_for(source), body)
