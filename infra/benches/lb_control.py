"""The Foresight arm of `foresight bench lb`: a control loop over a private HAProxy.

Every round (1-2 s) it reads each server's counters from HAProxy's runtime API (`show stat`:
stot, hrsp_5xx, eresp, scur, qcur, status) and each backend's `/metrics` (the latency histogram and
the queue and resource gauges, read with prometheus_client's parser), turns the change over the last
`window_s` into one `InstanceFeatures` per server, and then runs Foresight's own code on it:

- weights: the serving weights deployment's model code, in this process, through the adapter's
  `WeightController` (policy `decide_weights`, actuator `HAProxyRuntime.set_weight`);
- drains: the serving risk deployment's model code, in this process, then the pure drain policy
  `decide_drains` (hysteresis, max drained fraction, never the last instance, re-admission, and no
  drain the others lack the capacity for: each instance's capacity estimated from its served rate and
  busy share, `policies.capacity`), applied with `HAProxyRuntime.set_server_state` (`drain` / `ready`).
  A drain refused for capacity holds the instance at the low weight that gives it the share of the
  load the others cannot take (the weight controller caps it there), and is recorded like a drain.
  Drains are decided before weights in a round, so a hold applies in the round that decided it.

In process, not through Ray Serve: the deployments' replica classes (`WeightsModelReplica`,
`RiskModelReplica`, with the registry's newest `latency` / `risk` version or their baselines) are
called through the unbatched methods under their `@serve.batch` ones, so the bench runs the code
serving runs without a Ray head on the bench's two cores. The answers name the model, as serving's do.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infra.core.contracts import HAPROXY_MAX_WEIGHT
from infra.core.service_registry import InstanceRecord, InstanceState
from infra.core.settings import AdapterSettings
from lb_adapters.actuators.base import ActuatorError
from lb_adapters.actuators.haproxy import HAProxyRuntime
from lb_adapters.controller import WeightController
from lb_adapters.policies.capacity import (
    ALPHA,
    Served,
    capacities,
    guard_load,
    hold_weight,
    observe,
    update_served,
)
from lb_adapters.policies.drain import DrainKnobs, DrainState, decide_drains
from lb_adapters.schemas import Decision, PredictionRecord
from serving.schemas import (
    InstanceFeatures,
    InstanceRisk,
    InstanceWeight,
    RiskRequest,
    RiskResponse,
    WeightsRequest,
    WeightsResponse,
)

log = logging.getLogger("foresight.bench.lb")

SERVICE = "bench"
UNANSWERED_S = 10.0  # the latency a window gets when requests reached a server and none was answered


# -- reading the backends' /metrics ----------------------------------------------------------------

@dataclass(frozen=True)
class BackendSnapshot:
    """One scrape of a pool backend's `/metrics`: cumulative counters and current gauges."""

    buckets: tuple[tuple[float, float], ...] = ()  # (upper bound in s, cumulative count), ascending, +Inf last
    answered: float = 0.0
    errors: float = 0.0  # answered with 5xx
    in_flight: float = 0.0
    queue: float = 0.0
    busy: float = 0.0
    resource: float = 0.0


def parse_backend_metrics(text: str) -> BackendSnapshot:
    buckets: list[tuple[float, float]] = []
    answered = errors = in_flight = queue = busy = resource = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "foresight_backend_latency_seconds_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name == "foresight_backend_requests_total":
                answered += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    errors += sample.value
            elif sample.name == "foresight_backend_in_flight":
                in_flight = sample.value
            elif sample.name == "foresight_backend_queue":
                queue = sample.value
            elif sample.name == "foresight_backend_busy_workers_ratio":
                busy = sample.value
            elif sample.name == "foresight_backend_resource_ratio":
                resource = sample.value
    return BackendSnapshot(tuple(sorted(buckets)), answered, errors, in_flight, queue, busy, resource)


def bucket_quantile(q: float, before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]]
                    ) -> float | None:
    """The q-quantile (seconds) of the observations between two scrapes of a cumulative histogram,
    interpolated linearly inside its bucket (as PromQL's histogram_quantile); None with no observation.
    A value in the +Inf bucket is given as the largest finite bound."""
    old = dict(before)
    counts = [(le, c - old.get(le, 0.0)) for le, c in after]
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cum in counts:
        if cum >= rank:
            if math.isinf(le):
                return lower
            inside = cum - below
            return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = le, cum
    return lower


# -- one server at one moment, and the window between two moments -----------------------------------

