"""The stack's Prometheus config: generated from the components, valid for promtool, rules correct."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.core.settings import PrometheusSettings, Settings
from infra.stack.components import build_components
from infra.stack.prometheus import RULES_FILE, scrape_configs, write_prometheus_config

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool missing: apt-get install prometheus (./run does)")


def _prepared(tmp_path: Path) -> tuple[Path, list[str]]:
    components = build_components(Settings(state_dir=tmp_path))
    prom = next(c for c in components if c.name == "prometheus")
    prom.prepare()
    return tmp_path / "prometheus" / "prometheus.yml", [c.name for c in components if c.metrics_url and c is not prom]


def test_every_component_with_metrics_is_a_scrape_job(tmp_path: Path) -> None:
    path, scraped = _prepared(tmp_path)
    jobs = {j["job_name"]: j for j in yaml.safe_load(path.read_text())["scrape_configs"]}
    assert set(jobs) == set(scraped)
    assert {"stream-worker", "record-sink", "serving", "haproxy", "etcd", "ingest-syslog"} <= set(jobs)
    assert jobs["haproxy"]["static_configs"][0]["targets"] == ["127.0.0.1:18404"]
    assert jobs["serving"]["metrics_path"] == "/metrics"


def test_a_metrics_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="component bad"):
        scrape_configs({"bad": "udp://127.0.0.1:1"}, 5)


@needs_promtool
def test_the_generated_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    path, _ = _prepared(tmp_path)
    proc = subprocess.run([str(PROMTOOL), "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


@needs_promtool
def test_slo_rules_compute_the_error_ratio_and_burn_rate(tmp_path: Path) -> None:
    """promtool's rule unit test: 1 request in 100 fails; with a 0.5% budget that burns it 2x."""
    write_prometheus_config(tmp_path, PrometheusSettings(slo_error_ratio=0.005), {})
    series = "haproxy_backend_http_responses_total"
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": [RULES_FILE],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f'{series}{{proxy="web",code="2xx"}}', "values": "0+594x10"},
                {"series": f'{series}{{proxy="web",code="5xx"}}', "values": "0+6x10"},
            ],
            "promql_expr_test": [
                {"expr": "foresight:http_errors:ratio_rate5m", "eval_time": "10m",
                 "exp_samples": [{"labels": 'foresight:http_errors:ratio_rate5m{proxy="web"}', "value": 0.01}]},
                {"expr": "foresight:slo_error_budget_burn:rate5m", "eval_time": "10m",
                 "exp_samples": [{"labels": 'foresight:slo_error_budget_burn:rate5m{proxy="web"}', "value": 2}]},
                {"expr": "foresight:http_requests:rate1m", "eval_time": "10m",
                 "exp_samples": [{"labels": 'foresight:http_requests:rate1m{proxy="web"}', "value": 10}]},
            ],
        }],
    }))
    proc = subprocess.run([str(PROMTOOL), "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
