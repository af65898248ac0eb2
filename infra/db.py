"""ClickHouse schema migrations: numbered SQL files applied once each, recorded in a table.

`{db}` in a file stands for the configured database. Statements are split on `;` at line ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_driver import Client

from infra.settings import ClickHouseSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_NAME = re.compile(r"^(\d{4})_[\w-]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: list[str]


def client(ch: ClickHouseSettings, database: str | None = None) -> Client:
    return Client(host=ch.host, port=ch.tcp_port, user=ch.user, password=ch.password,
                  database=database or "default", connect_timeout=3, send_receive_timeout=30)


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
