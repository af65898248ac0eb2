"""The pieces of `foresight bench streams` that need no server: input, isolation, metrics, percentiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.benches.streams import (
    isolated_settings,
    parse_metrics,
    percentile,
    replicated_trace,
    sample_events,
    worker_env,
)
from infra.core.datasets import NASA_SAMPLE, dataset_path
from infra.core.settings import load_settings


def test_replicated_trace_is_one_copy_per_second_round_robin_over_instances() -> None:
    chunks = list(replicated_trace(dataset_path(NASA_SAMPLE), 5_000, instances=3))
    assert len(chunks) == 5
    events = [e for c in chunks for e in c]
    assert len(events) >= 4_950 and len({e.id for e in events}) == len(events)
    for k, chunk in enumerate(chunks):
        assert {e.instance for e in chunk} == {f"www{k % 3}"}
        assert {e.ts for e in chunk} == {chunks[0][0].ts + 1000 * k}  # copy k is logged in second k
    latencies = [e.latency_ms for e in events]
    assert min(latencies) > 0 and len(set(latencies)) > 1_000  # the appended rt= was parsed, in ms
    assert 20 < sorted(latencies)[len(latencies) // 2] < 100
    assert latencies == [e.latency_ms for c in replicated_trace(dataset_path(NASA_SAMPLE), 5_000, 3) for e in c]


def test_sample_events_keep_their_1995_dates_in_time_order() -> None:
    events = sample_events(dataset_path(NASA_SAMPLE))
    ts = [e.ts for e in events]
    assert ts == sorted(ts) and ts[0] >= 804_556_800_000 and ts[-1] < 812_505_600_000  # July-August 1995
    assert {(e.service, e.instance) for e in events} == {("nasa", "www0")}


def test_isolated_settings_move_every_name_the_worker_shares(tmp_path: Path) -> None:
    base = load_settings()
    s = isolated_settings(base, "r1", tmp_path / "st", 45678)
    assert {s.kafka.topic_access, s.kafka.topic_features, s.kafka.topic_dlq, s.kafka.topic_metrics}.isdisjoint(
        set(base.kafka.topics))
    assert s.streams.app_id != base.streams.app_id and s.streams.metrics_port == 45678
    assert s.clickhouse.database == "foresight_bench_r1" and s.state == tmp_path / "st"
    assert s.kafka.bootstrap_servers == base.kafka.bootstrap_servers and s.streams.window_s == base.streams.window_s


def test_worker_env_wins_over_file_and_stray_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text('[kafka]\ntopic_access = "from.file"\n[streams]\nwindow_s = 30\n')
    base = load_settings(cfg)
    s = isolated_settings(base, "r2", tmp_path / "st", 45679)
    env = worker_env(s, {"FORESIGHT_KAFKA__TOPIC_ACCESS": "stray", "PATH": "/bin"})
    assert "FORESIGHT_KAFKA__TOPIC_ACCESS" not in env and env["PATH"] == "/bin"
    for key in [k for k in os.environ if k.startswith("FORESIGHT_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    child = load_settings(cfg)
    assert child.kafka.topic_access == "fs.bench.r2.access"
    assert child.streams.window_s == 30 and child.streams.app_id == "foresight-bench-r2"
    assert child.clickhouse.database == "foresight_bench_r2" and child.state == tmp_path / "st"


def test_parse_metrics_keeps_labels_and_skips_comments() -> None:
    text = ('# HELP foresight_stream_events_total x\n# TYPE foresight_stream_events_total counter\n'
            'foresight_stream_events_total 1234.0\nforesight_stream_late_events_total{kind="access"} 3.0\n'
            'foresight_stream_ready 1.0\n')
    assert parse_metrics(text) == {"foresight_stream_events_total": 1234.0,
                                   'foresight_stream_late_events_total{kind="access"}': 3.0,
                                   "foresight_stream_ready": 1.0}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 31)]
    assert percentile(values, 0.99) == 30.0 and percentile(values, 0.5) == 15.0 and percentile([2.0], 0.99) == 2.0


def test_bench_streams_is_a_command_with_its_options() -> None:
    from typer.testing import CliRunner

    from infra.cli import app

    out = CliRunner().invoke(app, ["bench", "streams", "--help"])
    assert out.exit_code == 0, out.output
    for option in ("--events", "--repeat", "--json", "--profile", "--freshness-s"):
        assert option in out.output
