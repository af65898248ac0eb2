"""`stack status` tells the truth about each process, and `up` repairs without duplicating."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from infra.core.settings import Settings
from infra.stack.launcher import pid_files

from .conftest import foresight


def states() -> dict[str, dict[str, object]]:
    out = foresight("stack", "status", "--json", check=False)
    return {row["name"]: row for row in json.loads(out.stdout)}


def test_up_twice_is_harmless(stack: Settings) -> None:
    before = {name: row["pid"] for name, row in states().items()}
    assert all(pid for pid in before.values()), before
    foresight("stack", "up")
    after = {name: row["pid"] for name, row in states().items()}
    assert after == before


@pytest.mark.parametrize("component", ["etcd", "backend-s2", "stream-worker"])
def test_killed_component_is_named_down_and_up_restarts_it(stack: Settings, component: str) -> None:
    record = pid_files(stack).read(component)
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(record.pid) and record.process() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    out = foresight("stack", "status", "--json", check=False)
    assert out.returncode == 1
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows[component]["state"] == "down"
    assert all(row["state"] == "up" for name, row in rows.items() if name != component)
    foresight("stack", "up")
    assert states()[component]["state"] == "up"
