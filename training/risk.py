"""The risk model: a small MLP on the risk inputs, calibrated, saved as one TorchScript module.

`forward(x float32 [n, len(columns)]) -> float32 [n]`: the probability that each instance fails within
the horizon. Standardisation and the calibration (Platt scaling of the logit, fitted on out-of-fold
scores of the TRAIN seeds, folds by whole seed so one scenario never sits on both sides) are folded into
the module, so a server only feeds the columns in manifest order.

Held-out seeds (>= `heldout_from`) are refused here, not only by the caller: the evaluation set cannot
be trained on by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from infra.core.health_features import RISK_COLUMNS
from training.risk_features import label_windows, risk_inputs

MODEL_NAME = "mlp-risk"


class HeldOutSeedError(ValueError):
    pass


@dataclass(frozen=True)
class RiskTrainConfig:
    hidden: int = 32
    epochs: int = 60
    lr: float = 3e-3
    batch: int = 512
    weight_decay: float = 1e-4
    folds: int = 4  # out-of-fold calibration: seeds dealt into this many folds
    seed: int = 0
    horizon_s: float = 60.0


class RiskModule(nn.Module):
    """Standardise -> MLP -> Platt-scaled logit -> probability."""

    def __init__(self, n_inputs: int, hidden: int) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        self.platt_a: torch.Tensor
        self.platt_b: torch.Tensor
        self.register_buffer("mean", torch.zeros(n_inputs))
        self.register_buffer("scale", torch.ones(n_inputs))
        self.register_buffer("platt_a", torch.ones(()))
        self.register_buffer("platt_b", torch.zeros(()))
        self.net = nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.scale).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.platt_a * self.logit(x) + self.platt_b)


def refuse_heldout(seeds: Any, heldout_from: int) -> None:
    bad = sorted({int(s) for s in seeds if int(s) >= heldout_from})
    if bad:
        raise HeldOutSeedError(f"seeds {bad} are held out (>= health.heldout_seed_from = {heldout_from}): "
                               "they are for `foresight evaluate risk` only, never for training")


def seed_folds(seeds: np.ndarray, kinds: dict[Any, str], folds: int, rng: np.random.Generator) -> dict[Any, int]:
    """Seed -> fold, dealt round-robin within each fault kind (shuffled), so every fold holds some of each kind:
    a fold without a leak would calibrate the model on failures it cannot see coming."""
    out: dict[Any, int] = {}
    by_kind: dict[str, list[Any]] = {}
    for seed in np.unique(seeds).tolist():
        by_kind.setdefault(kinds.get(seed, ""), []).append(seed)
    k = 0
    for kind in sorted(by_kind):
        group = by_kind[kind]
        for seed in rng.permutation(np.array(group)).tolist():
            out[seed] = k % folds
            k += 1
    return out


def calibration(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, float]:
    """Brier score and expected calibration error (equal-width bins)."""
    brier = float(np.mean((p - y) ** 2)) if len(p) else float("nan")
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    ece = sum(abs(p[idx == b].mean() - y[idx == b].mean()) * (idx == b).sum() for b in range(bins) if (idx == b).any())
    return {"brier": round(brier, 5), "ece": round(float(ece) / max(1, len(p)), 5)}


def fit_platt(logits: torch.Tensor, y: torch.Tensor, steps: int = 300) -> tuple[float, float]:
    """Platt scaling `sigmoid(a * logit + b)`, a > 0 (exp of a free parameter): calibration may not reverse
    or erase the model's ranking, only re-map it."""
    log_a, b = torch.zeros((), requires_grad=True), torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_a, b], lr=0.5, max_iter=steps)
    loss_fn = nn.BCEWithLogitsLoss()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(log_a.exp() * logits + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_a.detach().exp()), float(b.detach())


