"""The KEDA scaler's answer: trigger metadata, the forecast peak over startup + interval, the fallback."""

from __future__ import annotations

import pytest

from lb_adapters.keda.metric import (
    MetadataError,
    NoLoadError,
    TriggerConfig,
    choose_load,
    forecast_peak,
    observed_peak,
    quantile_column,
)
from serving.schemas import ForecastResponse

T0 = 1_800_000_000.0  # a minute boundary


def trigger(**extra: str) -> TriggerConfig:
    return TriggerConfig.from_metadata({"scalerAddress": "scaler:19106", "service": "shop",
                                        "targetPerReplica": "50", **extra})


def forecast(p90: list[float], next_minute: float = T0) -> ForecastResponse:
    return ForecastResponse(service="shop", model="mlp-quantile", model_version="v1", quantiles=[0.5, 0.9, 0.99],
                            step_s=60, next_minute=next_minute, history_source="clickhouse", history_minutes=30,
                            forecast=[[v / 2, v, v * 2] for v in p90])


def test_metadata_as_keda_passes_it_strings_and_its_own_keys() -> None:
    t = trigger(startupSeconds="120", intervalSeconds="30", quantile="0.95", activationValue="1.5")
    assert (t.service, t.target_per_replica, t.startup_s, t.quantile, t.activation_value) == \
        ("shop", 50.0, 120.0, 0.95, 1.5)
    assert t.lookahead_s == 150 and t.horizon_minutes == 4
    assert TriggerConfig.from_metadata({"service": "Shop_API v2", "targetPerReplica": "1"}).metric_name == \
        "foresight-shop-api-v2"


@pytest.mark.parametrize(("metadata", "names"), [
    ({"targetPerReplica": "50"}, "service"),
    ({"service": "shop"}, "targetPerReplica"),
    ({"service": "shop", "targetPerReplica": "0"}, "targetPerReplica"),
    ({"service": "shop", "targetPerReplica": "fifty"}, "targetPerReplica"),
    ({"service": "shop", "targetPerReplica": "5", "targetPerReplca": "5"}, "targetPerReplca"),
    ({"service": "shop", "targetPerReplica": "5", "quantile": "90"}, "quantile"),
])
def test_bad_metadata_names_the_key(metadata: dict[str, str], names: str) -> None:
    with pytest.raises(MetadataError, match=names):
        TriggerConfig.from_metadata(metadata)


def test_peak_covers_startup_plus_interval_from_now() -> None:
    f = forecast([10, 20, 80, 40, 500])
    # 10 s into the first minute, 90 s ahead: minutes 0 and 1 only; the spike at minute 4 is beyond.
    assert forecast_peak(f, 0.9, T0 + 10, 90) == 20
    # 40 s in, the same 90 s reach into minute 2.
    assert forecast_peak(f, 0.9, T0 + 40, 90) == 80
    # A forecast fetched earlier is read from the minute we are in now.
    assert forecast_peak(f, 0.9, T0 + 185, 30) == 40
    assert forecast_peak(f, 0.5, T0 + 40, 90) == 40
    assert forecast_peak(f, 0.9, T0 + 400, 30) is None


def test_quantile_column_takes_the_level_or_the_next_above() -> None:
    assert quantile_column([0.5, 0.9, 0.99], 0.9) == 1
    assert quantile_column([0.5, 0.9, 0.99], 0.95) == 2
    with pytest.raises(ValueError, match="no quantile"):
        quantile_column([0.5, 0.9], 0.95)


def test_fresh_forecast_answers_and_names_its_model() -> None:
    load = choose_load(trigger(), forecast([10, 60, 30]), T0, None, None, T0 + 30, 120)
    assert (load.source, load.rate) == ("forecast", 60)
    assert "mlp-quantile v1" in load.note


def test_serving_away_keeps_a_recent_forecast_then_falls_back_to_observed() -> None:
    f = forecast([10, 60, 30, 30, 30])
    kept = choose_load(trigger(), f, T0, "serving unreachable", [(0, 600)], T0 + 60, 120)
    assert kept.source == "forecast" and "serving unreachable" in kept.note
    stale = choose_load(trigger(), f, T0, "serving unreachable", [(0, 600), (60, 1800)], T0 + 200, 120)
    assert (stale.source, stale.rate) == ("observed", 30.0)
    assert "stale predictions" in stale.note and "serving unreachable" in stale.note


def test_no_forecast_and_no_observed_load_holds() -> None:
    with pytest.raises(NoLoadError, match="holding"):
        choose_load(trigger(), None, None, "serving answered 503", [], T0, 120)
    assert observed_peak([]) is None


def test_half_a_tls_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from infra.cli import app

    monkeypatch.chdir("/")
    result = CliRunner().invoke(app, ["keda-scaler", "--port", "1"], env={"FORESIGHT_KEDA__TLS_CERT_FILE": "/x.pem"})
    assert result.exit_code == 2
    assert "tls_cert_file and keda.tls_key_file go together" in result.output
