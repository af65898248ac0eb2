from pathlib import Path

import pytest

from infra.core.db import apply_migration, load_migrations


def test_shipped_migrations_are_numbered_and_templated() -> None:
    migrations = load_migrations("fsdb")
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    features = migrations[0]
    assert features.version == 1
    assert any("fsdb.features" in st and "ReplacingMergeTree(emitted_at)" in st for st in features.statements)
    assert all("{db}" not in st and not st.rstrip().endswith(";") for m in migrations for st in m.statements)


def test_statements_split_and_comments_dropped(tmp_path: Path) -> None:
    (tmp_path / "0001_two.sql").write_text("-- a; comment\nCREATE TABLE {db}.a (x UInt8) ENGINE = Memory;\n"
                                           "CREATE TABLE {db}.b (x UInt8) ENGINE = Memory;\n")
    (m,) = load_migrations("d", tmp_path)
    assert m.statements == ["CREATE TABLE d.a (x UInt8) ENGINE = Memory", "CREATE TABLE d.b (x UInt8) ENGINE = Memory"]


def test_badly_named_file_rejected(tmp_path: Path) -> None:
    (tmp_path / "features.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="NNNN_description"):
        load_migrations("d", tmp_path)


def test_a_guard_goes_with_the_next_statement(tmp_path: Path) -> None:
    (tmp_path / "0001_g.sql").write_text(
        "-- a comment\n-- when: SELECT count() = 0 FROM system.tables WHERE database = '{db}'\n"
        "CREATE TABLE {db}.a (x UInt8) ENGINE = Memory;\nDROP TABLE {db}.b;\n")
    (m,) = load_migrations("d", tmp_path)
    assert m.guards == ["SELECT count() = 0 FROM system.tables WHERE database = 'd'", None]
    ran: list[str] = []

    def execute(sql: str) -> list[list[int]]:
        ran.append(sql)
        return [[answer]] if sql.startswith("SELECT") else []

    answer = 0
    assert apply_migration(m, execute) == ["DROP TABLE d.b"]
    answer = 1
    assert apply_migration(m, execute) == m.statements
    assert ran == [m.guards[0], "DROP TABLE d.b", m.guards[0], *m.statements]


def test_a_guard_without_its_statement_rejected(tmp_path: Path) -> None:
    (tmp_path / "0001_g.sql").write_text("CREATE TABLE {db}.a (x UInt8) ENGINE = Memory;\n-- when: SELECT 1;\n")
    with pytest.raises(ValueError, match="when"):
        load_migrations("d", tmp_path)
