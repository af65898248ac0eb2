"""Changelog values stamped with their writer's epoch, so a fenced-out worker cannot win a recovery.

A worker the group expelled (it missed its heartbeats: paused, starved, a long rebalance callback)
does not know it until its next heartbeat, and meanwhile keeps folding records of partitions the
group already gave to another worker, writing their states to the same changelog partitions. The
new owner does not see those writes at once (it recovered before them), but reads them on its next
recovery, where the changelog's rule is "last write wins": the zombie's older state would replace
the owner's newer one, and the records between the two would be counted by neither.

So each value carries an epoch: the wall-clock ms when its writer took its assignment, raised above
every epoch it recovered (a Lamport clock). A new owner's epoch is above the zombie's: it recovered
whatever the zombie wrote before, and was assigned after the group expelled the zombie, a session
timeout after the zombie's last heartbeat (for a partition the zombie had not written yet, this assumes
the hosts' clocks agree within that). On recovery a value replaces the one held only if its epoch is
not lower. Deletions (tombstones) always apply: only an idle instance or a long-retired window is
deleted, by whichever worker holds it.

A value is `b"<epoch>|" + payload`; a value without the prefix (written before) has epoch 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import Any

import faust

SEPARATOR = b"|"


def changelog_event(key: bytes | None, value: bytes | None, partition: int = 0) -> Any:
    """A changelog record shaped as Faust's recovery hands one to a table's store (only the fields `fenced`
    and the store read), for records read outside that recovery."""
    return SimpleNamespace(key=key, value=value, message=SimpleNamespace(value=value, partition=partition))


def stamp(epoch: int, payload: bytes) -> bytes:
    return b"%d|" % epoch + payload


def _as_bytes(raw: bytes | str) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw


def unstamp(raw: bytes | str) -> tuple[int, bytes]:
    """(epoch, payload); epoch 0 for a value written before stamps."""
    raw = _as_bytes(raw)
    if raw[:1].isdigit():
        head, sep, payload = raw.partition(SEPARATOR)
        if sep and head.isdigit():
            return int(head), payload
    return 0, raw


def payload(raw: bytes | str) -> bytes:
    return unstamp(raw)[1]


def epoch_of(raw: bytes | str | None) -> int:
    """The epoch alone, without copying the payload; -1 for a missing value."""
    if raw is None:
        return -1
    raw = _as_bytes(raw)
    head = raw[:24].partition(SEPARATOR)[0]
    return int(head) if head.isdigit() and raw[:1].isdigit() else 0


def highest_epoch(values: Iterable[bytes | str]) -> int:
    return max((epoch_of(v) for v in values), default=0)


def fenced(batch: Iterable[Any], held: Mapping[Any, Any], to_key: Any = lambda k: k) -> list[Any]:
    """The changelog events that may apply, in order: each value whose epoch is not below the one that
    stands for its key by then (what `held` has, or an earlier event of the batch); every tombstone."""
    standing: dict[Any, int] = {}
    out = []
    for event in batch:
        key = to_key(event.key)
        if event.message.value is None:
            standing[key] = -1
            out.append(event)
            continue
        epoch = epoch_of(event.value)  # decoded as the table decodes it (the message may be serialized)
        current = standing[key] if key in standing else epoch_of(held.get(key))
        if epoch >= current:
            standing[key] = epoch
            out.append(event)
    return out


class FencedTable(faust.Table):
    """A Faust table whose changelog recovery keeps, per key, the value of the newest epoch."""

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        super().apply_changelog_batch(fenced(batch, self.data, self._to_key))
