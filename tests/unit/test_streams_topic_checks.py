"""The stream worker asks the broker for its topics only after a sign that they may be gone (a rebalance,
a restarted log, a refused changelog write or send) and once a TOPICS_BACKSTOP_S otherwise; not every
TOPICS_EVERY_S through a new admin client for its whole life."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from infra.core import kafka_admin
from infra.core.settings import KafkaSettings, StreamSettings
from streams.app import TOPICS_BACKSTOP_S, FeatureStream


class Checks:
    """Stands in for `ensure_topics`: counts the checks; fails while `failing`."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.failing = False

    def __call__(self, kafka: KafkaSettings, extra: dict[str, Any] | None = None) -> list[str]:
        self.calls.append(dict(extra or {}))
        if self.failing:
            raise ConnectionError("broker away")
        return []


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Checks:
    fake = Checks()
    monkeypatch.setattr(kafka_admin, "ensure_topics", fake)
    return fake


@pytest.fixture
def stream(tmp_path: Path) -> FeatureStream:
    return FeatureStream(StreamSettings(), KafkaSettings(bootstrap_servers="127.0.0.1:1"), sink=None,  # type: ignore[arg-type]
                         data_dir=tmp_path)


def ticks(stream: FeatureStream, n: int) -> None:
    async def run() -> None:
        for _ in range(n):
            await stream._ensure_topics()
    asyncio.run(run())


def test_no_sign_no_check(stream: FeatureStream, checks: Checks) -> None:
    ticks(stream, 30)  # a minute of ticks at TOPICS_EVERY_S: the old loop opened 30 admin clients
    assert checks.calls == []


def test_a_sign_checks_once_including_the_workers_own_topics(stream: FeatureStream, checks: Checks) -> None:
    stream._doubt_topics("a test")
    ticks(stream, 5)
    assert len(checks.calls) == 1
    assert stream.partials.get_topic_name() in checks.calls[0]
    assert stream.instance_table.changelog_topic.get_topic_name() in checks.calls[0]


def test_a_failed_check_is_tried_again_until_it_succeeds(stream: FeatureStream, checks: Checks) -> None:
    stream._doubt_topics("a test")
    checks.failing = True
    ticks(stream, 3)
    checks.failing = False
    ticks(stream, 3)
    assert len(checks.calls) == 4  # three failures, one success, then quiet


def test_the_backstop_checks_without_a_sign(stream: FeatureStream, checks: Checks) -> None:
    stream._topics_checked_at = time.monotonic() - TOPICS_BACKSTOP_S - 1
    ticks(stream, 3)
    assert len(checks.calls) == 1


def test_a_rebalance_is_a_sign(stream: FeatureStream, checks: Checks) -> None:
    asyncio.run(stream._on_revoked(None, signal=None))
    ticks(stream, 2)
    assert len(checks.calls) == 1


def test_a_refused_changelog_write_is_a_sign(stream: FeatureStream, checks: Checks) -> None:
    class Table:
        data = {b"k": b"v"}

        def send_changelog(self, partition: int, key: bytes, value: bytes | None, **_: Any) -> Any:
            async def ok() -> None:
                return None
            return ok()

    async def refused() -> None:
        raise ConnectionError("UnknownTopicOrPartition")

    async def run() -> None:
        await stream._durable(Table(), 0, b"k", refused())  # retried once, then accepted
        await stream._ensure_topics()
        await stream._ensure_topics()

    asyncio.run(run())
    assert len(checks.calls) == 1
