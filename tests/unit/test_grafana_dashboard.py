"""The Grafana dashboard: generated, checked in as generated, and reading only series that exist."""

from __future__ import annotations

import re
from pathlib import Path

from grafana_foundation_sdk.models.dashboard import Dashboard

from infra.dashboards.grafana import PANELS, build_dashboard, dashboard_json
from infra.stack.prometheus import recording_rules

REPO = Path(__file__).resolve().parents[2]
CHECKED_IN = REPO / "infra" / "dashboards" / "foresight.json"
STAGES = ("ingest", "streams", "serving", "training", "lb_adapters", "infra")
DEFINED = re.compile(r'(Counter|Gauge|Histogram|Summary)\(\s*"(foresight_[a-z0-9_]+)"')
SERIES = re.compile(r"\b(foresight(?:_|:)[a-zA-Z0-9_:]+)")


def _exported_names() -> set[str]:
    """Every series name our code defines with prometheus_client (a counter also as `_total`)."""
    names: set[str] = set()
    for stage in STAGES:
        for path in (REPO / stage).rglob("*.py"):
            for kind, name in DEFINED.findall(path.read_text()):
                base = name.removesuffix("_total")
                names |= {base, f"{base}_total"} if kind == "Counter" else {name}
                if kind in ("Histogram", "Summary"):
                    names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_the_checked_in_json_is_what_the_code_generates() -> None:
    assert CHECKED_IN.read_text() == dashboard_json(), \
        "stale: run `foresight grafana --out infra/dashboards/foresight.json`"


def test_it_parses_as_grafanas_dashboard_model_with_unique_panel_ids() -> None:
    model = Dashboard.from_json(build_dashboard())
    assert model.title == "Foresight"
    panels = build_dashboard()["panels"]
    assert isinstance(panels, list)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))


def test_every_series_a_panel_reads_is_exported_or_recorded() -> None:
    recorded = {r["record"] for g in recording_rules(0.005)["groups"] for r in g["rules"] if "record" in r}
    known = _exported_names() | recorded
    read = {name for spec in PANELS for q in spec.queries for name in SERIES.findall(q.expr)}
    assert read, "the panels read no Foresight series"
    assert read - known == set()


def test_the_panels_cover_what_an_operator_watches() -> None:
    rows = {spec.row for spec in PANELS}
    assert {"Traffic", "Replicas", "Instances", "Decisions", "SLO", "Health"} <= rows