@dataclass(frozen=True)
class ServerSample:
    stot: int
    hrsp_5xx: int
    eresp: int
    scur: int
    qcur: int
    status: str  # HAProxy's: UP, DOWN, DRAIN, MAINT, ...
    backend: BackendSnapshot | None  # None: its /metrics did not answer


def server_sample(row: Mapping[str, str], backend: BackendSnapshot | None) -> ServerSample:
    def num(key: str) -> int:
        value = row.get(key, "")
        return int(value) if value.strip().lstrip("-").isdigit() else 0

    return ServerSample(num("stot"), num("hrsp_5xx"), num("eresp"), num("scur"), num("qcur"),
                        row.get("status", ""), backend)


def window_features(instance: str, old: ServerSample, new: ServerSample) -> InstanceFeatures | None:
    """The window between two samples of one server, as the models read it; None (unknown) when no
    request reached it in the window: a drained or dead server has no recent window.

    requests and errors come from HAProxy (what clients saw: 5xx answers and failed responses);
    latency p50/p99 from the backend's histogram (queue + service time); the queue is HAProxy's plus
    the backend's own (servers here have no maxconn, so the backend is where requests wait); sessions,
    resource and busy are the larger of the two samples (HAProxy's scur, the backend's gauges)."""
    requests = new.stot - old.stot
    if requests <= 0:
        return None
    errors = (new.hrsp_5xx - old.hrsp_5xx) + (new.eresp - old.eresp)
    p50_s = p99_s = None
    queue = float(new.qcur)
    if new.backend is not None:
        before = old.backend.buckets if old.backend is not None else ()
        p50_s = bucket_quantile(0.5, before, new.backend.buckets)
        p99_s = bucket_quantile(0.99, before, new.backend.buckets)
        queue += new.backend.queue
    if p99_s is None:  # requests went there, but the backend answered none in the window: it hangs or is gone
        p50_s = p99_s = UNANSWERED_S
    gauges = [b for b in (old.backend, new.backend) if b is not None]
    return InstanceFeatures(instance=instance, latency_p99_ms=p99_s * 1000, latency_p50_ms=(p50_s or 0.0) * 1000,
                            requests=requests, error_rate=min(1.0, max(0.0, errors / requests)), queue=queue,
                            sessions=float(max(old.scur, new.scur)),  # the window's peaks, as the stream's windows
                            resource=min(1.0, max((b.resource for b in gauges), default=0.0)),
                            busy=min(1.0, max(0.0, max((b.busy for b in gauges), default=0.0))))


# -- the serving code, in this process ---------------------------------------------------------------

class InProcessModels:
    """The serving deployments' model code, called in this process (see the module's docstring)."""

    def __init__(self, registry_root: Path | None = None, poll_s: float = 3600.0) -> None:
        """`registry_root`: the model registry the replicas load their newest `latency` and `risk` versions
        from (None: an empty one, so the baselines answer)."""
        import tempfile

        from serving.risk_model import RiskModelReplica
        from serving.weights_model import WeightsModelReplica

        root = registry_root or Path(tempfile.mkdtemp(prefix="fs-bench-lb-models-"))
        self._weights_replica = WeightsModelReplica(root, poll_s)
        self._risk_replica = RiskModelReplica(root, poll_s)

    def weights(self, request: WeightsRequest) -> WeightsResponse:
        from serving.instances_body import COLUMN_NAMES, Rows, instances_array

        # the replicas read every InstanceFeatures column (instances_body.COLUMNS), as serving's front passes them
        rows = Rows(instances_array(request.instances, COLUMN_NAMES), request.window_s)
        (weighed,) = self._weights_replica.weigh_batch([rows])
        return WeightsResponse(service=request.service, model=weighed.model, model_version=weighed.version,
                               weights=[InstanceWeight(instance=i.instance, weight=w)
                                        for i, w in zip(request.instances, weighed.weights, strict=True)],
                               note=weighed.note)

    def risk(self, request: RiskRequest) -> RiskResponse:
        from serving.instances_body import COLUMN_NAMES, Rows, instances_array

        rows = Rows(instances_array(request.instances, COLUMN_NAMES), request.window_s)
        (scored,) = self._risk_replica.score_batch([rows])
        return RiskResponse(service=request.service, model=scored.model, model_version=scored.version,
                            risks=[InstanceRisk(instance=i.instance, risk=min(1.0, max(0.0, r)), reasons=why)
                                   for i, r, why in zip(request.instances, scored.risks, scored.reasons,
                                                        strict=True)], note=scored.note)


class _Latest:
    """FeatureSource of the weight controller: the windows of the current round."""

    def __init__(self) -> None:
        self.windows: list[InstanceFeatures] = []

    def for_service(self, service: str, max_age_s: int) -> list[InstanceFeatures]:
        return list(self.windows)


