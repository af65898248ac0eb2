"""Pure parts of `foresight bench lb`: HAProxy's `show stat`, the backends' /metrics, the feature
window between two rounds, and the result's ratios and targets."""

import math

import pytest
from prometheus_client import generate_latest

from infra.benches.lb import ArmResult, LbBenchConfig, audit_drains, ratio, result_json
from infra.benches.lb_control import (
    UNANSWERED_S,
    ServerSample,
    bucket_quantile,
    parse_backend_metrics,
    record_state,
    server_sample,
    window_features,
)
from infra.benches.load import LoadSummary
from infra.pool.backend import Backend, BackendConfig
from infra.pool.faults import Fault, Scenario
from lb_adapters.actuators.haproxy import HAProxyError, parse_show_stat

SHOW_STAT = (  # HAProxy's header, shortened to the columns read here
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,"
    "hrsp_5xx,rtime,\n"
    """\
fe_bench,FRONTEND,,,3,10,4096,500,0,0,0,0,0,,,,,OPEN,,,,
bench,b0,0,0,1,4,,120,0,0,,0,,0,2,0,0,UP,100,7,88,
bench,b1,1,2,5,9,,380,0,0,,0,,0,0,0,0,DRAIN,50,0,40,
bench,BACKEND,1,2,6,12,410,500,0,0,0,0,,0,2,0,0,UP,150,7,52,

""")


def test_parse_show_stat_rows_by_column() -> None:
    rows = parse_show_stat(SHOW_STAT)
    assert [(r["pxname"], r["svname"]) for r in rows] == [("fe_bench", "FRONTEND"), ("bench", "b0"), ("bench", "b1"),
                                                          ("bench", "BACKEND")]
    b0 = rows[1]
    assert (b0["scur"], b0["stot"], b0["hrsp_5xx"], b0["eresp"], b0["status"]) == ("1", "120", "7", "2", "UP")
    sample = server_sample(rows[2], None)
    assert (sample.stot, sample.qcur, sample.scur, sample.status) == (380, 1, 5, "DRAIN")
    assert server_sample({"stot": "", "status": "DOWN"}, None).stot == 0  # empty cells read as 0


def test_parse_show_stat_refuses_other_answers() -> None:
    with pytest.raises(HAProxyError):
        parse_show_stat("Unknown command\n")


def backend_metrics(latencies: list[float], statuses: list[int], queued: int = 0) -> str:
    """A real pool backend's /metrics text after serving these requests."""
    b = Backend(BackendConfig(service="bench", instance="b0", port=1))
    for latency, status in zip(latencies, statuses, strict=True):
        b.m_latency.observe(latency)
        b.m_requests.labels(**b._labels, status=str(status)).inc()
    b.m_queue.set(queued)
    b.m_resource.set(0.25)
    return generate_latest(b.metrics).decode()


def test_parse_backend_metrics_with_prometheus_parser() -> None:
    snap = parse_backend_metrics(backend_metrics([0.02, 0.07, 0.3], [200, 500, 200], queued=3))
    assert (snap.answered, snap.errors, snap.queue, snap.resource) == (3, 1, 3, 0.25)
    assert snap.buckets[-1] == (math.inf, 3)
    assert dict(snap.buckets)[0.05] == 1


def test_bucket_quantile_interpolates_within_the_window() -> None:
    before = ((0.1, 10.0), (0.2, 10.0), (math.inf, 10.0))
    after = ((0.1, 10.0), (0.2, 110.0), (math.inf, 110.0))  # 100 new observations, all in (0.1, 0.2]
    assert bucket_quantile(0.5, before, after) == pytest.approx(0.15)
    assert bucket_quantile(0.99, before, after) == pytest.approx(0.199)
    assert bucket_quantile(0.5, after, after) is None  # nothing observed in the window
    assert bucket_quantile(0.5, (), ((0.1, 0.0), (math.inf, 4.0))) == 0.1  # +Inf: the largest finite bound


