"""Request limits of the serving API, as the 422 messages callers see."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from serving.instances_body import COLUMN, COLUMNS, _bulk_checked, instances_array, parse_instances_body, validated
from serving.schemas import MAX_HISTORY_MINUTES, MAX_INSTANCES, ForecastRequest, RiskRequest, WeightsRequest


def message(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return " | ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.value.errors())


def test_instances_are_limited() -> None:
    many = [{"instance": f"i{i}", "latency_p99_ms": 1.0} for i in range(MAX_INSTANCES + 1)]
    for model in (WeightsRequest, RiskRequest):
        with pytest.raises(ValidationError) as exc:
            model.model_validate({"service": "demo", "instances": many})
        assert "instances: List should have at most 1000 items" in message(exc)
        assert len(model.model_validate({"service": "demo", "instances": many[:-1]}).instances) == MAX_INSTANCES


def test_forecast_history_and_horizon_limits() -> None:
    with pytest.raises(ValidationError) as exc:
        ForecastRequest.model_validate({"service": "demo", "history": [1.0] * (MAX_HISTORY_MINUTES + 1)})
    assert "history: List should have at most 10080 items" in message(exc)
    with pytest.raises(ValidationError) as exc:
        ForecastRequest.model_validate({"service": "demo", "history": [1.0], "horizon": 0})
    assert "horizon: Input should be greater than or equal to 1" in message(exc)
    with pytest.raises(ValidationError) as exc:
        ForecastRequest.model_validate({"service": "demo", "history": [None, None]})
    assert "history has no observed minute" in message(exc)
    with pytest.raises(ValidationError) as exc:
        ForecastRequest.model_validate({"service": "demo", "history": [1.0, -2.0]})
    assert "finite and >= 0" in message(exc)


def test_forecast_history_is_optional_and_nulls_are_kept() -> None:
    assert ForecastRequest.model_validate({"service": "demo"}).history is None
    assert ForecastRequest.model_validate({"service": "demo", "history": [None, 3.0]}).history == [None, 3.0]


def body(instances: list[dict[str, object]], service: str = "demo") -> bytes:
    return orjson.dumps({"service": service, "instances": instances})


def test_bulk_reading_gives_what_pydantic_gives() -> None:
    instances = [{"instance": f"i{i}", "latency_p99_ms": 10.5 + i, "latency_p50_ms": i, "requests": 3 * i,
                  "error_rate": i / 10, "queue": i % 2, "extra": "ignored"} for i in range(10)]
    instances.append({"instance": "defaults", "latency_p99_ms": 7})
    raw = body(instances)
    bulk = _bulk_checked(raw)
    assert bulk is not None
    slow = validated(raw, WeightsRequest)
    assert bulk.service == slow.service and bulk.names == [i.instance for i in slow.instances]
    assert np.array_equal(bulk.features, instances_array(slow.instances, tuple(name for name, _ in COLUMNS)))
    assert bulk.columns(("queue", "latency_p99_ms"))[-1].tolist() == [0.0, 7.0]


@pytest.mark.parametrize("instance", [
    {"instance": "a", "latency_p99_ms": "12.5"},  # numeric string: pydantic accepts it
    {"instance": "a", "latency_p99_ms": 12.5, "requests": 4.0},  # integral float for an int
    {"instance": "a", "latency_p99_ms": 12.5, "queue": True},  # pydantic reads true as 1.0, and so do we
])
def test_lax_input_goes_through_pydantic_and_is_accepted(instance: dict[str, object]) -> None:
    parsed = parse_instances_body(body([instance]), WeightsRequest)
    assert parsed.names == ["a"] and parsed.features[0, COLUMN["latency_p99_ms"]] == 12.5


@pytest.mark.parametrize(("instances", "message"), [
    ([{"instance": "a", "latency_p99_ms": -1}], "Input should be greater than or equal to 0"),
    ([{"instance": "a"}], "Field required"),
    ([{"instance": "a", "latency_p99_ms": 1, "error_rate": 1.5}], "Input should be less than or equal to 1"),
    ([{"instance": "", "latency_p99_ms": 1}], "String should have at least 1 character"),
    ([{"instance": "a", "latency_p99_ms": "fast"}], "Input should be a valid number"),
    ([{"instance": "a", "latency_p99_ms": 1, "requests": 2.5}], "fractional part"),
    ([], "List should have at least 1 item"),
    ([{"instance": f"i{i}", "latency_p99_ms": 1} for i in range(MAX_INSTANCES + 1)], "at most 1000 items"),
])
def test_invalid_bodies_get_pydantic_messages(instances: list[dict[str, object]], message: str) -> None:
    with pytest.raises(RequestValidationError) as exc:
        parse_instances_body(body(instances), RiskRequest)
    errors = exc.value.errors()
    assert errors[0]["loc"][0] == "body"
    assert any(message in e["msg"] for e in errors), errors


def test_a_body_that_is_not_json_gets_a_422() -> None:
    with pytest.raises(RequestValidationError) as exc:
        parse_instances_body(b"{not json", WeightsRequest)
    assert exc.value.errors()[0]["type"] == "json_invalid"


def test_saturation_fields_read_in_bulk_as_pydantic_reads_them() -> None:
    instances = [{"instance": "a", "latency_p99_ms": 9.0, "sessions": 4, "busy": 0.5},
                 {"instance": "b", "latency_p99_ms": 3.0, "resource": 0.25}]
    bulk = _bulk_checked(body(instances))
    assert bulk is not None
    slow = validated(body(instances), WeightsRequest)
    assert np.array_equal(bulk.features, instances_array(slow.instances, tuple(name for name, _ in COLUMNS)))
    assert bulk.columns(("sessions", "busy", "resource")).tolist() == [[4.0, 0.5, 0.0], [0.0, 0.0, 0.25]]
    assert _bulk_checked(body([{"instance": "a", "latency_p99_ms": 1.0, "busy": 1.5}])) is None


@pytest.mark.parametrize("window", [2, 2.5, None])
def test_the_window_length_is_read_in_bulk_and_by_pydantic_alike(window: float | None) -> None:
    data: dict[str, object] = {"service": "demo", "instances": [{"instance": "a", "latency_p99_ms": 1.0}]}
    if window is not None:
        data["window_s"] = window
    raw = orjson.dumps(data)
    fast = _bulk_checked(raw)
    assert fast is not None and fast.window_s == window
    assert parse_instances_body(raw, RiskRequest).rows.window_s == window
    assert WeightsRequest.model_validate(data).window_s == window


@pytest.mark.parametrize("window", [0, -2, "2s"])
def test_a_bad_window_length_gets_a_422(window: object) -> None:
    raw = orjson.dumps({"service": "demo", "window_s": window, "instances": [{"instance": "a", "latency_p99_ms": 1.0}]})
    assert _bulk_checked(raw) is None
    with pytest.raises(RequestValidationError):
        parse_instances_body(raw, WeightsRequest)
