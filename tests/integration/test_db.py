"""Migrations and retention against the real ClickHouse 18.16 of the local stack.

Retention runs in a scratch database: on the stack's own database it would also drop whatever
old partitions other tests or a replay left there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from infra.core.db import client, load_migrations, migrate, retain
from infra.core.settings import ClickHouseSettings, Settings

TABLES = {"access_events", "decisions", "fault_events", "features", "metric_samples", "model_versions",
          "predictions"}


@pytest.fixture
def scratch(stack: Settings) -> Iterator[ClickHouseSettings]:
    ch = stack.clickhouse.model_copy(update={"database": f"foresight_test_db_{os.getpid()}"})
    cl = client(ch)
    cl.execute(f"DROP DATABASE IF EXISTS {ch.database}")
    try:
        yield ch
    finally:
        cl.execute(f"DROP DATABASE IF EXISTS {ch.database}")
        cl.disconnect()


def _tables(ch: ClickHouseSettings) -> set[str]:
    cl = client(ch)
    try:
        return {r[0] for r in cl.execute("SELECT name FROM system.tables WHERE database = %(db)s", {"db": ch.database})}
    finally:
        cl.disconnect()


def test_server_is_18_16(stack: Settings) -> None:
    cl = client(stack.clickhouse)
    try:
        assert cl.execute("SELECT version()")[0][0].startswith("18.16")
    finally:
        cl.disconnect()


def test_stack_database_has_every_table(stack: Settings) -> None:
    migrate(stack.clickhouse)  # a stack started before a new migration existed catches up; else a no-op
    assert migrate(stack.clickhouse) == []
    assert _tables(stack.clickhouse) >= TABLES


def test_migrations_apply_once(scratch: ClickHouseSettings) -> None:
    shipped = load_migrations(scratch.database)
    assert migrate(scratch) == [m.name for m in shipped]
    assert migrate(scratch) == []
    cl = client(scratch)
    try:
        recorded = cl.execute(f"SELECT version, name FROM {scratch.database}.schema_migrations ORDER BY version")
    finally:
        cl.disconnect()
    assert recorded == [(m.version, m.name) for m in shipped]
    assert _tables(scratch) == TABLES | {"schema_migrations"}


def test_retain_drops_old_day_partitions(scratch: ClickHouseSettings) -> None:
    migrate(scratch)
    today = datetime.now(UTC).date()

    def noon_ms(days_ago: int) -> int:  # midday UTC, so the server's time zone cannot move the day
        day = today - timedelta(days=days_ago)
        return int(datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp() * 1000)

    cl = client(scratch)
    try:
        cl.execute(f"INSERT INTO {scratch.database}.metric_samples (ts_ms, service, instance, name, value) VALUES",
                   [(noon_ms(age), "ret", "i", "age", float(age)) for age in (40, 40, 30, 0, 0)])
        cl.execute(f"INSERT INTO {scratch.database}.decisions (ts_ms, service, actuator, target, action, before,"
                   " after, reason, prediction_refs, dry_run, outcome) VALUES",
                   [(noon_ms(35), "ret", "haproxy", "ret/i", "set_weight", None, 10.0, "", [], 1, "")])
        cl.execute(f"INSERT INTO {scratch.database}.model_versions VALUES",
                   [("load", "v1", datetime(2020, 1, 1), "fp", "{}", "p")])

        old_day = str(today - timedelta(days=40))
        assert retain(scratch, 30, today=today) == [
            ("decisions", str(today - timedelta(days=35))), ("metric_samples", old_day)]
        ages = cl.execute(f"SELECT value, count() FROM {scratch.database}.metric_samples GROUP BY value ORDER BY value")
        assert ages == [(0.0, 2), (30.0, 1)]
        assert cl.execute(f"SELECT count() FROM {scratch.database}.decisions") == [(0,)]
        assert cl.execute(f"SELECT count() FROM {scratch.database}.model_versions") == [(1,)]  # never day-dropped
        partitions = {r[0] for r in cl.execute("SELECT partition FROM system.parts WHERE active AND database ="
                                               " %(db)s AND table = 'metric_samples'", {"db": scratch.database})}
        assert old_day not in partitions and str(today) in partitions

        assert retain(scratch, 30, today=today) == []
        assert retain(scratch, 1, today=today) == [("metric_samples", str(today - timedelta(days=30)))]
        assert cl.execute(f"SELECT count() FROM {scratch.database}.metric_samples") == [(2,)]
    finally:
        cl.disconnect()


def test_final_over_hundreds_of_small_parts_stays_within_the_memory_limit(scratch: ClickHouseSettings) -> None:
    """18.16 gives every column of every part a read buffer; with its 1 MiB default, `SELECT * ... FINAL`
    over 400 one-row parts needs ~10 GiB and fails. `infra.core.db.client` sets a small buffer."""
    migrate(scratch)
    cl = client(scratch)
    day0 = datetime(1995, 7, 1, tzinfo=UTC)
    cl.execute(f"SYSTEM STOP MERGES {scratch.database}.features")
    try:
        for i in range(400):  # one part each, spread over 60 day partitions, as windows written when they close
            start = int((day0 + timedelta(days=i % 60, seconds=10 * i)).timestamp() * 1000)
            cl.execute(f"INSERT INTO {scratch.database}.features (window_start, window_end, service, instance, "
                       "requests, emitted_at) VALUES",
                       [{"window_start": datetime.fromtimestamp(start / 1000, UTC),
                         "window_end": datetime.fromtimestamp(start / 1000 + 10, UTC), "service": "s",
                         "instance": "i", "requests": 1, "emitted_at": i}])
        parts = cl.execute("SELECT count() FROM system.parts WHERE database = %(db)s AND table = 'features' AND active",
                           {"db": scratch.database})[0][0]
        assert parts >= 300
        assert len(cl.execute(f"SELECT * FROM {scratch.database}.features FINAL")) == 400
    finally:
        cl.execute(f"SYSTEM START MERGES {scratch.database}.features")
        cl.disconnect()
