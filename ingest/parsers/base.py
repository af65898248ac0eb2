"""What every access-log parser shares: its result type, its call shape, ids and rejections.

A parser turns one raw log line into an `AccessEvent` or a typed `Rejection` and never raises,
so one bad line cannot stop a source; later formats plug in by matching `LineParser`.
"""

from __future__ import annotations

import time
from typing import Protocol

import xxhash

from ingest.schemas import AccessEvent, Rejection, truncate_raw

ParseResult = AccessEvent | Rejection


class LineParser(Protocol):
    source: str

    def __call__(self, raw: bytes | str, received_ms: int | None = None) -> ParseResult: ...


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def event_id(message: bytes) -> str:
    """Same message bytes, same id: a re-read or re-sent line is dropped downstream as a duplicate.

    128-bit XXH3 (32 hex chars): collisions are negligible at any log volume, and it costs a
    quarter of blake2b's time, which showed as a tenth of a parse.
    """
    return xxhash.xxh3_128_hexdigest(message)


def reject(source: str, reason: str, detail: str, raw: bytes | str, received_ms: int | None) -> Rejection:
    return Rejection(
        source=source,
        reason=reason,
        detail=detail,
        raw=truncate_raw(raw),
        ts_received=now_ms() if received_ms is None else received_ms,
    )
