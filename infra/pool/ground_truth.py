"""The ground truth of a fault scenario in ClickHouse `fault_events`, written by the faulty instance
itself once it is ready (the scenario's clock starts then, so only it knows the wall times)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infra.core.db import client
from infra.core.settings import ClickHouseSettings
from infra.pool.faults import Fault, Scenario

COLUMNS = ("start_ms", "scenario", "seed", "service", "instance", "kind", "full_ms", "end_ms", "failure_ms", "params")


def fault_rows(scenario: Scenario, faults: Sequence[Fault], service: str, instance: str,
               ready_ms: int) -> list[tuple[Any, ...]]:
    def at(seconds: float | None) -> int | None:
        return None if seconds is None else ready_ms + round(seconds * 1000)

    rows = []
    for f in faults:
        end = None if f.duration_s is None else f.start_s + f.ramp_s + f.duration_s
        rows.append((at(f.start_s), scenario.name, -1 if scenario.seed is None else scenario.seed, service, instance,
                     f.kind, at(f.start_s + f.ramp_s), at(end), at(f.failure_s()),
                     f.model_dump_json(exclude={"instance", "kind", "start_s"})))
    return rows


def record_faults(ch: ClickHouseSettings, rows: Sequence[tuple[Any, ...]]) -> None:
    if not rows:
        return
    cl = client(ch, ch.database)
    try:
        cl.execute(f"INSERT INTO {ch.database}.fault_events ({', '.join(COLUMNS)}) VALUES", list(rows))
    finally:
        cl.disconnect()
