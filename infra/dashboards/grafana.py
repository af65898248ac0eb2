"""The Grafana dashboard, generated from code with grafana-foundation-sdk, ready to import.

One row per concern, the same panels as the live dashboard: traffic against its forecast band,
replicas beside the shadow HPA, instance weights and risk, the decisions, the SLO, component
health. `PANELS` is data so that a test can check that every series a panel reads is one our
processes (or HAProxy's exporter, or the stack's recording rules) actually export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
UID = "foresight-overview"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    row: str
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"


S = 'service="$service"'
PANELS: tuple[PanelSpec, ...] = (
    PanelSpec("Traffic", "Request rate and forecast",
              "Requests per second through the balancer, what the autoscaler observed, and the forecast peak "
              "(at the quantile it used) that it provisioned for.",
              (Query('foresight:http_requests:rate1m{proxy="$service"}', "through the balancer"),
               Query(f"foresight_autoscaler_observed_rps{{{S}}}", "observed by the autoscaler"),
               Query(f"foresight_autoscaler_forecast_rps{{{S}}}", "forecast peak provisioned for")), "reqps"),
    PanelSpec("Replicas", "Desired and ready replicas, beside the shadow HPA",
              "What the predictive policy wants, what runs and answers, and what the reactive "
              "HPA-style policy would have asked for in its place.",
              (Query(f'foresight_autoscaler_replicas{{{S},kind="desired"}}', "desired"),
               Query(f'foresight_autoscaler_replicas{{{S},kind="ready"}}', "ready"),
               Query(f'foresight_autoscaler_replicas{{{S},kind="shadow_reactive"}}', "shadow HPA"))),
    PanelSpec("Replicas", "Fallback active",
              "1 while predictions are stale or serving is down and the reactive policy decides.",
              (Query(f"foresight_autoscaler_fallback_active{{{S}}}", "fallback"),), kind="stat"),
    PanelSpec("Instances", "Instance weights",
              "HAProxy weight of each instance, as the weight controller left it.",
              (Query('foresight_adapter_weight{backend="$service"}', "{{server}}"),)),
    PanelSpec("Decisions", "Decisions by actuator and outcome",
              "Every change the control plane made or refused, per 5 minutes.",
              (Query("sum by (actuator, outcome) (increase(foresight_adapter_decisions_total[5m]))",
                     "{{actuator}} {{outcome}}"),
               Query(f"sum by (outcome) (increase(foresight_autoscaler_decisions_total{{{S}}}[5m]))",
                     "scaler {{outcome}}"))),
    PanelSpec("SLO", "5xx ratio and error-budget burn",
              "The share of failed requests, and how fast the error budget burns (1 = on budget).",
              (Query('foresight:http_errors:ratio_rate5m{proxy="$service"}', "5xx ratio (5 m)"),
               Query('foresight:slo_error_budget_burn:rate1h{proxy="$service"}', "burn (1 h)"))),
    PanelSpec("Health", "Components up",
              "1 for every component whose /metrics answers the stack's Prometheus.",
              (Query("up", "{{job}}"),)),
    PanelSpec("Health", "Stream freshness and lag",
              "Windows the stream worker still holds open and events it counted late.",
              (Query("foresight_stream_open_windows", "open windows"),
               Query("rate(foresight_stream_late_events_total[5m])", "late events/s"))),
)


def _panel(spec: PanelSpec, panel_id: int, width: int) -> gts.Panel | gstat.Panel:
    panel = (gstat.Panel() if spec.kind == "stat" else gts.Panel().fill_opacity(10))
    panel = panel.id(panel_id).title(spec.title).description(spec.description).datasource(DATASOURCE)
    panel = panel.unit(spec.unit).height(8).span(width)
    for i, query in enumerate(spec.queries):
        panel = panel.with_target(gprom.Dataquery().expr(query.expr).legend_format(query.legend)
                                  .ref_id(chr(ord("A") + i)).datasource(DATASOURCE))
    return panel


def build_dashboard() -> dict[str, object]:
    """The dashboard as Grafana's JSON model (a dict, ready for `json.dumps`)."""
    board = (gdash.Dashboard("Foresight").uid(UID).tags(["foresight"]).refresh("10s").time("now-1h", "now")
             .description("Predictive scaling, draining and weights: what Foresight saw, predicted and did.")
             .with_variable(gdash.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
             .with_variable(gdash.QueryVariable("service").label("Service").datasource(DATASOURCE)
                            .query("label_values(foresight_autoscaler_replicas, service)")))
    panel_id = 0
    for row in dict.fromkeys(spec.row for spec in PANELS):
        panel_id += 1
        board = board.with_row(gdash.Row(row).id(panel_id))
        specs = [spec for spec in PANELS if spec.row == row]
        stats = sum(spec.kind == "stat" for spec in specs)
        for spec in specs:  # a row's stats sit at the right of its time series, 6 columns each
            panel_id += 1
            width = 6 if spec.kind == "stat" else (24 - 6 * stats) // max(1, len(specs) - stats)
            board = board.with_panel(_panel(spec, panel_id, width))
    built: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return built


def dashboard_json() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"
