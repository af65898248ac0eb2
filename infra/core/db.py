"""ClickHouse schema migrations: numbered SQL files applied once each, recorded in a table.

`{db}` in a file stands for the configured database. Statements are split on `;` at line ends.
A line `-- when: <query>` before a statement is its guard: the statement runs only when the query's
first value is not 0. A migration is recorded only once all of it ran, so a migration that failed
part-way runs again from its start: each statement must be idempotent, which a guard (a look at
system.tables / system.columns) makes of an ALTER, a RENAME or a copy that no IF [NOT] EXISTS form covers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from clickhouse_driver import Client

from infra.core.settings import ClickHouseSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_NAME = re.compile(r"^(\d{4})_[\w-]+\.sql$")
_GUARD = re.compile(r"^--\s*when:\s*(?P<query>.+)$")
_GUARD_MARK = "\0when "


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: list[str]
    guards: list[str | None]  # one a statement: the query that must answer non-zero for it to run, or None


# ClickHouse 18.16 gives each column of each part it reads a buffer of this size (1 MiB by default),
# even for a part of a few rows. `FINAL` reads every part at once: a few hundred small parts (day
# partitions of windows written as they close) then took the 4 GB query limit. Our rows are small.
READ_BUFFER_BYTES = 64 * 1024


def client(ch: ClickHouseSettings, database: str | None = None) -> Client:
    return Client(**ch.client_options(), database=database or "default", connect_timeout=3, send_receive_timeout=30,
                  settings={"max_read_buffer_size": READ_BUFFER_BYTES})


def time_bounds(column: str, start_s: int | None, end_s: int | None) -> tuple[str, dict[str, int]]:
    """` AND column >= start AND column < end` (each side only when given) and its parameters: the
    half-open range every reader of a time-keyed table uses, written once (18.16: DateTime, not 64)."""
    sql, params = "", {}
    if start_s is not None:
        sql += f" AND {column} >= toDateTime(%(start)s)"
        params["start"] = start_s
    if end_s is not None:
        sql += f" AND {column} < toDateTime(%(end)s)"
        params["end"] = end_s
    return sql, params


def _split(text: str, db: str, path: Path) -> tuple[list[str], list[str | None]]:
    lines = []
    for line in text.splitlines():
        guard = _GUARD.match(line.strip())
        if guard:
            lines.append(_GUARD_MARK + guard["query"].strip())
        elif not line.strip().startswith("--"):
            lines.append(line)
    statements: list[str] = []
    guards: list[str | None] = []
    for chunk in re.split(r";\s*$", "\n".join(lines), flags=re.M):
        marks = [line[len(_GUARD_MARK):] for line in chunk.splitlines() if line.startswith(_GUARD_MARK)]
        statement = "\n".join(line for line in chunk.splitlines() if not line.startswith(_GUARD_MARK)).strip()
        if len(marks) > 1 or (marks and not statement):
            raise ValueError(f"{path.name}: each `-- when:` guard (one line, no `;` at its end) goes right before "
                             f"one statement: {marks}")
        if statement:
            statements.append(statement.replace("{db}", db))
            guards.append(marks[0].replace("{db}", db) if marks else None)
    return statements, guards


def load_migrations(db: str, folder: Path = MIGRATIONS) -> list[Migration]:
    out = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name} must be named NNNN_description.sql")
        statements, guards = _split(path.read_text(), db, path)
        out.append(Migration(int(match.group(1)), path.stem, statements, guards))
    return out


def apply_migration(m: Migration, execute: Callable[[str], Any]) -> list[str]:
    """Run `m`'s statements in order through `execute` (a ClickHouse client's), each whose guard passes
    (asked just before it: the statements before change what it sees); returns the statements run."""
    ran = []
    for statement, guard in zip(m.statements, m.guards, strict=True):
        if guard is not None:
            rows = execute(guard)
            if not rows or not int(rows[0][0]):
                continue
        execute(statement)
        ran.append(statement)
    return ran


def migrate(ch: ClickHouseSettings, folder: Path = MIGRATIONS) -> list[str]:
    """Apply the migrations not yet recorded; returns the names applied. One that fails part-way is
    not recorded, and the next run applies it again (its statements are idempotent)."""
    cl = client(ch)
    try:
        cl.execute(f"CREATE DATABASE IF NOT EXISTS {ch.database}")
        cl.execute(
            f"CREATE TABLE IF NOT EXISTS {ch.database}.schema_migrations "
            "(version UInt32, name String, applied_at DateTime DEFAULT now()) "
            "ENGINE = MergeTree ORDER BY version"
        )
        done = {row[0] for row in cl.execute(f"SELECT version FROM {ch.database}.schema_migrations")}
        applied = []
        for m in load_migrations(ch.database, folder):
            if m.version in done:
                continue
            apply_migration(m, cl.execute)
            cl.execute(f"INSERT INTO {ch.database}.schema_migrations (version, name) VALUES", [(m.version, m.name)])
            applied.append(m.name)
        return applied
    finally:
        cl.disconnect()


def _partition_day(partition: str) -> date | None:
    """The day of a `toDate(...)` partition ('2026-11-28', quoted or not); None for any other key."""
    try:
        return date.fromisoformat(partition.strip("'"))
    except ValueError:
        return None


def stale_partitions(parts: Iterable[tuple[str, str]], days: int, today: date) -> list[tuple[str, str]]:
    """The (table, partition) pairs of day partitions strictly older than `today - days`, deduplicated
    (system.parts has one row per part) and sorted. Non-day partitions ('tuple()') are never stale."""
    if days < 1:
        raise ValueError(f"retention must keep at least 1 day, got {days}")
    cutoff = today - timedelta(days=days)
    stale = set()
    for table, partition in parts:
        day = _partition_day(partition)
        if day is not None and day < cutoff:
            stale.add((table, partition))
    return sorted(stale)


def drop_partition_sql(database: str, table: str, partition: str) -> str:
    """`ALTER TABLE ... DROP PARTITION '<day>'`: a Date partition key takes its value as a quoted literal."""
    literal = "'" + partition.strip("'").replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"ALTER TABLE {database}.{table} DROP PARTITION {literal}"


def retain(ch: ClickHouseSettings, days: int, *, today: date | None = None) -> list[tuple[str, str]]:
    """Drop day partitions older than `days` days (before `today - days`, UTC) from every table of
    the database; ClickHouse 18.16 has no TTL, so this is the retention. Returns what was dropped.
    Tables not partitioned by day (model_versions, schema_migrations) are left alone."""
    if days < 1:
        raise ValueError(f"retention must keep at least 1 day, got {days}")
    today = today or datetime.now(UTC).date()
    cl = client(ch)
    try:
        parts = cl.execute(
            "SELECT table, partition FROM system.parts WHERE active AND database = %(db)s",
            {"db": ch.database},
        )
        dropped = stale_partitions(parts, days, today)
        for table, partition in dropped:
            cl.execute(drop_partition_sql(ch.database, table, partition))
        return dropped
    finally:
        cl.disconnect()
