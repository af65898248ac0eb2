"""Every migration on a current ClickHouse engine (chDB, in-process); 18.16 is covered by
tests/integration/test_db.py against the real server."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from infra.core.db import Migration, apply_migration, drop_partition_sql, load_migrations, retain, stale_partitions
from infra.core.settings import ClickHouseSettings

chdb_session = pytest.importorskip("chdb.session")

DB = "fsdb"
TABLES = ["access_events", "decisions", "fault_events", "features", "metric_samples", "model_versions",
          "predictions"]


class Chdb:
    """Just enough of clickhouse_driver.Client.execute (with %(name)s parameters) over a chDB session."""

    def __init__(self, path: Path) -> None:
        self.session = chdb_session.Session(str(path))

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        def quote(value: Any) -> str:
            if isinstance(value, tuple):  # as clickhouse_driver renders a tuple: for IN and tuple keys
                return "(" + ", ".join(map(quote, value)) + ")"
            return str(value) if isinstance(value, int | float) else "'" + str(value).replace("'", "\\'") + "'"

        def literal(match: re.Match[str]) -> str:
            return quote((params or {})[match.group(1)])

        sql = re.sub(r"%\((\w+)\)s", literal, sql)
        result = self.session.query(sql, "JSONCompact")
        text = result.bytes().decode()
        return json.loads(text)["data"] if text.strip() else []


@pytest.fixture(scope="module")
def ch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chdb]:
    db = Chdb(tmp_path_factory.mktemp("chdb"))
    db.execute(f"CREATE DATABASE IF NOT EXISTS {DB}")
    for migration in load_migrations(DB):
        apply_migration(migration, db.execute)
    yield db
    db.session.close()


def test_every_table_created_and_takes_a_row(ch: Chdb) -> None:
    tables = [r[0] for r in ch.execute(f"SELECT name FROM system.tables WHERE database = '{DB}' ORDER BY name")]
    assert tables == TABLES
    ms = 1_764_288_000_123  # 2025-11-28 00:00:00.123 UTC
    ch.execute(f"INSERT INTO {DB}.access_events (ts_ms, id, service, instance, method, route, status, latency_ms,"
               f" bytes_sent, source) VALUES ({ms}, 'e1', 'web', 's1', 'GET', '/a', 200, 5.5, 120, 'syslog')")
    ch.execute(f"INSERT INTO {DB}.metric_samples (ts_ms, service, instance, name, value, label_keys, label_values)"
               f" VALUES ({ms}, 'web', 's1', 'haproxy_backend_up', 1, ['backend', 'proxy'], ['web', 'fe'])")
    ch.execute(f"INSERT INTO {DB}.predictions (ts_ms, kind, service, instance, model, model_version, horizon_s,"
               f" quantile, value) VALUES ({ms}, 'load', 'web', '*', 'tcn', 'v3', 60, 0.9, 42.0)")
    ch.execute(f"INSERT INTO {DB}.decisions (ts_ms, service, actuator, target, action, before, after, reason,"
               f" prediction_refs, dry_run, outcome) VALUES ({ms}, 'web', 'haproxy', 'web/s2', 'set_weight', NULL,"
               f" 40, 'p99 rising', ['load/v3'], 1, 'applied')")
    ch.execute(f"INSERT INTO {DB}.model_versions VALUES ('load', 'v3', '2025-11-28 00:00:00', 'sha256:ab',"
               " '{\"mae\": 1.5}', 'models/load/v3')")
    ch.execute(f"INSERT INTO {DB}.features (window_start, window_end, service, instance, requests, emitted_at)"
               " VALUES ('2025-11-28 00:00:00', '2025-11-28 00:00:10', 'web', 's1', 1, 1)")
    ch.execute(f"INSERT INTO {DB}.fault_events (start_ms, scenario, seed, service, instance, kind, full_ms, end_ms,"
               f" failure_ms, params) VALUES ({ms}, 'generated-7', 7, 'web', 's1', 'errors', {ms}, NULL, {ms + 2000},"
               " '{}')")
    for table in TABLES:
        assert ch.execute(f"SELECT count() FROM {DB}.{table}") == [[1]], table
    # ts is derived from the contract's epoch ms, in UTC, and target_ts from the horizon.
    assert ch.execute(f"SELECT toString(ts, 'UTC'), toDate(ts, 'UTC') FROM {DB}.access_events") == [
        ["2025-11-28 00:00:00", "2025-11-28"]]
    assert ch.execute(f"SELECT toString(target_ts, 'UTC') FROM {DB}.predictions") == [["2025-11-28 00:01:00"]]
    assert ch.execute(f"SELECT label_values[indexOf(label_keys, 'proxy')] FROM {DB}.metric_samples") == [["fe"]]
    assert ch.execute(f"SELECT before, after, dry_run FROM {DB}.decisions") == [[None, 40, 1]]
    # A re-delivered access event (same key) collapses.
    ch.execute(f"INSERT INTO {DB}.access_events (ts_ms, id, service, instance, status) VALUES ({ms}, 'e1', 'web',"
               " 's1', 200)")
    assert ch.execute(f"SELECT count() FROM {DB}.access_events FINAL") == [[1]]
    # ...but another event in the same millisecond does not.
    ch.execute(f"INSERT INTO {DB}.access_events (ts_ms, id, service, instance, status) VALUES ({ms}, 'e2', 'web',"
               " 's1', 200)")
    assert ch.execute(f"SELECT count() FROM {DB}.access_events FINAL") == [[2]]


def test_reemitted_feature_window_replaces_itself(ch: Chdb) -> None:
    insert = (f"INSERT INTO {DB}.features (window_start, window_end, service, instance, requests, latency_p99_ms,"
              " emitted_at) VALUES ('2025-11-27 10:00:00', '2025-11-27 10:00:10', 'api', 'i1', {}, {}, {})")
    ch.execute(insert.format(10, 50.0, 2_000))  # inserted first, but emitted later: it must win
    ch.execute(insert.format(7, 90.0, 1_000))
    rows = ch.execute(f"SELECT requests, latency_p99_ms, emitted_at FROM {DB}.features FINAL WHERE service = 'api'")
    assert rows == [[10, 50, 2000]]
    assert ch.execute(f"SELECT count() FROM {DB}.features WHERE service = 'api'") == [[2]]  # not merged yet


def test_latest_features_query_runs_on_chdb(ch: Chdb) -> None:
    from lb_adapters.features import LatestFeatures

    now = datetime.now(UTC).replace(microsecond=0)
    rows = []
    for instance, age_s, p99, requests, errors, emitted in [
        ("s1", 30, 10.0, 100, 0, 1), ("s1", 20, 12.0, 100, 10, 1),  # the latest window wins
        ("s1", 20, 99.0, 1, 1, 0),                                  # ...and its earlier emission loses
        ("s2", 25, 40.0, 50, 0, 1),
        ("s2", 5000, 400.0, 50, 50, 1),                             # too old
        ("*", 20, 30.0, 150, 10, 1),                                # service-wide row is excluded
    ]:
        start = (now - timedelta(seconds=age_s)).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(f"(toDateTime('{start}', 'UTC'), toDateTime('{start}', 'UTC') + 10, 'lat', '{instance}',"
                    f" {requests}, {errors}, {p99}, {p99 / 2}, {emitted})")
    ch.execute(f"INSERT INTO {DB}.features (window_start, window_end, service, instance, requests, status_5xx,"
               f" latency_p99_ms, latency_p50_ms, emitted_at) VALUES {', '.join(rows)}")
    got = LatestFeatures(cast(Any, ch), DB).for_service("lat", max_age_s=600)
    assert [(f.instance, f.latency_p99_ms, f.requests, f.error_rate) for f in got] == [
        ("s1", 12.0, 100, 0.1), ("s2", 40.0, 50, 0.0)]


def test_latest_instance_windows_read_saturation_and_backend_gauges(ch: Chdb) -> None:
    from infra.core.features_table import latest_instance_windows

    start = (datetime.now(UTC) - timedelta(seconds=20)).strftime("%Y-%m-%d %H:%M:%S")
    ch.execute(f"INSERT INTO {DB}.features (window_start, window_end, service, instance, requests, sessions_max,"
               " queue_max, conn_errors, resource_max, busy_max, busy_mean, emitted_at) VALUES "
               f"(toDateTime('{start}', 'UTC'), toDateTime('{start}', 'UTC') + 2, 'gauges', 'b1', 7, 3, 2, 1, 0.8,"
               " 0.5, 0.25, 1)")
    (w,) = latest_instance_windows(cast(Any, ch), DB, "gauges", max_age_s=600)
    assert (w.instance, w.requests, w.sessions_max, w.queue_max, w.conn_errors, w.resource_max, w.busy_max,
            w.busy_mean) == ("b1", 7, 3.0, 2.0, 1.0, 0.8, 0.5, 0.25)
    from lb_adapters.features import LatestFeatures, mean_busy

    (f,) = LatestFeatures(cast(Any, ch), DB).for_service("gauges", max_age_s=600)  # what the health models read
    assert (f.sessions, f.queue, f.resource, f.busy) == (3.0, 2.0, 0.8, 0.5)
    assert mean_busy([f]) == {"b1": 0.25}  # what the capacity estimate reads


def test_instance_windows_for_training_read_every_window_by_pattern(ch: Chdb) -> None:
    from infra.core.features_table import HEALTH_WINDOW_FIELDS, instance_windows

    rows = ", ".join(f"(toDateTime({1_800_000_000 + 2 * k}), toDateTime({1_800_000_002 + 2 * k}), 'health-s{s}', "
                     f"'i{k % 2}', {k + 1}, {k}, 1.5, 0.25, 0.5, {k})" for s in (1, 2) for k in range(4))
    ch.execute(f"INSERT INTO {DB}.features (window_start, window_end, service, instance, requests, latency_p99_ms,"
               f" sessions_max, resource_max, busy_max, emitted_at) VALUES {rows}")
    ch.execute(f"INSERT INTO {DB}.features (window_start, window_end, service, instance, requests, emitted_at) "
               "VALUES (toDateTime(1800000000), toDateTime(1800000010), 'health-s1', '*', 99, 1)")
    got = instance_windows(cast(Any, ch), DB, ["health-s%"], start_s=1_800_000_002)
    assert len(got) == 2 * 3 and {r[0] for r in got} == {"health-s1", "health-s2"}
    first = dict(zip(HEALTH_WINDOW_FIELDS, got[0], strict=True))
    assert (first["instance"], first["start_s"], first["window_s"], first["requests"]) == ("i0", 1_800_000_004, 2, 3)
    assert (first["sessions_max"], first["resource_max"], first["busy_max"]) == (1.5, 0.25, 0.5)
    assert instance_windows(cast(Any, ch), DB, ["health-s2"], end_s=1_800_000_002)[0][:2] == ["health-s2", "i0"]


def test_retention_drops_only_old_day_partitions(ch: Chdb) -> None:
    today = datetime.now(UTC).date()
    for age in (40, 31, 30, 0):
        ms = int(datetime.combine(today - timedelta(days=age), datetime.min.time(), UTC).timestamp() * 1000)
        ch.execute(f"INSERT INTO {DB}.metric_samples (ts_ms, service, instance, name, value) VALUES"
                   f" ({ms + 43_200_000}, 'ret', 'i', 'age', {age})")  # midday UTC: same day in any server zone
    parts = [(t, p) for t, p in ch.execute(f"SELECT table, partition FROM system.parts WHERE active AND"
                                           f" database = '{DB}'")]
    stale = stale_partitions(parts, 30, today)
    assert ("metric_samples", str(today - timedelta(days=40))) in stale
    assert ("metric_samples", str(today - timedelta(days=31))) in stale
    assert all(t != "model_versions" for t, _ in stale)
    for table, partition in stale:
        ch.execute(drop_partition_sql(DB, table, partition))
    left = ch.execute(f"SELECT value FROM {DB}.metric_samples WHERE service = 'ret' ORDER BY value")
    assert left == [[0], [30]]
    assert ch.execute(f"SELECT count() FROM {DB}.model_versions") == [[1]]


def test_stale_partitions_pure() -> None:
    today = date(2026, 11, 28)
    parts = [("a", "2026-10-28"), ("a", "2026-10-28"), ("a", "2026-10-29"), ("b", "'2026-10-01'"),
             ("m", "tuple()"), ("x", "202610")]
    assert stale_partitions(parts, 30, today) == [("a", "2026-10-28"), ("b", "'2026-10-01'")]
    # days=1 keeps today and yesterday: only a day wholly older than 1 day goes.
    assert stale_partitions(parts, 1, date(2026, 10, 30)) == [("a", "2026-10-28"), ("b", "'2026-10-01'")]
    assert drop_partition_sql("d", "t", "'2026-10-01'") == "ALTER TABLE d.t DROP PARTITION '2026-10-01'"


@pytest.mark.parametrize("days", [0, -3])
def test_retain_refuses_less_than_a_day(days: int) -> None:
    with pytest.raises(ValueError, match="at least 1 day"):
        retain(ClickHouseSettings(host="127.0.0.1", tcp_port=1), days)


def test_redelivered_metric_sample_and_decision_collapse(ch: Chdb) -> None:
    """Migration 0004: the record sink and the decision spool write at least once; FINAL counts once."""
    ms = 1_764_300_000_456
    sample = (f"INSERT INTO {DB}.metric_samples (ts_ms, service, instance, name, value, label_keys, label_values)"
              f" VALUES ({ms}, 'idem', 's1', 'up', 1, ['backend'], ['{{}}'])")
    for backend in ("web", "web", "api"):  # the same sample twice, and another labelled sample at the same ms
        ch.execute(sample.format(backend))
    assert ch.execute(f"SELECT count() FROM {DB}.metric_samples FINAL WHERE service = 'idem'") == [[2]]
    decision = (f"INSERT INTO {DB}.decisions (ts_ms, service, actuator, target, action, before, after, reason,"
                f" prediction_refs, dry_run, outcome) VALUES ({ms}, 'idem', 'haproxy', '{{}}', 'set_weight', 1, 2,"
                " 'r', [], 0, 'applied')")
    for target in ("demo/s1", "demo/s1", "demo/s2"):
        ch.execute(decision.format(target))
    assert ch.execute(f"SELECT count() FROM {DB}.decisions FINAL WHERE service = 'idem'") == [[2]]
    engines = dict(ch.execute(f"SELECT name, engine FROM system.tables WHERE database = '{DB}'"))
    assert engines["metric_samples"] == engines["decisions"] == "ReplacingMergeTree"


def test_record_readers_run_on_chdb(ch: Chdb) -> None:
    """The readers of infra.core.record_tables and features_table's additions, on a current engine."""
    from infra.core.features_table import instance_requests_since, windows_between
    from infra.core.record_tables import (
        PredictionRef,
        access_event_ids,
        access_minute_requests,
        read_decisions,
        read_predictions,
    )

    t0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC
    ch.execute(f"INSERT INTO {DB}.access_events (ts_ms, id, service, instance) VALUES"
               + ", ".join(f"({(t0 + s) * 1000}, 'r{s}', 'rd', 'i')" for s in (0, 30, 61, 61, 125)))
    db = cast(Any, ch)
    # r61 was delivered twice: counted once.
    assert access_minute_requests(db, DB, "rd") == [(t0, 2), (t0 + 60, 1), (t0 + 120, 1)]
    assert access_minute_requests(db, DB, "rd", t0 + 60, t0 + 120) == [(t0 + 60, 1)]
    assert access_event_ids(db, DB, (t0 + 61) * 1000) == {"r61", "r125"}

    ch.execute(f"INSERT INTO {DB}.features (window_start, window_end, service, instance, requests, emitted_at)"
               f" VALUES (toDateTime({t0}), toDateTime({t0 + 10}), 'rd', 'i', 4, 1),"
               f" (toDateTime({t0}), toDateTime({t0 + 10}), 'rd', '*', 4, 1),"
               f" (toDateTime({t0 + 10}), toDateTime({t0 + 20}), 'rd', 'j', 3, 1)")
    assert instance_requests_since(db, DB, t0) >= 7  # other tests' instance windows are older or elsewhere
    assert [(w["instance"], w["requests"]) for w in windows_between(db, DB, "rd", ["*", "i"], t0, t0 + 60)] == [
        ("*", 4), ("i", 4)]

    ms = t0 * 1000 + 5
    ch.execute(f"INSERT INTO {DB}.predictions (ts_ms, kind, service, instance, model, model_version, horizon_s,"
               f" quantile, value) VALUES ({ms}, 'forecast', 'rd', '*', 'mlp', 'v2', 60, 0.9, 12.5),"
               f" ({ms}, 'forecast', 'rd', '*', 'mlp', 'v2', 60, 0.5, 10.0)")
    ref = PredictionRef("forecast", "rd", "*", "mlp", "v2", ms)
    assert read_predictions(db, DB, [ref]) == {ref: [{"horizon_s": 60, "quantile": 0.5, "value": 10.0},
                                                     {"horizon_s": 60, "quantile": 0.9, "value": 12.5}]}
    ch.execute(f"INSERT INTO {DB}.decisions (ts_ms, service, actuator, target, action, before, after, reason,"
               f" prediction_refs, dry_run, outcome) VALUES ({ms}, 'rd', 'scaler', 'rd', 'scale', 2, 3, 'up',"
               f" ['forecast:rd/*@mlp:v2#{ms}'], 0, 'applied')")
    (row,) = read_decisions(db, DB, ms, "rd")
    assert (row.action, row.after, row.prediction_refs, row.dry_run) == ("scale", 3, [f"forecast:rd/*@mlp:v2#{ms}"],
                                                                         False)


