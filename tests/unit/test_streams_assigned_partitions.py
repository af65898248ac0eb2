"""`foresight_stream_assigned_partitions`: what a worker consumes after each rebalance, 0 while one runs.
`ready` says the worker started; a second worker of a group is only of use once this is above 0 (the
integration test of two workers waits on it before sending)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from faust.types import TP

from infra.core.settings import KafkaSettings, StreamSettings
from streams.app import FeatureStream


@pytest.fixture
def stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FeatureStream:
    import infra.core.kafka_admin as kafka_admin

    # no broker here: the rest of the changelogs' last batches (read after each recovery) is none
    monkeypatch.setattr(kafka_admin, "read_last_batches", lambda kafka, partitions: {})
    return FeatureStream(StreamSettings(), KafkaSettings(bootstrap_servers="127.0.0.1:1"), sink=None,  # type: ignore[arg-type]
                         data_dir=tmp_path)


def assigned(stream: FeatureStream) -> float:
    return stream.metrics.registry.get_sample_value("foresight_stream_assigned_partitions") or 0.0


def settle_with(stream: FeatureStream, tps: set[TP]) -> None:
    """A rebalance as Faust signals it: revoked, assigned, then complete (tables recovered)."""
    stream.app.consumer = SimpleNamespace(assignment=lambda: tps)  # type: ignore[assignment]  # no broker here

    async def run() -> None:
        await stream._on_revoked(None, signal=None)
        assert assigned(stream) == 0  # during the rebalance
        await stream._on_assigned(None, tps, signal=None)  # tables not recovered yet
        assert assigned(stream) == 0
        await stream._on_settled(None, signal=None)
    asyncio.run(run())


def test_counts_the_input_partitions_only(stream: FeatureStream) -> None:
    changelog = stream.instance_table.changelog_topic.get_topic_name()
    partials = stream.partials.get_topic_name()
    settle_with(stream, {TP(stream.topic_access, 0), TP(stream.topic_access, 2), TP(stream.topic_metrics, 0),
                         TP(stream.topic_metrics, 2), TP(changelog, 0), TP(changelog, 2), TP(partials, 1)})
    assert assigned(stream) == 4


def test_a_rebalance_that_leaves_the_worker_nothing_says_0(stream: FeatureStream) -> None:
    settle_with(stream, {TP(topic, p) for topic in (stream.topic_access, stream.topic_metrics) for p in range(4)})
    assert assigned(stream) == 8
    settle_with(stream, set())  # a second worker joined and this one holds no partition (more workers than them)
    assert assigned(stream) == 0
