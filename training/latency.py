"""The latency model: each instance's next-window p50 and p99 from its features and the load it will get.

Training pairs window t of an instance (its health features, infra.core.health_features, with
the *next* window's request count as the offered load) with window t+1's p50 and p99. The
module predicts in log space as a correction of the current values (a residual on last-value),
so with no signal it falls back to what the last-value baseline says. The held-out part (the
latest `holdout_frac` of time, or the last services by name) is never used for tuning: the
epoch is chosen on a validation tail of the training part.

Honest baselines, scored on the same held-out pairs:
- `last_value`: the next window's p50/p99 are this window's;
- `inverse_latency`: the latency the serving baseline (serving.models.latency_weights) implies,
  p + queue * p50 (one median service time per queued request).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

from infra.core.features_table import HEALTH_WINDOW_FIELDS
from infra.core.health_features import LATENCY_COLUMNS, derive

OnEpoch = Callable[[int, int, float, float], None]

MODEL_NAME = "mlp-latency"


class LatencyConfig(BaseModel):
    epochs: int = Field(40, gt=0)
    hidden: int = Field(64, gt=0)
    lr: float = Field(3e-3, gt=0)
    batch: int = Field(256, gt=0)
    seed: int = 0
    split: Literal["time", "service"] = Field("time", description="Held-out part: the latest time, or the last "
                                                                  "services by name (e.g. held-out seeds).")
    holdout_frac: float = Field(0.2, gt=0, lt=1)
    holdout_services: list[str] = Field(default_factory=list, description="Glob patterns (`health-s9*`): "
                                        "these services are the held-out part (split `service`), e.g. the "
                                        "held-out fault seeds; never trained or tuned on.")
    val_frac: float = Field(0.15, gt=0, lt=1, description="Tail of the training part for choosing the epoch.")
    min_requests: int = Field(5, ge=1, description="Target windows with fewer requests are left out: their "
                                                   "p99 is noise.")
    min_pairs: int = Field(200, ge=10, description="Fewest window pairs to train on.")
    window_s: float | None = Field(None, description="Window length to train on (default: the most common).")


@dataclass(frozen=True)
class Windows:
    """Per-instance windows as columns (fields of infra.core.features_table.HEALTH_WINDOW_FIELDS)."""

    service: np.ndarray
    instance: np.ndarray
    start_s: np.ndarray
    window_s: np.ndarray
    requests: np.ndarray
    status_5xx: np.ndarray
    latency_p50_ms: np.ndarray
    latency_p99_ms: np.ndarray
    sessions_max: np.ndarray
    queue_max: np.ndarray
    resource_max: np.ndarray
    busy_max: np.ndarray

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> Windows:
        cols: list[Sequence[Any]] = (list(zip(*rows, strict=True)) if rows
                                     else [() for _ in HEALTH_WINDOW_FIELDS])
        values: dict[str, np.ndarray] = {}
        for name, col in zip(HEALTH_WINDOW_FIELDS, cols, strict=True):
            if name in ("service", "instance"):
                values[name] = np.asarray(col, dtype=object)
            elif name in ("start_s", "window_s"):
                values[name] = np.asarray(col, dtype=np.int64)
            else:
                values[name] = np.asarray(col, dtype=np.float64)
        return cls(**values)

    def __len__(self) -> int:
        return int(self.start_s.shape[0])


@dataclass(frozen=True)
class Pairs:
    x: np.ndarray  # float32 [m, len(columns)]
    y: np.ndarray  # float64 [m, 2] next p50, p99 (ms)
    now: np.ndarray  # float64 [m, 3] this window's p50, p99, queue (for the baselines)
    start_s: np.ndarray  # [m] start of window t
    service: np.ndarray  # [m]

    def take(self, mask: np.ndarray) -> Pairs:
        return Pairs(self.x[mask], self.y[mask], self.now[mask], self.start_s[mask], self.service[mask])

    def __len__(self) -> int:
        return int(self.x.shape[0])


def common_window(w: Windows) -> float:
    lengths, counts = np.unique(w.window_s, return_counts=True)
    if not len(lengths):
        raise ValueError("no per-instance windows")
    return float(lengths[np.argmax(counts)])


def make_pairs(w: Windows, window_s: float, columns: Sequence[str] = LATENCY_COLUMNS,
               min_requests: int = 5) -> Pairs:
    """(features of window t at the load of t+1, p50/p99 of t+1) for every instance window with a successor."""
    keep = w.window_s == int(window_s)
    index = {(s, i, t): k for k, (s, i, t) in enumerate(zip(w.service, w.instance, w.start_s, strict=True))
             if keep[k]}
    nxt = np.array([index.get((s, i, t + int(window_s)), -1) if keep[k] else -1
                    for k, (s, i, t) in enumerate(zip(w.service, w.instance, w.start_s, strict=True))])
    groups: dict[tuple[Any, int], list[int]] = {}
    for k in np.flatnonzero(keep & (w.requests > 0)):
        groups.setdefault((w.service[k], int(w.start_s[k])), []).append(int(k))
    xs, rows = [], []
    for members in groups.values():
        idx = np.array(members)
        raw = {"requests": w.requests[idx], "error_rate": w.status_5xx[idx] / np.maximum(w.requests[idx], 1.0),
               "latency_p50_ms": w.latency_p50_ms[idx], "latency_p99_ms": w.latency_p99_ms[idx],
               "sessions": w.sessions_max[idx], "queue": w.queue_max[idx], "resource": w.resource_max[idx],
               "busy": w.busy_max[idx]}
        succ = nxt[idx]
        offered = np.where(succ >= 0, w.requests[np.maximum(succ, 0)], 0.0)
        x = derive(raw, offered, columns)
        usable = (succ >= 0) & (offered >= min_requests)
        xs.append(x[usable])
        rows.append(np.column_stack([idx[usable], succ[usable]]))
    if not xs:
        return Pairs(np.zeros((0, len(columns)), np.float32), np.zeros((0, 2)), np.zeros((0, 3)),
                     np.zeros(0, np.int64), np.zeros(0, dtype=object))
    pair_idx = np.concatenate(rows).astype(np.int64)
    cur, succ = pair_idx[:, 0], pair_idx[:, 1]
    order = np.argsort(w.start_s[cur], kind="stable")
    cur, succ = cur[order], succ[order]
    x_all = np.concatenate(xs)[order]
    return Pairs(
        x=x_all,
        y=np.column_stack([w.latency_p50_ms[succ], w.latency_p99_ms[succ]]),
        now=np.column_stack([w.latency_p50_ms[cur], w.latency_p99_ms[cur], w.queue_max[cur]]),
        start_s=w.start_s[cur], service=w.service[cur])


def split(pairs: Pairs, cfg: LatencyConfig) -> tuple[Pairs, Pairs, Pairs, dict[str, Any]]:
    """(train, validation, held-out) and a description of the held-out part."""
    if cfg.split == "service" or cfg.holdout_services:
        services = sorted(set(pairs.service.tolist()))
        if len(services) < 2:
            raise ValueError(f"--split service needs at least 2 services, the data has {len(services)}")
        if cfg.holdout_services:
            held_services = [s for s in services if any(fnmatch.fnmatchcase(s, p) for p in cfg.holdout_services)]
            if not held_services or len(held_services) == len(services):
                raise ValueError(f"--holdout-services {','.join(cfg.holdout_services)} matches "
                                 f"{len(held_services)} of the {len(services)} services; it must match some, "
                                 "not all")
        else:
            held_services = services[-max(1, round(len(services) * cfg.holdout_frac)):]
        held = np.isin(pairs.service, held_services)
        how: dict[str, Any] = {"split": "service", "held_out_services": held_services}
    else:
        cut = float(np.quantile(pairs.start_s, 1 - cfg.holdout_frac)) if len(pairs) else 0.0
        held = pairs.start_s >= cut
        how = {"split": "time", "held_out_from_s": int(cut)}
    rest = pairs.take(~held)
    if len(rest):
        val_cut = float(np.quantile(rest.start_s, 1 - cfg.val_frac))
        val = rest.start_s >= val_cut
    else:
        val = np.zeros(0, dtype=bool)
    return rest.take(~val), rest.take(val), pairs.take(held), how


class LatencyMLP(nn.Module):
    """Residual MLP in log space: log1p(p) = log1p(current p) + correction; 0 <= p50 <= p99 by construction.

    Input standardisation is folded in (buffers), so serving passes the raw health features."""

    def __init__(self, n_in: int, hidden: int, i50: int, i99: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.i50 = i50
        self.i99 = i99
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 2))
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def log_outputs(self, x: torch.Tensor) -> torch.Tensor:
        d = self.net((x - self.mean) / self.std)
        a = (x[:, self.i50] + d[:, 0]).clamp_min(0.0)
        b = torch.maximum(a, (x[:, self.i99] + d[:, 1]).clamp_min(0.0))
        return torch.stack([a, b], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.expm1(self.log_outputs(x)).to(torch.float32)


def baselines(now: np.ndarray) -> dict[str, np.ndarray]:
    """[m, 2] p50/p99 predictions of each baseline from this window's p50, p99, queue."""
    p50, p99, queue = now[:, 0], now[:, 1], now[:, 2]
    service = np.where(p50 > 0, p50, p99)
    return {"last_value": np.column_stack([p50, p99]),
            "inverse_latency": np.column_stack([p50 + queue * service, p99 + queue * service])}


def scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """MAE in ms and in log1p space, per output."""
    out: dict[str, float] = {}
    for j, name in enumerate(("p50", "p99")):
        out[f"{name}_mae_ms"] = float(np.mean(np.abs(pred[:, j] - y[:, j])))
        out[f"{name}_mae_log"] = float(np.mean(np.abs(np.log1p(np.maximum(pred[:, j], 0)) - np.log1p(y[:, j]))))
    return out


MIN_BASELINE_MAE_MS = 0.01


def mae_ratio(model: float, baseline: float) -> float | None:
    """model / baseline MAE; None when the baseline is (nearly) exact, where a ratio says nothing."""
    return model / baseline if baseline >= MIN_BASELINE_MAE_MS else None


@dataclass(frozen=True)
class LatencyResult:
    module: LatencyMLP
    columns: list[str]
    window_s: float
    metrics: dict[str, Any]
    smoke_x: np.ndarray


def _loss(module: LatencyMLP, x: torch.Tensor, y_log: torch.Tensor) -> torch.Tensor:
    return (module.log_outputs(x) - y_log).abs().mean()


def train_latency(w: Windows, cfg: LatencyConfig, on_epoch: OnEpoch | None = None,
                  columns: Sequence[str] = LATENCY_COLUMNS) -> LatencyResult:
    """Fit on the training part, pick the epoch on validation, score model and baselines on the held-out part."""
    if not len(w):
        raise ValueError("no per-instance windows for these services and times: record some first "
                         "(a demo run, or the pool with fault scenarios)")
    window_s = cfg.window_s or common_window(w)
    pairs = make_pairs(w, window_s, columns, cfg.min_requests)
    train, val, held, how = split(pairs, cfg)
    need = {"training": (len(train), cfg.min_pairs), "validation": (len(val), max(10, cfg.min_pairs // 10)),
            "held-out": (len(held), max(10, cfg.min_pairs // 10))}
    short = {k: v for k, v in need.items() if v[0] < v[1]}
    if short:
        detail = ", ".join(f"{k} {have} (need {want})" for k, (have, want) in short.items())
        raise ValueError(f"too little data: {len(pairs)} window pairs of {window_s:g} s windows with >= "
                         f"{cfg.min_requests} requests in the next window; {detail}. Record longer runs or "
                         "lower --min-requests")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    xt = torch.from_numpy(train.x)
    mean, std = xt.mean(dim=0), xt.std(dim=0)
    # A column constant in training (a gauge never recorded) must not feed untrained weights at serving
    std = torch.where(std < 1e-6, torch.full_like(std, 1e6), std.clamp_min(1e-2))
    module = LatencyMLP(len(columns), cfg.hidden, list(columns).index("log_p50_ms"),
                        list(columns).index("log_p99_ms"), mean, std)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=1e-4)
    yt = torch.from_numpy(np.log1p(train.y)).float()
    xv, yv = torch.from_numpy(val.x), torch.from_numpy(np.log1p(val.y)).float()
    best_val, best_state, best_epoch = math.inf, {k: v.clone() for k, v in module.state_dict().items()}, 0
    for epoch in range(1, cfg.epochs + 1):
        module.train()
        order = torch.from_numpy(rng.permutation(len(train)))
        total = 0.0
        for lo in range(0, len(train), cfg.batch):
            b = order[lo:lo + cfg.batch]
            loss = _loss(module, xt[b], yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        module.eval()
        with torch.no_grad():
            val_loss = float(_loss(module, xv, yv))
        if val_loss < best_val:
            best_val, best_epoch = val_loss, epoch
            best_state = {k: v.clone() for k, v in module.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, cfg.epochs, total / len(train), val_loss)
    module.load_state_dict(best_state)
    module.eval()
    with torch.no_grad():
        pred = module(torch.from_numpy(held.x)).numpy().astype(np.float64)
    held_scores = {"model": scores(pred, held.y)} | {name: scores(p, held.y)
                                                     for name, p in baselines(held.now).items()}
    model_scores = held_scores["model"]
    ratio = {f"{out}_mae_vs_{name}": mae_ratio(model_scores[f"{out}_mae_ms"], held_scores[name][f"{out}_mae_ms"])
             for name in ("last_value", "inverse_latency") for out in ("p50", "p99")}
    metrics = {"held_out": held_scores, "ratios": ratio, "pairs": {"train": len(train), "validation": len(val),
                                                                  "held_out": len(held)},
               "best_epoch": best_epoch, "validation_loss": best_val, "window_s": window_s, **how}
    return LatencyResult(module, list(columns), window_s, metrics, held.x[: min(8, len(held))])
