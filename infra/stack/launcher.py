"""`foresight stack up | down | status`: the local stack's lifecycle.

`up` is idempotent: what already runs and answers is left alone, what died is started again.
Each component starts once the ones it needs answer; Kafka topics and ClickHouse migrations
are applied as soon as their server is ready, before the pipeline processes start.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from infra.core.db import migrate
from infra.core.kafka_admin import ensure_topics
from infra.core.settings import Settings
from infra.stack.components import Component, build_components
from infra.stack.process import PidFiles, ProcessRecord, spawn, stop


class StackError(RuntimeError):
    """A component could not start; the message names it and says what to do."""


@dataclass
class ComponentStatus:
    name: str
    state: str  # up | unhealthy | down | stopped
    pid: int | None
    address: str
    log: str

    def as_dict(self) -> dict[str, object]:
        return self.__dict__.copy()


Say = Callable[[str], None]


def pid_files(s: Settings) -> PidFiles:
    return PidFiles(s.state / "run")


def child_env(s: Settings, config: Path | None) -> dict[str, str]:
    """The environment of our Python children: same settings, absolute state folder."""
    env = dict(os.environ)
    env["FORESIGHT_STATE_DIR"] = str(s.state)
    if config is not None:
        env["FORESIGHT_CONFIG"] = str(config.resolve())
    elif Path("foresight.toml").is_file():
        env["FORESIGHT_CONFIG"] = str(Path("foresight.toml").resolve())
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def port_owner(port: int, kind: int = socket.SOCK_STREAM) -> str | None:
    """None when `port` is free on loopback, else a description of who holds it."""
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return None
        except OSError:
            pass
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"{proc.name()} (pid {conn.pid})"
    except psutil.Error:
        pass
    return "another process"


def _check_startable(c: Component) -> None:
    if shutil.which(c.binary) is None and not Path(c.binary).is_file():
        hint = f" Install it: {c.install_hint}." if c.install_hint else ""
        raise StackError(f"{c.name}: binary {c.binary!r} not found.{hint} `foresight doctor` checks everything.")
    for port, kind in [(p, socket.SOCK_STREAM) for p in c.tcp_ports] + [(p, socket.SOCK_DGRAM) for p in c.udp_ports]:
        owner = port_owner(port, kind)
        if owner:
            proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
            raise StackError(
                f"{c.name}: {proto} port {port} is taken by {owner}. Stop it, or move {c.name} to another "
                f"port in foresight.toml / FORESIGHT_* (see README, Configuration)."
            )


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def bootstrap(name: str, s: Settings, say: Say) -> None:
    """What a freshly ready server needs before the pipeline uses it (both steps are idempotent)."""
    if name == "kafka":
        created = ensure_topics(s.kafka)
        if created:
            say(f"kafka: created topics {', '.join(created)}")
    elif name == "clickhouse":
        applied = migrate(s.clickhouse)
        if applied:
            say(f"clickhouse: applied migrations {', '.join(applied)}")


def ensure_token(s: Settings, say: Say) -> Path | None:
    """The stack's API token file: created (random, mode 0600) unless there or `auth.anonymous`."""
    if s.auth.anonymous:
        say("auth: anonymous (auth.anonymous = true): serving and ingest HTTP take requests without a token")
        return None
    path = s.token_file
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise StackError(f"{path} must be a file of ours with mode 0600 (it is {stat.S_IMODE(info.st_mode):04o}, "
                             f"uid {info.st_uid}): remove it and run `stack up` again") from None
        s.use_stack_token()
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32))
    s.use_stack_token()  # this process's clients (demo, tests) use it too
    say(f"auth: wrote a new API token to {path} (mode 0600); the CLI and components read it from there")
    return path


def with_needs(components: list[Component], names: set[str]) -> list[Component]:
    """`components` (in start order) limited to `names` and what they need, transitively."""
    by_name = {c.name: c for c in components}
    unknown = names - set(by_name)
    if unknown:
        raise StackError(f"no component named {', '.join(sorted(unknown))}; the stack has {', '.join(by_name)}")
    wanted, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += by_name[name].needs
    return [c for c in components if c.name in wanted]


def up(s: Settings, say: Say, config: Path | None = None, only: set[str] | None = None) -> dict[str, float]:
    """Start what is not running (of `only` and what they need, when given); seconds-to-ready per component."""
    ensure_token(s, say)
    files = pid_files(s)
    components = build_components(s)
    if only is not None:
        components = with_needs(components, only)
    env = child_env(s, config)
    t0 = time.monotonic()
    ready: set[str] = set()
    waiting: dict[str, tuple[Component, ProcessRecord, float]] = {}
    timings: dict[str, float] = {}

    for c in components:
        record = files.read(c.name)
        if record and record.process() and c.probe():
            ready.add(c.name)
            say(f"{c.name}: already running (pid {record.pid})")
            bootstrap(c.name, s, say)
        elif record and record.process():
            stop(record)  # alive but not answering: restart it rather than guess
            files.remove(c.name)

    pending = [c for c in components if c.name not in ready]
    while pending or waiting:
        for c in [c for c in pending if all(n in ready for n in c.needs)]:
            _check_startable(c)
            c.prepare()
            record = spawn(c.name, c.argv, s.state / "logs" / f"{c.name}.log", env, cwd=s.state)
            files.write(record)
            waiting[c.name] = (c, record, time.monotonic())
            pending.remove(c)
        for name, (c, record, started) in list(waiting.items()):
            if record.process() is None:
                raise StackError(f"{name}: exited during start-up. "
                                 f"Last lines of {record.log}:\n{_log_tail(record.log)}")
            if c.probe():
                timings[name] = time.monotonic() - started
                ready.add(name)
                del waiting[name]
                say(f"{name}: ready in {timings[name]:.1f} s")
                bootstrap(name, s, say)
            elif time.monotonic() - started > c.ready_timeout_s:
                raise StackError(f"{name}: not answering after {c.ready_timeout_s:.0f} s. "
                                 f"Last lines of {record.log}:\n{_log_tail(record.log)}")
        time.sleep(0.2)
    timings["total"] = time.monotonic() - t0
    return timings


def down(s: Settings, say: Say) -> list[str]:
    """Stop, in reverse start order, every process a pid file names; returns their names."""
    files = pid_files(s)
    order = [c.name for c in build_components(s)]
    names = files.names()
    names.sort(key=lambda n: -order.index(n) if n in order else 1)
    stopped = []
    for name in names:
        record = files.read(name)
        if record and record.process():
            killed = stop(record)
            note = f" (had to SIGKILL {len(killed)})" if killed else ""
            say(f"{name}: stopped{note}")
            stopped.append(name)
        files.remove(name)
    return stopped


def status(s: Settings) -> list[ComponentStatus]:
    files = pid_files(s)
    out = []
    for c in build_components(s):
        record = files.read(c.name)
        proc = record.process() if record else None
        if record is None:
            state = "stopped"
        elif proc is None:
            state = "down"
        else:
            state = "up" if c.probe() else "unhealthy"
        out.append(ComponentStatus(c.name, state, record.pid if proc and record else None, c.address,
                                   record.log if record else ""))
    return out
