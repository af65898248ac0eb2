"""The real local stack, started once per test session and stopped at its end.

A stack that was already running before the session (a developer's, perhaps shared by several
checkouts) is completed if parts are missing and left running: only a stack this session started
from nothing is stopped at its end.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from infra.core.settings import ClickHouseSettings, Settings, load_settings
from infra.stack.launcher import status


def foresight(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"foresight {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    settings = load_settings()
    states = [c.state for c in status(settings)]
    if any(state != "up" for state in states):
        foresight("stack", "up")
        settings = load_settings()  # with the API token `stack up` may have just written
    try:
        yield settings
    finally:
        if "up" not in states:
            foresight("stack", "down")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def core_stack() -> Settings:
    """Only the stack's Kafka and ClickHouse, started when down and never stopped. Unlike `stack`, a
    running stack is not completed: a component this checkout adds would otherwise join a shared
    stack, run from this checkout's code."""
    from infra.stack import probes

    settings = load_settings()
    ch = settings.clickhouse
    answering = (probes.kafka_metadata(settings.kafka)()
                 and probes.http_ok(f"http://{ch.host}:{ch.http_port}/?query=SELECT%201", expect="1")())
    if not answering:  # asked of the servers themselves: the state folder may be another checkout's
        foresight("stack", "up")
    return settings


@pytest.fixture
def scratch_db(core_stack: Settings) -> Iterator[ClickHouseSettings]:
    """A migrated ClickHouse database of this test's own on the stack's server, dropped afterwards."""
    import uuid

    from infra.core.db import client, migrate

    ch = core_stack.clickhouse.model_copy(update={"database": f"foresight_test_{uuid.uuid4().hex[:10]}"})
    migrate(ch)
    try:
        yield ch
    finally:
        cl = client(ch)
        cl.execute(f"DROP DATABASE IF EXISTS {ch.database}")
        cl.disconnect()
