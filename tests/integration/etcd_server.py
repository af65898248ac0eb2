"""A throwaway etcd on free loopback ports, for tests that stop and restart etcd (never the stack's)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from infra.core.ports import free_ports


class EtcdServer:
    """Single-member etcd under `data_dir`; `stop()` and `start()` again keep its data (same ports)."""

    def __init__(self, data_dir: Path) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd not on PATH: apt-get install etcd-server")
        self.binary, self.data_dir = binary, data_dir
        first = free_ports(2)
        self.client_port, self.peer_port = first, first + 1
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> EtcdServer:
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = (self.data_dir.parent / f"etcd-{self.client_port}.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "--name", "t", "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"t={peer}"], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited {self.proc.returncode}; see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).json().get("health") == "true":
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"etcd at {self.url} not healthy within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
