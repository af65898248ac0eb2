"""The KEDA scaler over real gRPC on a port of its own (no stack): LoadSource asks serving through the one
serving client base (lb_adapters.predictions), with the stack token, and KEDA's three calls answer from it."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest

from lb_adapters.keda import externalscaler_pb2 as pb
from lb_adapters.keda import externalscaler_pb2_grpc as pb_grpc
from lb_adapters.keda.load import LoadSource
from lb_adapters.keda.server import ExternalScaler, build_server
from lb_adapters.predictions import ForecastClient
from serving.schemas import ForecastResponse

TOKEN = "keda-test-token"
META = {"scalerAddress": "unused:1", "service": "shop", "targetPerReplica": "50"}


def clickhouse_away() -> object:
    raise OSError("no ClickHouse in this test")


@pytest.fixture()
def served() -> Iterator[tuple[pb_grpc.ExternalScalerStub, list[httpx.Request], dict[str, int]]]:
    seen: list[httpx.Request] = []
    answer = {"status": 200}

    def serving(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if answer["status"] != 200:
            return httpx.Response(answer["status"], text="serving says no")
        minute = math.floor(time.time() / 60) * 60
        body = ForecastResponse(service="shop", model="mlp-quantile", model_version="v1", quantiles=[0.5, 0.9],
                                step_s=60, next_minute=minute, history_source="clickhouse", history_minutes=30,
                                forecast=[[60.0, 120.0]] * 10)
        return httpx.Response(200, content=body.model_dump_json())

    client = ForecastClient("http://serving.test", TOKEN, timeout_s=5)
    client.http = httpx.Client(base_url="http://serving.test", headers=client.http.headers,
                               transport=httpx.MockTransport(serving))
    source = LoadSource(client, clickhouse_away, "foresight", forecast_max_age_s=60.0, observed_minutes=5)
    server, port = build_server(ExternalScaler(source, stream_interval_s=0.2), "127.0.0.1", 0)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.ExternalScalerStub(channel), seen, answer
    finally:
        channel.close()
        server.stop(grace=None)
        client.close()


def test_spec_metrics_and_activity_come_from_the_forecast(
        served: tuple[pb_grpc.ExternalScalerStub, list[httpx.Request], dict[str, int]]) -> None:
    stub, seen, _ = served
    ref = pb.ScaledObjectRef(name="web", namespace="shop", scalerMetadata=META)
    [spec] = stub.GetMetricSpec(ref, timeout=10).metricSpecs
    assert spec.targetSizeFloat == 50 and spec.metricName == "foresight-shop"
    [value] = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName=spec.metricName),
                              timeout=10).metricValues
    assert value.metricValueFloat == 120.0 and value.metricValue == 120
    assert stub.IsActive(ref, timeout=10).result is True
    assert seen and all(r.url.path == "/v1/forecast" for r in seen)
    assert {r.headers["authorization"] for r in seen} == {f"Bearer {TOKEN}"}


def test_bad_metadata_is_invalid_argument_and_no_load_is_unavailable(
        served: tuple[pb_grpc.ExternalScalerStub, list[httpx.Request], dict[str, int]]) -> None:
    stub, _, answer = served
    bad = pb.ScaledObjectRef(name="web", namespace="shop", scalerMetadata={"service": "shop"})
    with pytest.raises(grpc.RpcError) as invalid:
        stub.GetMetricSpec(bad, timeout=10)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "targetPerReplica" in (invalid.value.details() or "")
    answer["status"] = 401  # serving refuses and ClickHouse is away: nothing to answer with
    ref = pb.ScaledObjectRef(name="web", namespace="shop", scalerMetadata=META)
    with pytest.raises(grpc.RpcError) as unavailable:
        stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName="foresight-shop"), timeout=10)
    assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
