"""The stack's Prometheus: its scrape config, generated from the components, and the SLO rules.

Recording rules turn HAProxy's exporter counters into the figures an operator watches (request
rate, 5xx ratio, error-budget burn) so that dashboards and alerts read one precomputed series.
The burn-rate alert follows the multi-window pattern: a fast burn (14.4x the budget) over both 1 h
and 5 min, so it fires quickly on a real outage and clears quickly after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from infra.core.settings import PrometheusSettings

RULES_FILE = "foresight-rules.yml"
# HAProxy's built-in exporter: per-backend responses by class (`code="5xx"`), label `proxy` = backend.
RESPONSES = "haproxy_backend_http_responses_total"


def scrape_configs(targets: Mapping[str, str], interval_s: float) -> list[dict[str, Any]]:
    """One job per component, named after it, so `up{job="stream-worker"}` says which one is down."""
    jobs = []
    for name, url in sorted(targets.items()):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"component {name}: metrics URL {url!r} is not an http(s) URL")
        jobs.append({
            "job_name": name,
            "scheme": parts.scheme,
            "metrics_path": parts.path or "/metrics",
            "scrape_interval": f"{interval_s:g}s",
            "static_configs": [{"targets": [parts.netloc], "labels": {"component": name}}],
        })
    return jobs


def recording_rules(slo_error_ratio: float) -> dict[str, Any]:
    budget = f"{slo_error_ratio:g}"

    def error_ratio(window: str) -> str:
        return (f'sum by (proxy) (rate({RESPONSES}{{code="5xx"}}[{window}])) / '
                f"clamp_min(sum by (proxy) (rate({RESPONSES}[{window}])), 1e-9)")

    return {"groups": [
        {"name": "foresight-slo", "rules": [
            {"record": "foresight:http_requests:rate1m", "expr": f"sum by (proxy) (rate({RESPONSES}[1m]))"},
            {"record": "foresight:http_errors:ratio_rate5m", "expr": error_ratio("5m")},
            {"record": "foresight:http_errors:ratio_rate1h", "expr": error_ratio("1h")},
            {"record": "foresight:slo_error_budget_burn:rate5m",
             "expr": f"foresight:http_errors:ratio_rate5m / {budget}"},
            {"record": "foresight:slo_error_budget_burn:rate1h",
             "expr": f"foresight:http_errors:ratio_rate1h / {budget}"},
            {"record": "foresight:components_up:ratio", "expr": "avg(up)"},
            {"alert": "ForesightErrorBudgetFastBurn",
             "expr": "foresight:slo_error_budget_burn:rate1h > 14.4 and foresight:slo_error_budget_burn:rate5m > 14.4",
             "labels": {"severity": "page"},
             "annotations": {"summary": "{{ $labels.proxy }} burns its 5xx error budget 14.4x too fast"}},
            {"alert": "ForesightComponentDown", "expr": "up == 0", "for": "1m",
             "labels": {"severity": "ticket"},
             "annotations": {"summary": "{{ $labels.job }} does not answer its /metrics"}},
        ]},
    ]}


def write_prometheus_config(folder: Path, cfg: PrometheusSettings, targets: Mapping[str, str]) -> Path:
    """Write prometheus.yml and the rules beside it; returns the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RULES_FILE).write_text(yaml.safe_dump(recording_rules(cfg.slo_error_ratio), sort_keys=False))
    config = {
        "global": {"scrape_interval": f"{cfg.scrape_interval_s:g}s",
                   "evaluation_interval": f"{cfg.scrape_interval_s:g}s"},
        "rule_files": [RULES_FILE],
        "scrape_configs": scrape_configs(targets, cfg.scrape_interval_s),
    }
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
