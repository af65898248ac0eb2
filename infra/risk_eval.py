"""`foresight evaluate risk`: the risk model against reactive baselines on the held-out recordings.

Every detector turns the same recordings into alarms (instance, time):

- `model`: the registered `risk` model scores each round of windows; the drain policy (`decide_drains`:
  hysteresis, at most `max_drained_fraction` out, cooldown, never the last instance) turns the scores
  into drains, as the health controller would. A drain is an alarm.
- `peer_deviation`: the baseline `/v1/risk` answers today (p99, error rate, queue and the resource
  gauge against the peers), through the same drain policy.
- `haproxy_layer7`: `observe layer7` + `error-limit N` + `on-error mark-down` on HAProxy's own log of
  each server (N consecutive 5xx/timeouts mark it down, it comes back after `rise` good checks), plus
  the active check `inter 2s fall 3`, which sees a crash `fall x inter` after it (a hang answers
  /healthz: the active check never sees it).
- `envoy_outlier`: Envoy's outlier detection, `consecutive_5xx = 5`, ejecting for 30 s.

A failure (the ground truth's `failure_ms`, F) is caught when an alarm fires on its instance in
[F - H, F]; lead time = F - the first such alarm. An alarm is true when its instance fails within H
after it, late when the instance had already failed (a reactive detection: right, but no lead),
false otherwise: a false drain (`early_alarms` counts those of them on an instance that did fail, later
than H after the alarm). Precision = true / (true + false).

The alarm of a window is stamped at its end plus the stream worker's lateness (when it is emitted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infra.core.service_registry import InstanceRecord, InstanceState
from lb_adapters.health import at_operating_point
from lb_adapters.policies.drain import DrainKnobs, DrainState, decide_drains, health_knobs
from lb_adapters.policies.membership import SET_BY
from serving.schemas import OperatingPoint

Alarm = tuple[str, str, float]  # (service, instance, seconds)


# -- reactive rules --------------------------------------------------------------------------------
def is_layer7_error(status: int) -> bool:
    """HAProxy `observe layer7`: 5xx but 501 and 505 count as errors (a timeout is logged as 504)."""
    return status >= 500 and status not in (501, 505)


def consecutive_error_alarms(times: Sequence[float], errors: Sequence[bool], limit: int, dead_s: float) -> list[float]:
    """Times at which `limit` consecutive errors (in completion order) are reached; after one, the server is
    out for `dead_s` (its requests then do not count) and the count starts again."""
    out: list[float] = []
    run = 0
    until = -math.inf
    for t, bad in zip(times, errors, strict=True):
        if t < until:
            continue
        run = run + 1 if bad else 0
        if run >= limit:
            out.append(t)
            run = 0
            until = t + dead_s
    return out


def request_rule_alarms(requests: Any, limit: int, dead_s: float, is_error: Callable[[int], bool]) -> list[Alarm]:
    """The consecutive-error rule over each server's requests, ordered by when their answer came."""
    if requests.empty:
        return []
    r = requests.assign(done_s=(requests["ts_ms"] + requests["latency_ms"].clip(lower=0)) / 1000.0)
    r = r.sort_values("done_s")
    out: list[Alarm] = []
    for (service, instance), g in r.groupby(["service", "instance"], sort=False):
        errs = [is_error(int(s)) for s in g["status"]]
        out += [(service, instance, t) for t in consecutive_error_alarms(g["done_s"].tolist(), errs, limit, dead_s)]
    return out


def active_check_alarms(truth: Any, inter_s: float = 2.0, fall: int = 3) -> list[Alarm]:
    """HAProxy's active check (`inter 2s fall 3` on /healthz): a crashed process fails it from the crash on,
    so it is marked down `fall` checks later. A hang or an error onset still answers /healthz."""
    return [(row.service, row.instance, float(row.failure_ms) / 1000 + fall * inter_s)
            for row in truth.itertuples() if row.fault_kind in ("crash", "leak") and not math.isnan(row.failure_ms)]


