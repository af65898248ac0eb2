"""Pure parts of the decision record: what a publish writes, how refs point at predictions and are
read back, and how `--since`/`--from` times are read."""

from __future__ import annotations

import orjson
import pytest
import typer

from infra.cli import parse_time_ms
from infra.core.record_tables import PredictionRef, parse_ref
from lb_adapters.decision_log import CH_DECISIONS, CH_PREDICTIONS, DECISION_COLUMNS, prediction_refs, records_of
from lb_adapters.schemas import Decision, PredictionRecord


def decision(target: str, ref: str = "latency@v3") -> Decision:
    return Decision(ts=1_000, service="web", actuator="haproxy", target=target, action="set_weight", before=None,
                    after=10.0, reason="r", prediction_ref=ref)


PREDS = [PredictionRecord(ts=999, kind="weights", service="web", instance=i, model="latency", model_version="v3",
                          value=v) for i, v in (("s1", 1.0), ("s2", 2.0), ("*", 3.0))]


def test_a_decision_points_at_the_predictions_of_its_instance_and_its_service() -> None:
    assert prediction_refs(decision("web/s1"), PREDS) == sorted([PREDS[0].ref(), PREDS[2].ref()])
    assert prediction_refs(decision("web/s9"), PREDS) == [PREDS[2].ref()]
    assert prediction_refs(decision("web/s1"), []) == ["latency@v3"]  # nothing published with it: its own ref
    assert prediction_refs(decision("web/s1", ref=""), []) == []


def test_refs_parse_back_into_the_prediction_key() -> None:
    p = PredictionRecord(ts=1_764_300_000_123, kind="forecast", service="a/b", instance="i-1", model="mlp",
                         model_version="20261130T000000Z-ab12", value=1.0)
    assert parse_ref(p.ref()) == PredictionRef("forecast", "a/b", "i-1", "mlp", "20261130T000000Z-ab12",
                                               1_764_300_000_123)
    assert parse_ref("latency@v3") is None


def test_a_publish_writes_decisions_to_kafka_first_then_the_rows() -> None:
    records = records_of("fs.decisions", [decision("web/s1"), decision("web/s2")], PREDS)
    assert [t for t, _, _ in records] == ["fs.decisions", "fs.decisions", CH_DECISIONS, CH_PREDICTIONS]
    assert records[0][1] == b"web" and orjson.loads(records[0][2])["target"] == "web/s1"
    rows = [dict(zip(DECISION_COLUMNS, r, strict=True)) for r in orjson.loads(records[2][2])]
    assert [r["prediction_refs"] for r in rows] == [prediction_refs(decision(t), PREDS) for t in ("web/s1", "web/s2")]
    assert len(orjson.loads(records[3][2])) == 3
    assert records_of("fs.decisions", [], []) == []


def test_times_for_since_and_from() -> None:
    assert parse_time_ms("1995-07-01T00:00:00", option="--since") == 804_556_800_000  # UTC unless it says
    assert parse_time_ms("1995-07-01T02:00:00+02:00", option="--since") == 804_556_800_000
    assert parse_time_ms("804556800", option="--since") == 804_556_800_000
    assert parse_time_ms("804556800000", option="--since") == 804_556_800_000
    assert parse_time_ms("15m", option="--since", now_s=10_000.0) == (10_000 - 900) * 1000
    assert parse_time_ms("1.5h", option="--since", now_s=10_000.0) == (10_000 - 5_400) * 1000
    with pytest.raises(typer.BadParameter, match="ISO time"):
        parse_time_ms("yesterday", option="--since")
