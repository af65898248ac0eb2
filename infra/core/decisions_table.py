"""Reader of ClickHouse `decisions` shared by the stages: what a controller actually did.

The writer is the `DecisionSink` (lb_adapters); readers (what-if replay in training, `foresight
decisions`) need only the table, so the query lives in the foundation like `features_table`.
"""

from __future__ import annotations

from dataclasses import dataclass

from clickhouse_driver import Client

SCALER = "scaler"
SCALE = "scale"


@dataclass(frozen=True)
class ScaleDecision:
    """A replica count a controller set: `after` replicas from `ts_ms` on (`before` what it found)."""

    ts_ms: int
    before: float | None
    after: float
    reason: str
    outcome: str


def read_scale_decisions(client: Client, database: str, service: str, start_s: int, end_s: int) -> list[ScaleDecision]:
    """`service`'s scaler decisions (not dry runs, not failed) in [start_s, end_s), oldest first, plus the
    newest one before start_s, which says how many replicas there were when the range began."""
    where = (f"FROM {database}.decisions WHERE service = %(service)s AND actuator = %(actuator)s "
             "AND action = %(action)s AND dry_run = 0 AND isNotNull(after) AND outcome NOT LIKE 'failed%%'")
    params = {"service": service, "actuator": SCALER, "action": SCALE, "start": start_s * 1000, "end": end_s * 1000}
    before = client.execute(f"SELECT ts_ms, before, after, reason, outcome {where} AND ts_ms < %(start)s "
                            "ORDER BY ts_ms DESC LIMIT 1", params)
    inside = client.execute(f"SELECT ts_ms, before, after, reason, outcome {where} AND ts_ms >= %(start)s "
                            "AND ts_ms < %(end)s ORDER BY ts_ms", params)
    return [ScaleDecision(int(t), None if b is None else float(b), float(a), str(r), str(o))
            for t, b, a, r, o in [*before, *inside]]
