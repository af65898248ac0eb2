"""What ingest emits: the `fs.access`, `fs.metrics` and `fs.dlq` message contracts (v1).

Every downstream stage imports these; a record on `fs.access` holds either one event or a batch
envelope `{"v": 1, "count": N, "events": [...]}` of events sharing the record's key.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

SCHEMA_VERSION = 1
RAW_LIMIT = 2048  # bytes of rejected input kept in a dead-letter record


class AccessEvent(BaseModel):
    v: Literal[1] = 1
    id: str = Field(description="Stable id: downstream drops duplicates by it.")
    ts: int = Field(description="Event time, epoch milliseconds UTC.")
    service: str
    instance: str
    method: str
    route: str
    status: int = Field(ge=0, le=999)
    latency_ms: float = Field(ge=0)
    bytes_sent: int = Field(ge=0)
    source: str = Field(description="Which parser/source produced it, e.g. `haproxy`.")

    @property
    def key(self) -> str:
        return f"{self.service}/{self.instance}"


class MetricSample(BaseModel):
    v: Literal[1] = 1
    ts: int
    service: str
    instance: str
    name: str
    value: float
    labels: dict[str, str] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.service}/{self.instance}"


class Rejection(BaseModel):
    """Input that could not become an event, kept with the reason on `fs.dlq`."""

    v: Literal[1] = 1
    source: str
    reason: str = Field(description="Short machine-friendly reason, e.g. `bad_status`.")
    detail: str = ""
    raw: str = Field(description=f"The input, truncated to {RAW_LIMIT} bytes, undecodable bytes escaped.")
    ts_received: int


def truncate_raw(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw[:RAW_LIMIT].decode("utf-8", "backslashreplace")
    return raw[:RAW_LIMIT]


_fields_of = attrgetter("__dict__")


def encode_batch(items: list[AccessEvent] | list[MetricSample]) -> bytes:
    """One Kafka record for several events (or metric samples) of the same key; a lone one is sent bare.

    Hot path: orjson over each model's `__dict__` (its fields, in declaration order) writes the same
    JSON as `model_dump_json`, several times faster; events come from parsers, already validated.
    """
    if len(items) == 1:
        return orjson.dumps(items[0].__dict__)
    return orjson.dumps({"v": SCHEMA_VERSION, "count": len(items), "events": list(map(_fields_of, items))})



def decode_access_record(value: bytes) -> list[dict[str, Any]]:
    """Events of one `fs.access` (or samples of one `fs.metrics`) record, single or batch, as plain dicts."""
    obj = orjson.loads(value)
    if "events" in obj:
        events: list[dict[str, Any]] = obj["events"]
        return events
    return [obj]