# -- score-based detectors through the drain policy -------------------------------------------------
def drain_alarms(scored: Any, knobs: DrainKnobs, delay_s: float, gone_after_s: float = 30.0) -> list[Alarm]:
    """Replay the drain policy round by round (one round per window start) on `scored` (service, instance,
    window_start, window_end, risk); each `drain` decision is an alarm. An instance a round has no window for
    is unknown (None), as in the controller; one with no window for `gone_after_s` has left the registry (a
    crashed instance's lease expires), so it no longer counts towards the guardrails."""
    out: list[Alarm] = []
    for service, g in scored.groupby("service"):
        state = DrainState()
        states: dict[str, InstanceState] = {}
        seen: dict[str, float] = {}
        for start, rnd in g.groupby("window_start", sort=True):
            risk = dict(zip(rnd["instance"], rnd["risk"].astype(float), strict=True))
            for name in risk:
                states.setdefault(name, "ready")
                seen[name] = float(start)
            for name in [n for n, at in seen.items() if float(start) - at > gone_after_s]:
                del states[name], seen[name]
            now = float(rnd["window_end"].max()) + delay_s
            records = {n: InstanceRecord(address="127.0.0.1", port=1, state=st,
                                         started_at=0, metadata={SET_BY: "controller"})
                       for n, st in states.items()}
            decisions, state = decide_drains({n: risk.get(n) for n in states}, records, state, knobs)
            for d in decisions:
                if d.action == "drain":
                    states[d.instance] = "draining"
                    out.append((str(service), d.instance, now))
                elif d.action == "readmit":
                    states[d.instance] = "ready"
    return out


# The `features` column each of the baseline's signals (`peer_risk.SIGNALS`) is read from.
PEER_SIGNAL_COLUMNS = {"latency_p99_ms": "latency_p99_ms", "error_rate": "error_rate", "queue": "queue_max",
                       "resource": "resource_max"}


def peer_deviation_scores(windows: Any) -> Any:
    """The served baseline's risk, per round: its peers are the other instances of the same window."""
    import torch

    from serving.models import peer_risk

    w = windows.copy()
    w["error_rate"] = w["status_5xx"] / w["requests"].clip(lower=1)
    columns = [PEER_SIGNAL_COLUMNS[name] for name, _, _ in peer_risk.SIGNALS]
    for column in columns:  # recordings from before a gauge existed read 0, as serving does
        if column not in w:
            w[column] = 0.0
    risks = np.zeros(len(w))
    for _key, idx in w.groupby(["service", "window_start"]).indices.items():
        feats = torch.tensor(w.iloc[idx][columns].to_numpy(np.float32))
        risks[idx] = peer_risk.risk_scores(peer_risk.deviation_z(feats)).numpy()
    w["risk"] = risks
    return w


# -- metrics ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Truth:
    kind: str  # "" for a healthy instance
    failure_s: float | None
    observed_h: float  # instance-hours it was recorded


def truths(windows: Any) -> dict[tuple[str, str], Truth]:
    out = {}
    for (service, instance), g in windows.groupby(["service", "instance"]):
        fail = g["failure_ms"].iloc[0]
        hours = (float(g["window_end"].max()) - float(g["window_start"].min())) / 3600
        out[(str(service), str(instance))] = Truth(str(g["fault_kind"].iloc[0] or ""),
                                                   None if fail is None or math.isnan(fail) else float(fail) / 1000,
                                                   hours)
    return out


def _p50(values: list[float]) -> float | None:
    return round(float(np.median(values)), 1) if values else None