class _Collect:
    """DecisionSink of the bench: keeps the decisions (the bench has no Kafka or ClickHouse)."""

    def __init__(self) -> None:
        self.decisions: list[Decision] = []

    def publish(self, decisions: list[Decision], predictions: Sequence[PredictionRecord] = ()) -> None:
        self.decisions.extend(decisions)


class Stoppable(Protocol):
    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


# -- the loop ------------------------------------------------------------------------------------------

@dataclass
class ControlTrace:
    """What the Foresight arm did, for the bench's report."""

    rounds: int = 0
    weight_changes: int = 0
    weight_failures: int = 0
    drains: list[dict[str, object]] = field(default_factory=list)  # {t_s, instance, action, risk, reason}
    models: dict[str, str] = field(default_factory=dict)  # kind -> model@version that answered
    notes: dict[str, str] = field(default_factory=dict)  # kind -> serving's note (baseline why, assumptions)
    holds: int = 0  # rounds in which a drain refused for capacity held an instance at a low weight
    errors: list[str] = field(default_factory=list)
    round_ms: list[float] = field(default_factory=list)
    last_weights: dict[str, int] = field(default_factory=dict)


def record_state(status: str, drained_by_us: bool) -> InstanceState:
    """The registry state a server's HAProxy status stands for: DRAIN -> draining, UP -> ready, and a
    server HAProxy itself took out (DOWN, MAINT, NOLB) is out of service (`drained`)."""
    if status.startswith("DRAIN") or drained_by_us:
        return "draining"
    if status.startswith("UP"):
        return "ready"
    return "drained"