def fit_mlp(x: np.ndarray, y: np.ndarray, cfg: RiskTrainConfig,
            on_epoch: Any = lambda _e, _l: None) -> RiskModule:
    """One MLP on (x, y), class-weighted (positives are rare); standardisation fitted on x."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    module = RiskModule(x.shape[1], cfg.hidden)
    module.mean.copy_(xt.mean(0))
    module.scale.copy_(xt.std(0).clamp_min(1e-3))
    pos = float(yt.sum())
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(yt) - pos) / max(pos, 1.0)))
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(xt))
        total = 0.0
        for i in range(0, len(xt), cfg.batch):
            rows = perm[i:i + cfg.batch]
            opt.zero_grad()
            loss = loss_fn(module.logit(xt[rows]), yt[rows])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(rows)
        on_epoch(epoch, total / max(1, len(xt)))
    return module.eval()


def train_risk(windows: Any, cfg: RiskTrainConfig, heldout_from: int, on_epoch: Any = lambda _e, _l: None,
               operating_point: Any = None) -> tuple[torch.jit.ScriptModule, dict[str, Any], np.ndarray]:
    """Train on recorded windows (TRAIN seeds only). Returns the scripted module, its metrics and a few input
    rows for the smoke case.

    Calibration is fitted on out-of-fold logits: `folds` models, each trained without one fold of seeds,
    score that fold; Platt scaling is fitted on all of them (every train seed, every kind, serves once as
    validation), then applied to the model trained on every train seed. ECE and Brier are out-of-fold.

    `operating_point(oof)`, when given, picks the drain policy's operating point from the out-of-fold windows
    (`risk` = calibrated out-of-fold probability): its answer is kept as `metrics["operating_point"]`. The
    caller (the composition root) injects it because the drain replay lives downstream of training."""
    refuse_heldout(windows["seed"].unique(), heldout_from)
    ordered, x_all = risk_inputs(windows)
    w = label_windows(ordered, cfg.horizon_s)
    keep = w["keep"].to_numpy()
    w, x = w[keep], x_all[keep]
    y, seeds = w["label"].to_numpy(np.float32), w["seed"].to_numpy()
    if y.sum() == 0:
        raise ValueError("no positive window (no instance fails in the recordings): record more seeds")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    kinds = {s: str(k) for s, k in w[w["fault_kind"] != ""].groupby("seed")["fault_kind"].first().items()}
    n_seeds = len(np.unique(seeds))
    folds = min(cfg.folds, n_seeds)
    oof = out_of_fold_logits(x, y, seeds, kinds, folds, cfg, rng)
    module = fit_mlp(x, y, cfg, on_epoch)
    scored = ~np.isnan(oof)
    yo, lo = torch.from_numpy(y[scored]), torch.from_numpy(oof[scored])
    before = calibration(torch.sigmoid(lo).numpy(), yo.numpy())
    if scored.any() and 0 < float(yo.sum()) < len(yo):  # class weighting skews probabilities: Platt puts them back
        a, b = fit_platt(lo, yo)
        module.platt_a.fill_(a)
        module.platt_b.fill_(b)
    calibrated = torch.sigmoid(module.platt_a * lo + module.platt_b).numpy()
    metrics = {"windows": len(y), "positives": int(y.sum()), "seeds": n_seeds, "folds": folds,
               "out_of_fold_windows": int(scored.sum()), "uncalibrated": before, **calibration(calibrated, yo.numpy()),
               "platt": [round(float(module.platt_a), 4), round(float(module.platt_b), 4)],
               "positives_by_kind": {str(k): int(v) for k, v in w[w["label"] > 0].groupby("fault_kind").size().items()}}
    if operating_point is not None and scored.any():
        oof_windows = w[scored].drop(columns=["keep"]).assign(risk=calibrated)
        metrics["operating_point"] = operating_point(oof_windows)
    scripted = torch.jit.script(module)
    smoke = x[np.argsort(-y)[:4]] if len(x) >= 4 else x
    return scripted, metrics, smoke


def out_of_fold_logits(x: np.ndarray, y: np.ndarray, seeds: np.ndarray, kinds: dict[Any, str], folds: int,
                       cfg: RiskTrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Each window's logit from a model trained without its seed's fold (NaN where no fold model scored it)."""
    oof = np.full(len(y), np.nan, np.float32)
    if folds < 2:
        return oof
    fold_of = seed_folds(seeds, kinds, folds, rng)
    fold = np.array([fold_of[s] for s in seeds.tolist()])
    for k in range(folds):
        held = fold == k
        if held.all() or not y[~held].any():
            continue
        fold_model = fit_mlp(x[~held], y[~held], cfg)
        with torch.no_grad():
            oof[held] = fold_model.logit(torch.from_numpy(x[held])).numpy()
    return oof


def publish_risk(root: Any, module: torch.jit.ScriptModule, metrics: dict[str, Any], smoke_x: np.ndarray,
                 cfg: RiskTrainConfig, window_s: float, data_fp: str, extra: dict[str, Any]) -> tuple[Any, Any]:
    """A registry version of kind `risk` (HealthSpec: its input columns in order, window length, horizon)."""
    from datetime import UTC, datetime

    from infra.core.model_registry import HealthSpec, ModelManifest
    from training.registry import new_version, write_version

    now = datetime.now(UTC)
    manifest = ModelManifest(kind="risk", version=new_version(data_fp, now), name=MODEL_NAME, created_at=now,
                             health=HealthSpec(columns=list(RISK_COLUMNS), window_s=window_s,
                                               horizon_s=cfg.horizon_s),
                             config={**cfg.__dict__, **extra}, data_fingerprint=data_fp, metrics=metrics)
    path = write_version(root, module, manifest, {"x": torch.from_numpy(np.ascontiguousarray(smoke_x))})
    return path, manifest


def score(module: Any, windows: Any, columns: Any = RISK_COLUMNS) -> Any:
    """`windows` (sorted by service, window_start, instance) with the module's probability in `risk`."""
    w, x = risk_inputs(windows, columns)
    with torch.no_grad():
        w["risk"] = module(torch.from_numpy(x)).numpy() if len(w) else []
    return w