def score_alarms(alarms: Iterable[Alarm], truth: dict[tuple[str, str], Truth], horizon_s: float,
                 recorded_until: dict[str, float]) -> dict[str, Any]:
    """Precision, recall, lead p50, false drains per instance-hour; overall and per fault kind.
    A failure after its service's recording ended cannot be caught or missed: it is not counted in recall
    (alarms before it still count as true)."""
    by_inst: dict[tuple[str, str], list[float]] = {}
    for service, instance, t in alarms:
        by_inst.setdefault((service, instance), []).append(t)
    kinds = sorted({t.kind or "none" for t in truth.values()})
    rows: dict[str, dict[str, Any]] = {k: {"failures": 0, "caught": 0, "leads": [], "true": 0, "false": 0,
                                           "late": 0, "early": 0, "hours": 0.0, "detect": []} for k in ["all", *kinds]}
    for key, tr in truth.items():
        times = sorted(by_inst.get(key, []))
        for k in ("all", tr.kind or "none"):
            rows[k]["hours"] += tr.observed_h
        f = tr.failure_s
        verdict = {"true": 0, "false": 0, "late": 0, "early": 0}
        for t in times:
            if f is not None and t > f:
                verdict["late"] += 1
            elif f is not None and f - t <= horizon_s:
                verdict["true"] += 1
            else:
                verdict["false"] += 1
                verdict["early"] += f is not None  # false by the definition, but on an instance that fails later
        counted = f is not None and f <= recorded_until.get(key[0], math.inf)
        in_window = [t for t in times if f is not None and f - horizon_s <= t <= f]
        after = [t for t in times if f is not None and f - horizon_s <= t <= f + horizon_s]
        for k in ("all", tr.kind or "none"):
            r = rows[k]
            for v, n in verdict.items():
                r[v] += n
            if counted:
                r["failures"] += 1
                if in_window:
                    r["caught"] += 1
                    r["leads"].append(f - in_window[0])  # type: ignore[operator]
                if after:
                    r["detect"].append(after[0] - f)  # type: ignore[operator]
    out = {}
    for k, r in rows.items():
        judged = r["true"] + r["false"]
        out[k] = {"failures": r["failures"], "caught": r["caught"],
                  "recall": round(r["caught"] / r["failures"], 3) if r["failures"] else None,
                  "precision": round(r["true"] / judged, 3) if judged else None,
                  "lead_s_p50": _p50(r["leads"]),
                  "false_drains": r["false"],
                  "false_drains_per_instance_hour": round(r["false"] / r["hours"], 3) if r["hours"] else None,
                  # the same without the early ones: drains of instances that never failed (not the headline)
                  "false_drains_never_failing_per_instance_hour":
                      round((r["false"] - r["early"]) / r["hours"], 3) if r["hours"] else None,
                  "late_alarms": r["late"],
                  "early_alarms": r["early"],  # of the false drains: more than H before a failure that came
                  "detected_within_h": len(r["detect"]),
                  "detect_delay_s_p50": _p50(r["detect"]),  # first alarm in [F-H, F+H] minus F: < 0 is a lead
                  "instance_hours": round(r["hours"], 3)}
    return out


def evaluate(windows: Any, requests: Any, model_scores: Any | None, knobs: DrainKnobs, horizon_s: float,
             delay_s: float, error_limit: int = 10, envoy_consecutive: int = 5,
             baseline_knobs: DrainKnobs | None = None) -> dict[str, Any]:
    """Every detector on the same held-out recordings; `model_scores` = windows with the model's `risk`, drained
    with `knobs`; the peer-deviation baseline is drained with `baseline_knobs` (default: `knobs`), the settings'
    point, since the model's operating point was chosen for the model's scores."""
    truth = truths(windows)
    recorded_until = {str(k): float(v) for k, v in windows.groupby("service")["window_end"].max().items()}
    firsts = windows.drop_duplicates(["service", "instance"])
    detectors: dict[str, list[Alarm]] = {}
    if model_scores is not None:
        detectors["model"] = drain_alarms(model_scores, knobs, delay_s)
        detectors["model_threshold"] = [(r.service, r.instance, float(r.window_end) + delay_s)
                                        for r in model_scores.itertuples() if r.risk >= knobs.drain_above]
    detectors["peer_deviation"] = drain_alarms(peer_deviation_scores(windows), baseline_knobs or knobs, delay_s)
    detectors["haproxy_layer7"] = (request_rule_alarms(requests, error_limit, 4.0, is_layer7_error)
                                   + active_check_alarms(firsts))
    detectors["envoy_outlier"] = request_rule_alarms(requests, envoy_consecutive, 30.0, lambda s: s >= 500)
    # an alarm after its service's recording (the active check's, synthesised from a late failure) saw nothing
    return {name: score_alarms([a for a in alarms if a[2] <= recorded_until[a[0]] + delay_s], truth, horizon_s,
                               recorded_until)
            for name, alarms in detectors.items()}


TARGETS = {"recall": 0.9, "lead_s_p50": 30.0, "false_drains_per_instance_hour": 0.1}


def model_knobs(base: DrainKnobs, metrics: dict[str, Any]) -> tuple[DrainKnobs, str]:
    """`base` at the operating point the model's training chose (its manifest's `metrics.operating_point`:
    threshold and consecutive windows), as the live controller takes it (`at_operating_point`: not a point at
    or below `readmit_below`), and where the knobs came from."""
    op = metrics.get("operating_point")
    if not op:
        return base, "settings (the model has no operating point)"
    point = OperatingPoint(drain_above=float(op["drain_above"]), sustained_s=float(op["drain_after"]))
    knobs, said = at_operating_point(base, point, interval_s=1.0)  # the replay's rounds are windows: 1 unit each
    if knobs.drain_above != point.drain_above:  # not taken
        return knobs, f"settings: {said}"
    return knobs, "model manifest (chosen on the train seeds' out-of-fold scores)"


