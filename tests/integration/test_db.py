"""Migrations and retention against the real ClickHouse 18.16 of the local stack.

Retention runs in a scratch database: on the stack's own database it would also drop whatever
old partitions other tests or a replay left there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clickhouse_driver.errors import ServerException

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


CRASH = "SELECT * FROM {db}.no_such_table_the_run_stops_here"
HALF_SWAP = "RENAME TABLE {db}.metric_samples TO {db}.metric_samples_0002"  # the first half of 0004's swap


def _cut_short(folder: Path, version: int, k: int, then: list[str]) -> Path:
    """The shipped migrations before `version`, and `version` cut after its first `k` statements and
    ended with `then` (the last of which fails): a run that stopped part-way, so not recorded."""
    folder.mkdir()
    for m in load_migrations("{db}"):  # `{db}` kept, as in the shipped files
        if m.version > version:
            break
        steps = list(zip(m.statements, m.guards, strict=True))
        if m.version == version:
            steps = steps[:k] + [(st, None) for st in then]
        (folder / f"{m.name}.sql").write_text("".join((f"-- when: {g}\n" if g else "") + f"{st};\n" for st, g in steps))
    return folder


def _schema(ch: ClickHouseSettings) -> list[tuple[str, str, str, int]]:
    cl = client(ch)
    try:
        return [(str(t), str(n), str(ty), int(k)) for t, n, ty, k in cl.execute(
            "SELECT table, name, type, is_in_sorting_key FROM system.columns WHERE database = %(db)s "
            "ORDER BY table, name", {"db": ch.database})]
    finally:
        cl.disconnect()


def _write_a_row_each(ch: ClickHouseSettings) -> None:
    cl = client(ch)
    ms = 1_764_300_000_000
    try:
        cl.execute(f"INSERT INTO {ch.database}.metric_samples (ts_ms, service, instance, name, value) VALUES",
                   [(ms, "s", "i", "up", 1.0)])
        cl.execute(f"INSERT INTO {ch.database}.decisions (ts_ms, service, actuator, target, action, before, after,"
                   " reason, prediction_refs, dry_run, outcome) VALUES",
                   [(ms, "s", "scaler", "s", "scale", None, 2.0, "r", [], 0, "applied")])
        cl.execute(f"INSERT INTO {ch.database}.predictions (ts_ms, kind, service, instance, model, model_version,"
                   " horizon_s, quantile, value) VALUES", [(ms, "forecast", "s", "*", "mlp", "v1", 60, 0.5, 1.0)])
    finally:
        cl.disconnect()


_SHIPPED = {m.version: len(m.statements) for m in load_migrations("d")}
CUTS = ([(3, k, [CRASH]) for k in range(_SHIPPED[3] + 1)] + [(4, k, [CRASH]) for k in range(_SHIPPED[4] + 1)]
        + [(4, 4, [HALF_SWAP, CRASH])]  # 0004's 5th statement is metric_samples' two-table RENAME
        + [(6, k, [CRASH]) for k in range(_SHIPPED[6] + 1)])


@pytest.mark.parametrize(("version", "k", "then"), CUTS, ids=[f"{v}-{k}-{len(t)}" for v, k, t in CUTS])
def test_a_migration_cut_short_completes_on_the_next_migrate(scratch: ClickHouseSettings, tmp_path: Path,
                                                            version: int, k: int, then: list[str]) -> None:
    """On 18.16: a `db migrate` that failed part-way through 0003, 0004 or 0006 (any statement; for 0004 also
    between the two renames of a swap) is completed by the next one, with the schema of a database
    migrated in one go and every row kept once."""
    reference = scratch.model_copy(update={"database": f"{scratch.database}_ref"})
    try:
        migrate(reference)
        expected = _schema(reference)
    finally:
        cl = client(reference)
        cl.execute(f"DROP DATABASE IF EXISTS {reference.database}")
        cl.disconnect()
    migrate(scratch, _cut_short(tmp_path / "before", version - 1, 10**6, []))
    _write_a_row_each(scratch)
    with pytest.raises(ServerException):
        migrate(scratch, _cut_short(tmp_path / "cut", version, k, then))
    shipped = load_migrations(scratch.database)
    assert migrate(scratch) == [m.name for m in shipped if m.version >= version]
    assert migrate(scratch) == []
    assert _schema(scratch) == expected
    assert _tables(scratch) == TABLES | {"schema_migrations"}
    cl = client(scratch)
    try:
        for table in ("metric_samples", "decisions", "predictions"):
            assert cl.execute(f"SELECT count() FROM {scratch.database}.{table}") == [(1,)], table  # not FINAL
        recorded = cl.execute(f"SELECT version FROM {scratch.database}.schema_migrations ORDER BY version")
    finally:
        cl.disconnect()
    assert recorded == [(m.version,) for m in shipped]
