"""HAProxy runtime API over its unix socket or a TCP `stats socket`: server weights and dynamic
membership (add, drain, maintenance, delete; no reload). I/O only, no policy."""

from __future__ import annotations

import csv
import io
import socket
from pathlib import Path

from infra.core.settings import RuntimeAddress
from lb_adapters.actuators.base import ActuatorError


class HAProxyError(ActuatorError):
    pass


def parse_show_stat(text: str) -> list[dict[str, str]]:
    """Rows of `show stat` (CSV, header line starting `# pxname,svname,...`) as dicts by column name."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("# pxname")), None)
    if start is None:
        raise HAProxyError(f"unexpected answer to show stat: {text[:200]!r}")
    body = "\n".join([lines[start][2:], *(ln for ln in lines[start + 1:] if ln.strip())])
    return [{k: v for k, v in row.items() if k} for row in csv.DictReader(io.StringIO(body))]


def connect(address: RuntimeAddress, timeout_s: float) -> socket.socket:
    """A connected socket to the runtime API, unix or TCP; HAProxyError when nothing answers there."""
    try:
        if isinstance(address, Path):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout_s)
                sock.connect(str(address))
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection(address, timeout=timeout_s)
    except OSError as exc:
        where = address if isinstance(address, Path) else f"{address[0]}:{address[1]}"
        raise HAProxyError(f"cannot reach HAProxy runtime API at {where}: {exc}; is `foresight stack up` "
                           "running (or, over TCP, is HAProxy's `stats socket ipv4@...` there)?") from exc


class HAProxyRuntime:
    name = "haproxy"

    def __init__(self, address: RuntimeAddress, timeout_s: float = 3.0) -> None:
        """`address`: the unix socket's path, or (host, port) of a TCP `stats socket` (another pod's HAProxy)."""
        self.address = address
        self.timeout_s = timeout_s

    def command(self, line: str) -> str:
        """One runtime API command on a fresh connection (HAProxy closes it after answering)."""
        with connect(self.address, self.timeout_s) as sock:
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

    def server_stats(self, backend: str) -> dict[str, dict[str, str]]:
        """`show stat` of one backend's servers (scur, qcur, stot, hrsp_5xx, eresp, rtime, status, weight, ...),
        by server name; the FRONTEND/BACKEND summary rows are left out."""
        return {row["svname"]: row for row in parse_show_stat(self.command("show stat"))
                if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND")}

    def weights(self, backend: str) -> dict[str, int]:
        """Current user-visible weight of each server (`srv_uweight`)."""
        return {row["srv_name"]: int(row["srv_uweight"]) for row in self.servers_state(backend)}

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        answer = self.command(f"set server {backend}/{server} weight {weight}").strip()
        if answer:  # HAProxy answers nothing on success
            raise HAProxyError(f"set server {backend}/{server} weight {weight}: {answer}")

    # -- dynamic membership (HAProxy >= 2.6; the backend needs a dynamic algorithm such as roundrobin) --

    def _ok(self, line: str, *accepted: str) -> str:
        """Run a command that answers nothing (or one of `accepted`) on success; anything else is an error."""
        answer = self.command(line).strip()
        if answer and not any(a in answer for a in accepted):
            raise HAProxyError(f"{line}: {answer}")
        return answer

    def add_server(self, backend: str, server: str, address: str, port: int, weight: int,
                   check: bool = True, check_inter_ms: int = 1000) -> None:
        """`add server`, then enable its health check (the backend's `option httpchk`; checks of a
        dynamic server start disabled) and take it out of the maintenance it is born in."""
        checks = f" check inter {check_inter_ms}ms" if check else ""
        self._ok(f"add server {backend}/{server} {address}:{port} weight {weight}{checks}", "New server registered")
        if check:
            self._ok(f"enable health {backend}/{server}")
        self._ok(f"set server {backend}/{server} state ready")

    def servers(self, backend: str) -> dict[str, tuple[str, int, int, int]]:
        """Each server's (address, port, user weight, admin state bits: 0x01 maint, 0x08 drain)."""
        return {r["srv_name"]: (r["srv_addr"], int(r["srv_port"]), int(r["srv_uweight"]), int(r["srv_admin_state"]))
                for r in self.servers_state(backend)}

    def set_server_state(self, backend: str, server: str, state: str) -> None:
        """`ready`, `drain` (no new requests, current ones finish) or `maint`."""
        self._ok(f"set server {backend}/{server} state {state}")

    def del_server(self, backend: str, server: str, force: bool = False) -> bool:
        """Maintenance, then `del server`: True once gone (or never there).

        HAProxy refuses while the server has connections or a queue; then it stays in maintenance
        (it takes no new traffic) and the caller tries again later. `force` first shuts its
        sessions down, for when the wait has run out.
        """
        answer = self.command(f"set server {backend}/{server} state maint").strip()
        if "No such server" in answer:
            return True
        if force:
            self.command(f"shutdown sessions server {backend}/{server}")
        answer = self.command(f"del server {backend}/{server}").strip()
        return "Server deleted" in answer or "No such server" in answer