def test_window_features_from_two_rounds() -> None:
    old_b = parse_backend_metrics(backend_metrics([0.02] * 10, [200] * 10))
    new_b = parse_backend_metrics(backend_metrics([0.02] * 10 + [0.3] * 10, [200] * 10 + [500] * 5 + [200] * 5,
                                                  queued=2))
    old = ServerSample(stot=100, hrsp_5xx=0, eresp=0, scur=0, qcur=0, status="UP", backend=old_b)
    new = ServerSample(stot=120, hrsp_5xx=4, eresp=1, scur=3, qcur=1, status="UP", backend=new_b)
    w = window_features("b0", old, new)
    assert w is not None
    assert w.requests == 20 and w.error_rate == pytest.approx(5 / 20)  # what HAProxy saw: 5xx + eresp
    assert 250 < w.latency_p99_ms <= 500 and 250 < w.latency_p50_ms <= 500  # only the window's observations
    assert w.queue == 3  # HAProxy's queue + the backend's
    assert w.sessions == 3 and w.resource == 0.25  # the window's peaks: HAProxy's scur, the backend's gauge
    # No request in the window: unknown (None), not healthy.
    assert window_features("b0", new, new) is None
    # Requests went there but the backend answered none (a hang, a crash): the worst latency.
    hung = ServerSample(stot=130, hrsp_5xx=4, eresp=1, scur=10, qcur=0, status="UP", backend=new_b)
    assert window_features("b0", new, hung).latency_p99_ms == UNANSWERED_S * 1000  # type: ignore[union-attr]
    dead = ServerSample(stot=130, hrsp_5xx=4, eresp=11, scur=0, qcur=0, status="DOWN", backend=None)
    w = window_features("b0", new, dead)
    assert w is not None and w.error_rate == 1.0 and w.latency_p99_ms == UNANSWERED_S * 1000


def test_record_state_from_haproxy_status() -> None:
    assert record_state("UP", False) == "ready"
    assert record_state("UP 1/3", False) == "ready"
    assert record_state("DRAIN", False) == "draining"
    assert record_state("UP", True) == "draining"  # drained by the controller
    assert record_state("DOWN", False) == "drained"
    assert record_state("MAINT", False) == "drained"


def summary(p99: float, error_pct: float, n: int = 1000) -> LoadSummary:
    return LoadSummary(scheduled=n, ok=n, errors={"http_5xx": 0, "timeout": 0, "connection": 0, "overflow": 0},
                       error_pct=error_pct, p50_ms=p99 / 4, p90_ms=p99 / 2, p99_ms=p99, max_ms=p99 * 2,
                       lag_p99_ms=1.0, achieved_rps=100.0, by_instance={})


def test_result_json_ratios_and_targets() -> None:
    arms = {"roundrobin": ArmResult("roundrobin", summary(5000, 10.0), 3.0, {}),
            "leastconn": ArmResult("leastconn", summary(500, 1.0), 3.0, {}),
            "foresight": ArmResult("foresight", summary(400, 0.5), 3.0, {}, control={"models": {"weights": "x@b"}})}
    out = result_json(LbBenchConfig(duration_s=60), Scenario(name="s"), arms, None, {"latency": [], "risk": []})
    assert out["p99_ms"] == {"roundrobin": 5000, "leastconn": 500, "foresight": 400}
    assert out["ratio_p99_vs_rr"] == 0.08 and out["ratio_p99_vs_leastconn"] == 0.8
    assert out["ratio_errors_vs_leastconn"] == 0.5
    assert out["targets_met"] == {"p99_le_0.9x_leastconn": True, "errors_le_0.3x_leastconn": False,
                                  "p99_le_0.6x_roundrobin": True}
    assert out["settings"]["rate_rps"] == 140.0 and out["settings"]["capacities_rps"] == [20, 40, 60, 80]
    assert out["models"]["answered"] == {"weights": "x@b"}
    assert list(out)[:2] == ["p99_ms", "error_pct"]


def test_result_json_reports_the_oracle_bound_beside_the_targets() -> None:
    arms = {"leastconn": ArmResult("leastconn", summary(500, 2.0), 3.0, {}),
            "foresight": ArmResult("foresight", summary(480, 0.5), 3.0, {}),
            "oracle": ArmResult("oracle", summary(470, 0.2), 3.0, {})}
    out = result_json(LbBenchConfig(duration_s=60), Scenario(name="s"), arms, None, {"latency": [], "risk": []})
    assert out["ratio_p99_oracle_vs_leastconn"] == 0.94 and out["ratio_errors_oracle_vs_leastconn"] == 0.1
    assert out["targets_met"] == {"p99_le_0.9x_leastconn": False, "errors_le_0.3x_leastconn": True}  # foresight's


def test_oracle_timers_drain_each_faulty_instance_at_its_failure() -> None:
    from infra.benches.lb import _oracle
    from infra.pool.faults import Fault

    class Runtime:
        def __init__(self) -> None:
            self.calls: list[tuple[str, ...]] = []

        def set_weight(self, backend: str, server: str, weight: int) -> None:
            self.calls.append(("weight", server, str(weight)))

        def set_server_state(self, backend: str, server: str, state: str) -> None:
            self.calls.append((state, server))

    class FakeRig:  # only what _oracle touches; the real rig is in the integration test
        names = ["b0", "b1", "b2", "b3"]
        runtime = Runtime()

    scenario = Scenario(name="s", faults=[Fault(instance="#1", kind="crash", start_s=0.05),
                                          Fault(instance="#2", kind="slowdown", start_s=0.0)])
    timers = _oracle(FakeRig(), scenario, LbBenchConfig())  # type: ignore[arg-type]
    for t in timers:
        t.join(2)
    assert FakeRig.runtime.calls[:4] == [("weight", "b0", "64"), ("weight", "b1", "128"), ("weight", "b2", "192"),
                                         ("weight", "b3", "256")]
    assert FakeRig.runtime.calls[4:] == [("drain", "b1")] and len(timers) == 1  # a slowdown never fails


