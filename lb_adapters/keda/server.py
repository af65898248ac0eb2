"""The gRPC server KEDA calls: `externalscaler.ExternalScaler`, from the stubs beside this file.

KEDA's `external` trigger calls GetMetricSpec to build the HPA (metric name and target per
replica), GetMetrics on each HPA sync, and IsActive on its polling interval (scale from and to
zero); `external-push` holds StreamIsActive open and expects an answer whenever activity changes.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from lb_adapters.keda import externalscaler_pb2 as pb
from lb_adapters.keda import externalscaler_pb2_grpc as pb_grpc
from lb_adapters.keda.load import LoadSource
from lb_adapters.keda.metric import Load, MetadataError, NoLoadError, TriggerConfig
from lb_adapters.keda.metrics import CALLS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key; with a client CA, clients must present a certificate it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials([(self.key.read_bytes(), self.cert.read_bytes())],
                                           root_certificates=ca, require_client_auth=ca is not None)


class ExternalScaler(pb_grpc.ExternalScalerServicer):
    def __init__(self, source: LoadSource, stream_interval_s: float) -> None:
        self.source = source
        self.stream_interval_s = stream_interval_s

    def _trigger(self, ref: pb.ScaledObjectRef, context: grpc.ServicerContext, method: str) -> TriggerConfig:
        try:
            return TriggerConfig.from_metadata(ref.scalerMetadata)
        except MetadataError as exc:
            CALLS.labels(method, "bad_metadata").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ScaledObject {ref.namespace}/{ref.name}: {exc}")
            raise  # abort raises; this line keeps type checkers sure

    def _load(self, trigger: TriggerConfig, ref: pb.ScaledObjectRef, context: grpc.ServicerContext,
              method: str) -> Load:
        try:
            load = self.source.load(trigger)
        except NoLoadError as exc:
            CALLS.labels(method, "no_load").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE, f"ScaledObject {ref.namespace}/{ref.name}: {exc}")
            raise
        CALLS.labels(method, load.source).inc()
        return load

    def IsActive(self, request: pb.ScaledObjectRef, context: grpc.ServicerContext) -> pb.IsActiveResponse:
        trigger = self._trigger(request, context, "IsActive")
        load = self._load(trigger, request, context, "IsActive")
        return pb.IsActiveResponse(result=load.rate > trigger.activation_value)

    def StreamIsActive(self, request: pb.ScaledObjectRef,
                       context: grpc.ServicerContext) -> Iterator[pb.IsActiveResponse]:
        trigger = self._trigger(request, context, "StreamIsActive")
        done = threading.Event()
        context.add_callback(done.set)
        last: bool | None = None
        while context.is_active():
            try:
                active: bool | None = self.source.load(trigger).rate > trigger.activation_value
                CALLS.labels("StreamIsActive", "ok").inc()
            except NoLoadError as exc:  # hold: push nothing until there is something to say
                CALLS.labels("StreamIsActive", "no_load").inc()
                log.warning("StreamIsActive %s/%s: %s", request.namespace, request.name, exc)
                active = None
            if active is not None and active != last:
                last = active
                yield pb.IsActiveResponse(result=active)
            if done.wait(self.stream_interval_s):
                return

    def GetMetricSpec(self, request: pb.ScaledObjectRef, context: grpc.ServicerContext) -> pb.GetMetricSpecResponse:
        trigger = self._trigger(request, context, "GetMetricSpec")
        CALLS.labels("GetMetricSpec", "ok").inc()
        target = trigger.target_per_replica
        return pb.GetMetricSpecResponse(metricSpecs=[pb.MetricSpec(
            metricName=trigger.metric_name, targetSize=max(1, round(target)), targetSizeFloat=target)])

    def GetMetrics(self, request: pb.GetMetricsRequest, context: grpc.ServicerContext) -> pb.GetMetricsResponse:
        ref = request.scaledObjectRef
        trigger = self._trigger(ref, context, "GetMetrics")
        load = self._load(trigger, ref, context, "GetMetrics")
        log.debug("%s/%s %s: %.2f req/s from %s (%s)", ref.namespace, ref.name, trigger.service, load.rate,
                  load.source, load.note)
        return pb.GetMetricsResponse(metricValues=[pb.MetricValue(
            metricName=request.metricName or trigger.metric_name, metricValue=math.ceil(load.rate),
            metricValueFloat=load.rate)])


def build_server(scaler: ExternalScaler, host: str, port: int, tls: TlsFiles | None = None,
                 max_workers: int = 16) -> tuple[grpc.Server, int]:
    """A started-later server with the scaler on host:port (0 = any free port); returns the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="keda"))
    pb_grpc.add_ExternalScalerServicer_to_server(scaler, server)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address} (port in use, or no such address)")
    return server, bound
