"""Faust's private consumer internals: the one place that touches them.

The stream worker needs, synchronously, the offsets the group has committed (the next record to
read) per partition: Faust keeps them in `Consumer._committed_offset` and publishes no accessor
(`seek_to_committed` moves the consumer; aiokafka's `committed` asks the broker, asynchronously).
That mapping also takes the offsets of a commit the broker refused (Faust updates it either way),
so the offsets the broker accepted are taken where Faust hands them to its tables, which it does
only for an accepted commit (`TableManager.on_commit`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from infra.core.internals import require

LIBRARY = "faust-streaming"


def committed_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """Committed offset per topic-partition as Faust last knew it (`.get(tp)`: None when unknown)."""
    committed: Mapping[Any, int | None] = getattr(consumer, "_committed_offset", {})
    return committed


def on_accepted_commits(app: Any, callback: Callable[[Mapping[Any, int]], None]) -> None:
    """Call `callback(offsets)` after each commit the broker accepted, before Faust's own handling."""
    tables = app.tables
    original = tables.on_commit

    def on_commit(offsets: Any) -> None:
        callback(offsets)
        original(offsets)

    tables.on_commit = on_commit


def check() -> None:
    """The installed Faust's consumer still keeps its committed offsets in a `_committed_offset` mapping."""
    import faust

    app = faust.App("foresight-compat-check", broker="kafka://127.0.0.1:1")  # builds, never connects
    consumer = app.consumer
    require(LIBRARY, hasattr(consumer, "_committed_offset"),
            f"{type(consumer).__qualname__} has no `_committed_offset`", __name__)
    require(LIBRARY, isinstance(committed_offsets(consumer), Mapping),
            "the consumer's `_committed_offset` is no longer a mapping", __name__)
    require(LIBRARY, callable(getattr(app.tables, "on_commit", None)),
            f"{type(app.tables).__qualname__} has no `on_commit` (called for accepted commits)", __name__)