class ForesightController:
    def __init__(self, runtime: HAProxyRuntime, backend: str, metrics_urls: Mapping[str, str], *,
                 adapter: AdapterSettings, knobs: DrainKnobs, window_s: float = 2.0, interval_s: float = 1.0,
                 models: InProcessModels | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime, self.backend, self.metrics_urls = runtime, backend, dict(metrics_urls)
        self.knobs, self.window_s, self.interval_s, self.clock = knobs, window_s, interval_s, clock
        self.models = models or InProcessModels()
        self.latest = _Latest()
        self.sink = _Collect()
        self.weights = WeightController(self.latest, self.models, runtime, self.sink, adapter, backend,
                                        window_s=window_s, overload=knobs)
        self.served: dict[str, Served] = {}  # the capacity estimate's averages (policies.capacity)
        self.history: deque[tuple[float, dict[str, ServerSample]]] = deque()
        self.drain_state = DrainState()
        self.drained: dict[str, float] = {}  # server -> when this controller drained it (clock)
        self.trace = ControlTrace()
        self.t0 = clock()
        self._http = httpx.Client(timeout=0.5)

    def _scrape(self, name: str) -> BackendSnapshot | None:
        try:
            return parse_backend_metrics(self._http.get(self.metrics_urls[name]).text)
        except (httpx.HTTPError, ValueError):
            return None

    def step(self) -> None:
        started = self.clock()
        stats = self.runtime.server_stats(self.backend)
        now = self.clock()
        samples = {name: server_sample(row, self._scrape(name)) for name, row in stats.items()}
        self.history.append((now, samples))
        while len(self.history) > 1 and now - self.history[1][0] >= self.window_s:
            self.history.popleft()
        then, old = self.history[0]
        self.trace.rounds += 1
        if then == now:
            return  # the first round: no window yet
        # A drained server's window counts only once it begins after the drain: the requests it still got
        # while the drain was being applied are no evidence of health (they re-admitted it at once).
        windows = [w for name, s in samples.items() if name in old and then >= self.drained.get(name, -math.inf)
                   if (w := window_features(name, old[name], s)) is not None]
        self.latest.windows = windows
        busy_now = {name: s.backend.busy for name, s in samples.items() if s.backend is not None}
        holds = self._drains(windows, stats, busy_now)
        if windows:
            report = self.weights.step(SERVICE, holds)
            if report.response is not None:
                self.trace.models["weights"] = f"{report.response.model}@{report.response.model_version}"
                if report.response.note:
                    self.trace.notes["weights"] = report.response.note
            for d in report.decisions:
                self.trace.weight_changes += d.outcome == "applied"
                self.trace.weight_failures += d.outcome.startswith("failed")
            self.trace.last_weights = dict(report.after)
        self.trace.round_ms.append((self.clock() - started) * 1000)

    def _drains(self, windows: list[InstanceFeatures], stats: Mapping[str, Mapping[str, str]],
                busy_now: Mapping[str, float] | None = None) -> dict[str, int]:
        """Drain and re-admission decisions, carried out; returns the holds (instance -> weight cap) of the
        drains refused for capacity. `busy_now`: each backend's busy gauge read this round (the capacity
        estimate's utilisation sample)."""
        risk: dict[str, float | None] = dict.fromkeys(stats, None)
        why: dict[str, list[str]] = {}
        if windows:
            scored = self.models.risk(RiskRequest(service=SERVICE, instances=windows, window_s=self.window_s))
            self.trace.models["risk"] = f"{scored.model}@{scored.model_version}"
            if scored.note:
                self.trace.notes["risk"] = scored.note
            risk.update({r.instance: r.risk for r in scored.risks})
            why = {r.instance: r.reasons for r in scored.risks}
        self.served = update_served(self.served, observe(windows, self.window_s, busy_now), ALPHA)
        load_rps = guard_load(sum(w.requests for w in windows) / self.window_s if windows else None, self.served)
        records = {name: InstanceRecord(address="127.0.0.1", port=1, started_at=0, weight=0,
                                        state=record_state(row.get("status", ""), name in self.drained),
                                        metadata={"set_by": "controller"} if name in self.drained else {})
                   for name, row in stats.items()}
        decisions, self.drain_state = decide_drains(risk, records, self.drain_state, self.knobs, load_rps,
                                                    capacities(self.served, self.knobs.min_utilisation))
        holds: dict[str, int] = {}
        weights = {name: int(row["weight"]) for name, row in stats.items() if row.get("weight", "").isdigit()}
        for d in decisions:
            entry: dict[str, object] = {"t_s": round(self.clock() - self.t0, 1), "instance": d.instance,
                                        "action": d.action, "risk": None if d.risk is None else round(d.risk, 3),
                                        "reason": d.reason, "model_reasons": why.get(d.instance, [])}
            if d.action in ("refuse", "hold") and d.hold_share is not None:
                others = {n: w for n, w in weights.items() if n != d.instance and n not in self.drained
                          and records[n].state == "ready"}
                holds[d.instance] = hold_weight(d.hold_share, others, 1, HAPROXY_MAX_WEIGHT)
                entry["hold_weight"] = holds[d.instance]
                self.trace.holds += 1
            if d.action in ("drain", "readmit"):
                try:
                    self.runtime.set_server_state(self.backend, d.instance, "drain" if d.action == "drain" else "ready")
                except ActuatorError as exc:
                    entry["outcome"] = f"failed: {exc}"
                else:
                    entry["outcome"] = "applied"
                    if d.action == "drain":
                        self.drained[d.instance] = self.clock()
                    else:
                        self.drained.pop(d.instance, None)
            log.info("%s %s: %s", d.action, d.instance, d.reason)
            self.trace.drains.append(entry)
        return holds

    def run(self, stop: Stoppable) -> None:
        """Rounds every `interval_s` until `stop`; a failed round is recorded and the loop goes on."""
        self.t0 = self.clock()
        while not stop.is_set():
            began = self.clock()
            try:
                self.step()
            except Exception as exc:  # the bench must finish its arm; the failure is in the report
                if len(self.trace.errors) < 20:
                    self.trace.errors.append(f"t={began - self.t0:.1f}s: {type(exc).__name__}: {exc}")
            stop.wait(max(0.0, self.interval_s - (self.clock() - began)))
        self._http.close()


@dataclass(frozen=True)
class ControlSpec:
    """What the control process needs (picklable: it crosses into a spawned process)."""

    socket: Path
    backend: str
    metrics_urls: dict[str, str]
    adapter: AdapterSettings
    knobs: DrainKnobs
    window_s: float
    interval_s: float
    registry_root: Path | None = None


def control_process(spec: ControlSpec, ready: Any, go: Any, stop: Any, out: Any) -> None:
    """The Foresight loop in a process of its own, so that its rounds (model calls, scrapes) never take
    the load client's interpreter lock: the client measures the same way in every arm. Loads the models,
    sets `ready`, starts at `go`, runs until `stop`, then puts its trace (a dict) on `out`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    controller = ForesightController(HAProxyRuntime(spec.socket), spec.backend, spec.metrics_urls,
                                     adapter=spec.adapter, knobs=spec.knobs, window_s=spec.window_s,
                                     interval_s=spec.interval_s, models=InProcessModels(spec.registry_root))
    ready.set()
    go.wait()
    try:
        controller.run(stop)
    finally:
        out.put(asdict(controller.trace))