def test_dashboard_snapshot_reads_the_record_on_chdb(ch: Chdb) -> None:
    """The dashboard's snapshot through the shared readers of infra.core (record_tables, features_table)."""
    from infra.core.record_tables import DecisionRow
    from infra.dashboards.data import ComponentHealth, DashboardData

    t0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC
    ms = t0 * 1000
    ch.execute(f"INSERT INTO {DB}.features (window_start, window_end, service, instance, requests, rate, emitted_at)"
               f" VALUES (toDateTime({t0}), toDateTime({t0 + 10}), 'dash', '*', 40, 4.0, 1),"
               f" (toDateTime({t0 + 10}), toDateTime({t0 + 20}), 'dash', '*', 50, 5.0, 1)")
    ch.execute(f"INSERT INTO {DB}.predictions (ts_ms, kind, service, instance, model, model_version, horizon_s,"
               f" quantile, value) VALUES ({ms}, 'forecast', 'dash', '*', 'mlp', 'v1', 60, 0.5, 6.0),"
               f" ({ms}, 'forecast', 'dash', '*', 'mlp', 'v1', 60, 0.9, 8.0),"
               f" ({ms + 1000}, 'forecast', 'dash', '*', 'mlp', 'v1', 59, 0.9, 9.0),"  # same target, newer: wins
               f" ({ms}, 'risk', 'dash', 's1', 'peer', 'v1', 0, 0.5, 0.25),"
               f" ({ms + 2000}, 'hpa_shadow', 'dash', '*', 'hpa', 'v1', 0, 0.5, 3.0)")
    decision = (f"INSERT INTO {DB}.decisions (ts_ms, service, actuator, target, action, before, after, reason,"
                " prediction_refs, dry_run, outcome) VALUES ({}, 'dash', '{}', '{}', '{}', {}, {}, '{}', [], {}, '{}')")
    ch.execute(decision.format(ms + 3000, "scaler", "pool/dash", "scale", 2, 3, "up", 0, "applied"))
    ch.execute(decision.format(ms + 4000, "haproxy", "dash/s1", "set_weight", 100, 60, "p99", 0, "applied"))
    ch.execute(decision.format(ms + 5000, "haproxy", "dash/s2", "set_weight", 100, 10, "p99", 1, "dry_run"))
    ch.execute(decision.format(ms + 6000, "etcd", "dash/s1", "drain", "NULL", "NULL", "risk", 0, "applied"))

    data = DashboardData(cast(Any, ch), DB, lambda: [ComponentHealth(name="clickhouse", state="up")],
                         window_minutes=10, decisions_shown=3)
    snap = data.snapshot("dash", now_s=t0 + 300)
    assert snap.rate == [(t0, 4.0), (t0 + 10, 5.0)]
    assert snap.forecast == {"0.5": [(t0 + 60, 6.0)], "0.9": [(t0 + 60, 9.0)]}
    assert snap.desired == [(t0 + 3, 3.0)]
    assert snap.shadow == [(t0 + 2, 3.0)]
    assert snap.weights == {"s1": [(t0 + 4, 60.0)]}  # the dry run set nothing
    assert snap.risk == {"s1": [(t0, 0.25)]}
    assert [(d.ts_ms, d.action, d.before, d.after, d.dry_run) for d in snap.decisions] == [
        (ms + 6000, "drain", None, None, False), (ms + 5000, "set_weight", 100.0, 10.0, True),
        (ms + 4000, "set_weight", 100.0, 60.0, False)]  # the newest 3, newest first
    assert all(isinstance(d, DecisionRow) for d in snap.decisions)
    shown = json.loads(snap.model_dump_json())["decisions"][0]
    assert {"ts_ms", "actuator", "target", "action", "before", "after", "reason", "outcome", "dry_run"} <= set(shown)
    # The service list: services with a feature window or a decision in the last 24 h.
    live_ms = int(datetime.now(UTC).timestamp() * 1000)
    live = decision.replace("'dash'", "'dash-live'")
    ch.execute(live.format(live_ms, "scaler", "pool/x", "scale", 1, 2, "", 0, "ok"))
    assert "dash-live" in data.services() and "dash" not in data.services()


