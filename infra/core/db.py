"""ClickHouse schema migrations: numbered SQL files applied once each, recorded in a table.

`{db}` in a file stands for the configured database. Statements are split on `;` at line ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from clickhouse_driver import Client

from infra.core.settings import ClickHouseSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_NAME = re.compile(r"^(\d{4})_[\w-]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: list[str]


# ClickHouse 18.16 gives each column of each part it reads a buffer of this size (1 MiB by default),
# even for a part of a few rows. `FINAL` reads every part at once: a few hundred small parts (day
# partitions of windows written as they close) then took the 4 GB query limit. Our rows are small.
READ_BUFFER_BYTES = 64 * 1024


def client(ch: ClickHouseSettings, database: str | None = None) -> Client:
    return Client(**ch.client_options(), database=database or "default", connect_timeout=3, send_receive_timeout=30,
                  settings={"max_read_buffer_size": READ_BUFFER_BYTES})


def load_migrations(db: str, folder: Path = MIGRATIONS) -> list[Migration]:
    out = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name} must be named NNNN_description.sql")
        text = "\n".join(line for line in path.read_text().splitlines() if not line.strip().startswith("--"))
        statements = [st.strip().replace("{db}", db) for st in re.split(r";\s*$", text, flags=re.M) if st.strip()]
        out.append(Migration(int(match.group(1)), path.stem, statements))
    return out


def migrate(ch: ClickHouseSettings) -> list[str]:
    """Apply the migrations not yet recorded; returns the names applied."""
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
        for m in load_migrations(ch.database):
            if m.version in done:
                continue
            for statement in m.statements:
                cl.execute(statement)
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
