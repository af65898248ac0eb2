"""HAProxy runtime API over its unix socket: read and set server weights. I/O only, no policy."""

from __future__ import annotations

import socket
from pathlib import Path

from lb_adapters.actuators.base import ActuatorError


class HAProxyError(ActuatorError):
    pass


class HAProxyRuntime:
    name = "haproxy"

    def __init__(self, socket_path: Path, timeout_s: float = 3.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def command(self, line: str) -> str:
        """One runtime API command on a fresh connection (HAProxy closes it after answering)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(str(self.socket_path))
            except OSError as exc:
                raise HAProxyError(f"cannot reach HAProxy runtime API at {self.socket_path}: {exc}; "
                                   "is `foresight stack up` running?") from exc
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def servers_state(self, backend: str) -> list[dict[str, str]]:
        """Rows of `show servers state <backend>` as dicts keyed by HAProxy's column names."""
        text = self.command(f"show servers state {backend}")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        header = next((ln for ln in lines if ln.startswith("# be_id")), None)
        if header is None:
            raise HAProxyError(f"unexpected answer to show servers state: {text[:200]!r}")
        columns = header[2:].split()
        return [dict(zip(columns, ln.split(), strict=False)) for ln in lines if not ln.startswith("#")
                and len(ln.split()) >= len(columns) - 1]

    def weights(self, backend: str) -> dict[str, int]:
        """Current user-visible weight of each server (`srv_uweight`)."""
        return {row["srv_name"]: int(row["srv_uweight"]) for row in self.servers_state(backend)}

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        answer = self.command(f"set server {backend}/{server} weight {weight}").strip()
        if answer:  # HAProxy answers nothing on success
            raise HAProxyError(f"set server {backend}/{server} weight {weight}: {answer}")