def test_ratio_to_zero_baseline_is_none() -> None:
    assert ratio(0.0, 0.0) is None and ratio(1.0, 0.0) is None and ratio(1.0, 4.0) == 0.25


def test_config_rate_is_a_fraction_of_capacity() -> None:
    cfg = LbBenchConfig(workers=(2, 4, 6, 8), mean_service_s=0.1, load_fraction=0.7)
    assert cfg.capacities_rps == [20, 40, 60, 80] and cfg.rate_rps == pytest.approx(140)
    assert [f.instance for f in cfg.scenario_().faults] == ["#0"]  # seed 9001's fault, reproducibly


def test_audit_drains_sets_each_drain_against_the_ground_truth() -> None:
    scenario = Scenario(name="s", faults=[Fault(instance="#0", kind="errors", start_s=20, ramp_s=10,
                                                error_fraction=0.5)])
    drains = [{"t_s": 6.0, "instance": "b0", "action": "drain"}, {"t_s": 25.0, "instance": "b2", "action": "drain"}]
    early, wrong = audit_drains(drains, scenario, ["b0", "b1", "b2", "b3"])
    assert early["faulty"] and early["fault_onset_s"] == 20 and early["before_onset_s"] == 14.0
    assert early["failure_s"] == pytest.approx(20.2)  # 1% errors, 2% into the ramp
    assert not wrong["faulty"] and wrong["before_onset_s"] is None


class FakeRuntime:
    """HAProxy's runtime API as the controller uses it: counters that the test advances, and a log of
    the weights and states the controller set."""

    name = "haproxy"

    def __init__(self) -> None:
        self.stot = {n: 0 for n in ("b0", "b1", "b2", "b3")}
        self.err = dict.fromkeys(self.stot, 0)
        self.status = dict.fromkeys(self.stot, "UP")
        self.weight = dict.fromkeys(self.stot, 100)
        self.calls: list[tuple[str, str, object]] = []

    def advance(self, per_server: int, failing: str, failing_share: float) -> None:
        for n in self.stot:
            if self.status[n] == "UP":
                self.stot[n] += per_server
                if n == failing:
                    self.err[n] += int(per_server * failing_share)

    def server_stats(self, backend: str) -> dict[str, dict[str, str]]:
        return {n: {"stot": str(self.stot[n]), "hrsp_5xx": str(self.err[n]), "eresp": "0", "scur": "1", "qcur": "0",
                    "status": self.status[n], "weight": str(self.weight[n])} for n in self.stot}

    def weights(self, backend: str) -> dict[str, int]:
        return dict(self.weight)

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        self.weight[server] = weight
        self.calls.append(("weight", server, weight))

    def set_server_state(self, backend: str, server: str, state: str) -> None:
        self.status[server] = {"drain": "DRAIN", "ready": "UP"}[state]
        self.calls.append(("state", server, state))


def test_controller_drains_a_failing_server_and_does_not_readmit_it_on_stale_windows() -> None:
    from infra.benches.lb_control import ForesightController, InProcessModels
    from infra.core.settings import AdapterSettings
    from lb_adapters.policies.drain import DrainKnobs

    now = [0.0]
    rt = FakeRuntime()
    c = ForesightController(rt, "bench", {n: "http://127.0.0.1:1/metrics" for n in rt.stot},  # type: ignore[arg-type]
                            adapter=AdapterSettings(), knobs=DrainKnobs(readmit_after=2), window_s=2.0,
                            models=InProcessModels(), clock=lambda: now[0])
    straddled = False
    for second in range(10):
        now[0] = float(second)
        c.step()
        if rt.status["b0"] == "DRAIN" and not straddled:
            rt.stot["b0"] += 1  # one request reached it while the drain was being applied, none after
            straddled = True
        rt.advance(50, failing="b0", failing_share=0.5)
    assert ("state", "b0", "drain") in rt.calls
    assert ("state", "b0", "ready") not in rt.calls  # no window that began after the drain: unknown, not healthy
    assert [d["action"] for d in c.trace.drains if d["instance"] == "b0"] == ["drain"]
    assert c.trace.models == {"weights": "inverse-latency@baseline", "risk": "peer-deviation@baseline"}
