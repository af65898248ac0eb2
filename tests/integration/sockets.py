"""Listening sockets of a set of processes, from `ss` (the test's view matches what an operator runs)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import psutil

_USERS = re.compile(r'\("([^"]*)",pid=(\d+),fd=\d+\)')
LOOPBACK_PREFIXES = ("127.", "[::ffff:127.", "[::1]")


@dataclass(frozen=True)
class Listener:
    proto: str
    address: str  # as ss prints it: 127.0.0.1:8000, *:34301, [::]:53, 0.0.0.0:41049
    pid: int
    process: str

    @property
    def loopback(self) -> bool:
        return self.address.startswith(LOOPBACK_PREFIXES)


def process_tree(pids: list[int]) -> set[int]:
    """The pids and all their descendants that are still alive."""
    out: set[int] = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            out |= {pid, *(child.pid for child in proc.children(recursive=True))}
        except psutil.NoSuchProcess:
            continue
    return out


def listeners(pids: set[int]) -> list[Listener]:
    """TCP sockets in LISTEN and bound UDP sockets (`ss -H -ltunp`) owned by any of `pids`."""
    text = subprocess.run(["ss", "-H", "-ltunp"], capture_output=True, text=True, check=True, timeout=30).stdout
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        for name, pid in _USERS.findall(line):
            if int(pid) in pids:
                found.append(Listener(fields[0], fields[4], int(pid), name))
    return found
