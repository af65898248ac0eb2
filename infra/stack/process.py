"""Start, find and stop the stack's processes by pid file, so `down` stops exactly what `up` started.

A pid file records the pid and its start time: a recycled pid belonging to another program is
never taken for ours, and never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    create_time: float
    argv: list[str]
    log: str

    def process(self) -> psutil.Process | None:
        """The live process this record describes, or None when it is gone or a zombie."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None


class PidFiles:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid.json"

    def read(self, name: str) -> ProcessRecord | None:
        path = self.path(name)
        try:
            return ProcessRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, record: ProcessRecord) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path(record.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(record.__dict__))
        tmp.replace(self.path(record.name))

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def names(self) -> list[str]:
        return sorted(p.name.removesuffix(".pid.json") for p in self.run_dir.glob("*.pid.json"))


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> ProcessRecord:
    """Start `argv` in its own session (so its whole group can be signalled), output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
    create_time = psutil.Process(proc.pid).create_time()
    return ProcessRecord(name=name, pid=proc.pid, create_time=create_time, argv=argv, log=str(log))


def stop(record: ProcessRecord, timeout_s: float = 15.0) -> list[int]:
    """SIGTERM the process, its group and every descendant; SIGKILL what is left after `timeout_s`.

    Descendants are collected before signalling because some (Ray's raylet and workers) leave
    the process group and would otherwise be orphaned. Returns the pids that had to be killed.
    """
    proc = record.process()
    if proc is None:
        return []
    family = [proc, *_descendants(proc)]
    with contextlib.suppress(OSError):
        os.killpg(record.pid, signal.SIGTERM)
    for p in family:
        _signal(p, signal.SIGTERM)
    alive = _wait_gone(family, timeout_s)
    # Children started after the first look (a worker respawning during shutdown).
    alive += [c for p in alive for c in _descendants(p) if c not in alive]
    for p in alive:
        _signal(p, signal.SIGKILL)
    _wait_gone(alive, 5.0)
    _reap(record.pid)
    return [p.pid for p in alive]


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes still running after up to `timeout_s`. Polled every 50 ms: `psutil.wait_procs` waits
    on a process that is not our child (a stack component, started by an earlier `stack up`) in sleeps
    that grow, and took 1.5-2 s for each one that had exited at once (42 s for a `stack down`)."""
    deadline = time.monotonic() + timeout_s
    alive = list(procs)
    while True:
        alive = [p for p in alive if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _signal(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child, so no zombie stays behind."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