def _schema(ch: Chdb, db: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each table's engine and columns (with their sorting-key flag)."""
    tables = dict(ch.execute(f"SELECT name, engine FROM system.tables WHERE database = '{db}'"))
    columns: dict[str, list[str]] = {}
    for table, name, in_key in ch.execute(f"SELECT table, name, is_in_sorting_key FROM system.columns "
                                          f"WHERE database = '{db}' ORDER BY table, position"):
        columns.setdefault(table, []).append(name + ("*" if int(in_key) else ""))
    return {t: (engine, tuple(columns.get(t, []))) for t, engine in tables.items()}


def _fill(ch: Chdb, db: str) -> None:
    ms = 1_764_300_000_000
    ch.execute(f"INSERT INTO {db}.metric_samples (ts_ms, service, instance, name, value) VALUES ({ms}, 's', 'i', 'up',"
               " 1)")
    ch.execute(f"INSERT INTO {db}.decisions (ts_ms, service, actuator, target, action, after, reason, prediction_refs,"
               f" dry_run, outcome) VALUES ({ms}, 's', 'scaler', 's', 'scale', 2, 'r', [], 0, 'applied')")
    ch.execute(f"INSERT INTO {db}.predictions (ts_ms, kind, service, instance, model, model_version, horizon_s,"
               f" quantile, value) VALUES ({ms}, 'forecast', 's', '*', 'mlp', 'v1', 60, 0.5, 1.0)")
    ch.execute(f"INSERT INTO {db}.features (window_start, window_end, service, instance, requests, emitted_at)"
               " VALUES ('2025-11-28 00:00:00', '2025-11-28 00:00:10', 's', 'i', 1, 1)")


def _cut_short(ch: Chdb, db: str, cut: tuple[int, int], crash: Callable[[Chdb, str], None] | None = None) -> None:
    """A database migrated up to migration `cut[0]`, whose run stopped after its first `cut[1]` statements
    (then `crash`), with a row in each table written before that migration."""
    ch.execute(f"DROP DATABASE IF EXISTS {db}")
    ch.execute(f"CREATE DATABASE {db}")
    for m in load_migrations(db):
        if m.version == cut[0]:
            _fill(ch, db)
            apply_migration(Migration(m.version, m.name, m.statements[:cut[1]], m.guards[:cut[1]]), ch.execute)
            if crash is not None:
                crash(ch, db)
            return
        apply_migration(m, ch.execute)


def _rerun_from(ch: Chdb, db: str, version: int) -> None:
    for m in load_migrations(db):
        if m.version >= version:
            apply_migration(m, ch.execute)


@pytest.mark.parametrize("version", [3, 4, 6, 7])
def test_a_migration_cut_short_completes_when_run_again(ch: Chdb, version: int) -> None:
    """0003, 0004, 0006 and 0007 are not recorded until all of them ran: after a failure at any statement, the next
    `db migrate` runs the whole migration again, and it must then finish the schema with every row
    once (not fail on what the first run did, nor copy a table twice)."""
    ch.execute("DROP DATABASE IF EXISTS fsdb_whole")
    ch.execute("CREATE DATABASE fsdb_whole")
    for whole_m in load_migrations("fsdb_whole"):
        apply_migration(whole_m, ch.execute)
    _fill(ch, "fsdb_whole")
    whole = _schema(ch, "fsdb_whole")
    assert {t for t, (_, cols) in whole.items() if "ts_ms*" in cols} >= {"metric_samples", "decisions",
                                                                          "predictions"}
    (m,) = [m for m in load_migrations("fsdb_cut") if m.version == version]
    for k in range(len(m.statements) + 1):
        _cut_short(ch, "fsdb_cut", (version, k))
        _rerun_from(ch, "fsdb_cut", version)
        assert _schema(ch, "fsdb_cut") == whole, k
        for table in ("metric_samples", "decisions", "predictions", "features"):
            assert ch.execute(f"SELECT count() FROM fsdb_cut.{table}") == [[1]], (k, table)  # not FINAL: no copy twice
    ch.execute("DROP DATABASE fsdb_cut")
    ch.execute("DROP DATABASE fsdb_whole")


def test_0004_completes_a_swap_that_stopped_half_way(ch: Chdb) -> None:
    """18.16 renames the two tables of a RENAME one after the other: a failure between leaves no
    metric_samples, the old one as _0002 and the complete copy as _0004."""
    (m,) = [m for m in load_migrations("fsdb_half") if m.version == 4]
    swap = next(i for i, st in enumerate(m.statements) if st.startswith("RENAME TABLE fsdb_half.metric_samples TO"))

    def half_rename(ch: Chdb, db: str) -> None:
        ch.execute(f"RENAME TABLE {db}.metric_samples TO {db}.metric_samples_0002")

    _cut_short(ch, "fsdb_half", (4, swap), half_rename)
    assert {"metric_samples_0002", "metric_samples_0004"} <= set(_schema(ch, "fsdb_half"))
    _rerun_from(ch, "fsdb_half", 4)
    schema = _schema(ch, "fsdb_half")
    assert "metric_samples_0002" not in schema and "metric_samples_0004" not in schema
    assert "ts_ms*" in schema["metric_samples"][1]
    assert ch.execute("SELECT count() FROM fsdb_half.metric_samples") == [[1]]
    ch.execute("DROP DATABASE fsdb_half")
