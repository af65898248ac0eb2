"""Real processes (sh and sleep), no servers: `stop` must leave nothing behind."""

import os
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from infra.core.settings import load_settings
from infra.stack.components import Component
from infra.stack.launcher import StackError, _check_startable
from infra.stack.process import PidFiles, spawn, stop


def test_stop_kills_the_whole_tree_including_escaped_children(tmp_path: Path) -> None:
    # The grandchild starts its own session, as Ray's raylet does: killpg alone would miss it.
    script = ("import subprocess, time; "
              "subprocess.Popen(['sleep', '300'], start_new_session=True); "
              "subprocess.Popen(['sleep', '300']); time.sleep(300)")
    record = spawn("tree", [sys.executable, "-c", script], tmp_path / "tree.log", dict(os.environ), tmp_path)
    deadline = time.monotonic() + 10
    proc = psutil.Process(record.pid)
    while len(proc.children(recursive=True)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    family = [proc, *proc.children(recursive=True)]
    assert len(family) == 3
    stop(record, timeout_s=5)
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert record.process() is None


def test_pid_record_does_not_match_a_recycled_pid(tmp_path: Path) -> None:
    record = spawn("s", ["sleep", "30"], tmp_path / "s.log", dict(os.environ), tmp_path)
    files = PidFiles(tmp_path)
    files.write(record)
    again = files.read("s")
    assert again is not None and again.process() is not None
    forged = type(record)(**{**record.__dict__, "create_time": record.create_time - 100})
    assert forged.process() is None  # same pid, other start time: not ours
    stop(record)
    assert files.read("s") is not None and record.process() is None


def test_taken_port_is_reported_with_component_and_fix(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        comp = Component(name="kafka", argv=["sh"], probe=lambda: True, address="", tcp_ports=[port])
        with pytest.raises(StackError, match=rf"kafka: tcp port {port} is taken by .*foresight.toml"):
            _check_startable(comp)


def test_missing_binary_names_component_and_install_hint() -> None:
    comp = Component(name="clickhouse", argv=["/nonexistent/clickhouse-server"], probe=lambda: True, address="",
                     install_hint="apt-get install clickhouse-server")
    with pytest.raises(StackError, match=r"clickhouse: binary .* not found\. Install it: apt-get install"):
        _check_startable(comp)


def test_every_component_has_a_distinct_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from infra.stack.components import build_components

    monkeypatch.chdir(tmp_path)
    ports = [p for c in build_components(load_settings()) for p in c.tcp_ports]
    assert len(ports) == len(set(ports))
