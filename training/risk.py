"""The risk model: a small MLP on the risk inputs, calibrated, saved as one TorchScript module.

`forward(x float32 [n, len(columns)]) -> float32 [n]`: the probability that each instance fails within
the horizon. Standardisation and the calibration (Platt scaling of the logit, fitted on a validation
split of the TRAIN seeds, by seed so one scenario never sits on both sides) are folded into the module,
so a server only feeds the columns in manifest order.

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
    val_frac: float = 0.25
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


def split_by_seed(seeds: np.ndarray, y: np.ndarray, val_frac: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of validation rows: whole seeds (scenarios), `val_frac` of those with a failure and of
    those without (at least one of each kind when there are two), so calibration sees positives."""
    val: list[Any] = []
    failing = set(np.unique(seeds[y > 0]).tolist())
    for group in (sorted(failing), sorted(set(np.unique(seeds).tolist()) - failing)):
        n_val = max(1, round(len(group) * val_frac)) if len(group) > 1 else 0
        val += rng.choice(np.array(group), size=n_val, replace=False).tolist() if n_val else []
    return np.isin(seeds, val)


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


def train_risk(windows: Any, cfg: RiskTrainConfig, heldout_from: int,
               on_epoch: Any = lambda _e, _l: None) -> tuple[torch.jit.ScriptModule, dict[str, Any], np.ndarray]:
    """Train on recorded windows (TRAIN seeds only). Returns the scripted module, its metrics (validation
    split, before and after calibration) and a few input rows for the smoke case."""
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
    val = split_by_seed(seeds, y, cfg.val_frac, rng)
    xt, yt = torch.from_numpy(x[~val]), torch.from_numpy(y[~val])
    xv, yv = torch.from_numpy(x[val]), torch.from_numpy(y[val])
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
    module.eval()
    with torch.no_grad():
        raw_v = module.logit(xv) if len(xv) else torch.zeros(0)
    before = calibration(torch.sigmoid(raw_v).numpy(), yv.numpy())
    if len(xv) and 0 < float(yv.sum()) < len(yv):  # the class weighting skews probabilities: Platt puts them back
        a, b = fit_platt(raw_v, yv)
        module.platt_a.fill_(a)
        module.platt_b.fill_(b)
    with torch.no_grad():
        pv = module(xv).numpy() if len(xv) else np.zeros(0)
    metrics = {"val_windows": len(yv), "val_positives": int(yv.sum()), "train_windows": len(yt),
               "train_positives": int(pos), "val_seeds": sorted(int(s) for s in np.unique(seeds[val])),
               "uncalibrated": before, **calibration(pv, yv.numpy()),
               "platt": [round(float(module.platt_a), 4), round(float(module.platt_b), 4)]}
    scripted = torch.jit.script(module)
    smoke = x[np.argsort(-y)[:4]] if len(x) >= 4 else x
    return scripted, metrics, smoke


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