def load_risk_module(state_dir: Any, version: str | None) -> tuple[Any, Any]:
    import torch

    from infra.core.model_registry import list_versions, read_manifest, registry_root, verify_files

    root = registry_root(state_dir)
    versions = list_versions(root, "risk")
    if not versions:
        raise FileNotFoundError(f"no risk model under {root / 'risk'}: `foresight train --kind risk` first")
    chosen = version or versions[-1]
    if chosen not in versions:
        raise ValueError(f"risk version {chosen} not in {root / 'risk'} (have {', '.join(versions)})")
    folder = root / "risk" / chosen
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    return torch.jit.load(str(folder / "model.pt")), manifest


def evaluate_command(s: Any, dataset: Any, version: str | None, error_limit: int,
                     envoy_consecutive: int, at: str = "model") -> dict[str, Any]:
    """`at`: the model's drain operating point, `model` (its manifest's) or `settings` (health.*)."""
    from infra.fault_dataset import load_dataset
    from training.risk import score

    windows, requests = load_dataset(dataset)
    windows = windows[windows["seed"] >= s.health.heldout_seed_from]
    if windows.empty:
        raise ValueError(f"no held-out seed (>= {s.health.heldout_seed_from}) under {dataset}: record them with "
                         f"`foresight faults record --seeds {s.health.heldout_seed_from}-...`")
    if not requests.empty:
        requests = requests[requests["service"].isin(set(windows["service"]))]
    module, manifest = load_risk_module(s.state, version)
    if manifest.health is None:
        raise ValueError(f"risk {manifest.version} has no health spec (columns) in its manifest")
    trained_on = set(manifest.config.get("train_seeds", []))
    heldout = sorted(int(x) for x in windows["seed"].unique())
    if trained_on & set(heldout):
        raise ValueError(f"risk {manifest.version} was trained on seeds {sorted(trained_on & set(heldout))}")
    settings_knobs = health_knobs(s.health, s.streams.window_s)
    knobs, knobs_from = settings_knobs, "settings"
    if at == "model":
        knobs, knobs_from = model_knobs(settings_knobs, manifest.metrics)
    report = evaluate(windows, requests, score(module, windows, manifest.health.columns), knobs, s.health.horizon_s,
                      s.streams.allowed_lateness_s, error_limit, envoy_consecutive, baseline_knobs=settings_knobs)
    kinds = windows.drop_duplicates(["service", "instance"])["fault_kind"].replace("", "none").value_counts()
    firsts = windows.drop_duplicates(["service", "instance"]).copy()
    firsts["recorded_until"] = firsts["service"].map(windows.groupby("service")["window_end"].max())
    return {"model": f"{manifest.name}@{manifest.version}", "horizon_s": s.health.horizon_s, "heldout_seeds": heldout,
            "instances_by_kind": {str(k): int(v) for k, v in kinds.items()},
            "knobs": {"from": knobs_from, "drain_above": knobs.drain_above, "drain_after_windows": knobs.drain_after,
                      "readmit_below": knobs.readmit_below,
                      "readmit_after_windows": knobs.readmit_after, "cooldown_windows": knobs.cooldown_rounds,
                      "max_drained_fraction": knobs.max_drained_fraction,
                      "error_limit": error_limit, "envoy_consecutive_5xx": envoy_consecutive},
            "targets": TARGETS, "precursors": precursors(firsts, TARGETS["lead_s_p50"]), "detectors": report}


def precursors(firsts: Any, lead_s: float) -> dict[str, Any]:
    """How long each failing kind shows anything before it fails (failure - fault start), and the recall a
    detector could at best reach with that lead: a failure with a shorter precursor cannot be caught that
    early by anything that watches the instance."""
    failing = firsts[firsts["failure_ms"].notna() & (firsts["failure_ms"] / 1000 <= firsts["recorded_until"])]
    span = (failing["failure_ms"] - failing["fault_start_ms"]) / 1000
    by_kind = {str(k): {"failures": len(s), "min_s": round(float(s.min()), 1), "p50_s": round(float(s.median()), 1),
                        "max_s": round(float(s.max()), 1)} for k, s in span.groupby(failing["fault_kind"])}
    return {"by_kind": by_kind, f"recall_ceiling_at_{lead_s:g}s_lead": round(float((span >= lead_s).mean()), 3)
            if len(span) else None}
