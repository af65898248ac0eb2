"""`foresight db retain` covers every table of the record on ClickHouse 18.16 (a scratch database):
old day partitions of access_events, metric_samples, features, predictions and decisions go, the
recent ones stay, and model_versions (a model may still serve) is never dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from infra.core.db import client, retain
from infra.core.settings import ClickHouseSettings

DAY_PARTITIONED = ["access_events", "decisions", "features", "metric_samples", "predictions"]




def test_retain_covers_every_record_table_and_spares_model_versions(scratch_db: ClickHouseSettings) -> None:
    today = datetime.now(UTC).date()
    db = scratch_db.database

    def noon(days_ago: int) -> datetime:  # midday UTC: the server's zone cannot move the day
        day = today - timedelta(days=days_ago)
        return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)

    cl = client(scratch_db)
    try:
        for age in (40, 0):
            ms = int(noon(age).timestamp() * 1000)
            cl.execute(f"INSERT INTO {db}.access_events (ts_ms, id, service, instance) VALUES", [(ms, "e", "r", "i")])
            cl.execute(f"INSERT INTO {db}.metric_samples (ts_ms, service, instance, name, value) VALUES",
                       [(ms, "r", "i", "up", 1.0)])
            cl.execute(f"INSERT INTO {db}.predictions (ts_ms, kind, service, instance, model, model_version, value)"
                       " VALUES", [(ms, "forecast", "r", "*", "m", "v1", 1.0)])
            cl.execute(f"INSERT INTO {db}.decisions (ts_ms, service, actuator, target, action, after, reason,"
                       " prediction_refs, dry_run, outcome) VALUES",
                       [(ms, "r", "scaler", "r", "scale", 2.0, "why", [], 0, "applied")])
            cl.execute(f"INSERT INTO {db}.features (window_start, window_end, service, instance, requests,"
                       " emitted_at) VALUES", [(noon(age), noon(age) + timedelta(seconds=10), "r", "*", 1, 1)])
        cl.execute(f"INSERT INTO {db}.model_versions VALUES", [("forecast", "v1", noon(400), "fp", "{}", "p")])

        dropped = retain(scratch_db, 30, today=today)
        assert dropped == [(table, str(today - timedelta(days=40))) for table in DAY_PARTITIONED]
        for table in DAY_PARTITIONED:
            assert cl.execute(f"SELECT count() FROM {db}.{table}") == [(1,)], table  # today's row stays
        assert cl.execute(f"SELECT count() FROM {db}.model_versions") == [(1,)]
        assert retain(scratch_db, 1, today=today + timedelta(days=5)) == [
            (table, str(today)) for table in DAY_PARTITIONED]
        assert cl.execute(f"SELECT version FROM {db}.model_versions") == [("v1",)]  # exempt, however old
    finally:
        cl.disconnect()
