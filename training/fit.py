"""Training loop of the forecaster: pinball loss, seeded, on the GPU when there is one.

Features are computed once by the module's own `features` (the same code the saved file runs),
so an epoch only runs the MLP. The epoch with the lowest validation loss is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from training.forecaster import QuantileForecaster, pinball_loss
from training.series import RateSeries

OnEpoch = Callable[[int, int, float, float], None]


class TrainConfig(BaseModel):
    """Everything that decides the trained weights (recorded in the manifest)."""

    model_config = ConfigDict(extra="forbid")

    horizon: int = Field(30, gt=0)
    quantiles: list[float] = Field(default_factory=lambda: [0.5, 0.9, 0.99])
    recent: int = Field(60, gt=0, description="Minutes of recent history the network reads.")
    yday_before: int = Field(30, ge=0)
    yday_after: int = Field(30, ge=0)
    hidden: int = Field(256, gt=0)
    layers: int = Field(2, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    members: int = Field(1, gt=0, description="MLPs trained side by side and averaged.")
    epochs: int = Field(8, gt=0)
    batch_size: int = Field(512, gt=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    torch_threads: int = Field(1, gt=0, description="CPU threads for torch; more threads than free cores is slower.")
    level_weighted: bool = Field(True, description="Weigh samples by their level: the forecast is judged by "
                                                   "absolute error, where busy hours count more.")
    min_recent_present: int = Field(30, ge=0, description="Origins with fewer present minutes in the last hour "
                                                          "are not trained on.")


def build_module(cfg: TrainConfig) -> QuantileForecaster:
    return QuantileForecaster(horizon=cfg.horizon, quantiles=tuple(cfg.quantiles), recent=cfg.recent,
                              yday_before=cfg.yday_before, yday_after=cfg.yday_after, hidden=cfg.hidden,
                              layers=cfg.layers, dropout=cfg.dropout, members=cfg.members)


def windows(values: np.ndarray, origins: np.ndarray, length: int) -> np.ndarray:
    """`values[t - length : t]` for each origin t, NaN where it reaches before the series."""
    padded = np.concatenate([np.full(length, np.nan), values])
    view = np.lib.stride_tricks.sliding_window_view(padded, length)
    return np.asarray(view[origins], dtype=np.float32)


def targets(values: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """`values[t : t + horizon]` for each origin t, NaN past the end."""
    padded = np.concatenate([values, np.full(horizon, np.nan)])
    view = np.lib.stride_tricks.sliding_window_view(padded, horizon)
    return np.asarray(view[origins], dtype=np.float32)


def trainable_origins(series: RateSeries, lo: int, hi: int, cfg: TrainConfig, history: int) -> np.ndarray:
    """Origins t whose history and whole target window lie in [lo, hi) and carry data."""
    lo = max(lo, history)
    origins = np.arange(lo, max(lo, hi - cfg.horizon + 1))
    if len(origins) == 0:
        return origins
    present = (~np.isnan(series.values)).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(present)])
    recent = cum[origins] - cum[np.maximum(origins - 60, 0)]
    ahead = cum[origins + cfg.horizon] - cum[origins]
    return origins[(recent >= cfg.min_recent_present) & (ahead > 0)]


@torch.no_grad()
def _features(module: QuantileForecaster, series: RateSeries, origins: np.ndarray, device: torch.device,
              chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    xs, levels = [], []
    for i in range(0, len(origins), chunk):
        part = origins[i : i + chunk]
        hist = torch.from_numpy(windows(series.values, part, module.history_len)).to(device)
        nxt = torch.from_numpy(series.unix_of(part)).to(device)
        x, level = module.features(hist, nxt)
        xs.append(x)
        levels.append(level)
    return torch.cat(xs), torch.cat(levels)


@dataclass
class TrainResult:
    module: QuantileForecaster
    train_loss: float
    val_loss: float
    best_epoch: int
    seconds: float
    samples: int
    device: str


def device_for() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _average_gradients(module: torch.nn.Module, world: int) -> None:
    """Data parallelism by hand: every worker steps with the mean gradient, so weights stay equal."""
    import torch.distributed as dist

    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


@dataclass
class _Samples:
    """Model inputs of some origins: features, level, targets relative to the level, sample weights."""

    x: torch.Tensor
    level: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor | None


def _standardise_level(module: QuantileForecaster, series: RateSeries, origins: np.ndarray) -> None:
    """Standardise the log-level input with training statistics (computed on a sample of origins)."""
    sample = origins[:: max(1, len(origins) // 2000)]
    recent_means = np.array([np.nanmean(series.values[max(t - 60, 0) : t]) for t in sample])
    logs = np.log(np.clip(recent_means[np.isfinite(recent_means)], 1e-3, None))
    module.log_level_mean.fill_(float(np.mean(logs)) if len(logs) else 0.0)
    module.log_level_std.fill_(max(float(np.std(logs)), 1e-3) if len(logs) else 1.0)


def _samples(module: QuantileForecaster, series: RateSeries, origins: np.ndarray, cfg: TrainConfig,
             device: torch.device) -> _Samples | None:
    """The samples of `origins` (None when there are none)."""
    if not len(origins):
        return None
    x, level = _features(module, series, origins, device)
    y = torch.from_numpy(targets(series.values, origins, cfg.horizon)).to(device) / level.unsqueeze(1)
    return _Samples(x, level, y, level / level.mean() if cfg.level_weighted else None)


def _optimiser(module: QuantileForecaster, cfg: TrainConfig, n_train: int,
               world: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.OneCycleLR]:
    """AdamW on a one-cycle schedule over `cfg.epochs` epochs of this worker's share of the samples."""
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_worker = n_train // world
    steps = cfg.epochs * ((per_worker + cfg.batch_size - 1) // cfg.batch_size)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)


def _epoch_order(rng: np.random.Generator, n: int, shard: tuple[int, int], device: torch.device) -> torch.Tensor:
    """This worker's samples for one epoch: same seed on every worker, so same order, disjoint shards."""
    rank, world = shard
    perm = rng.permutation(n)
    perm = perm[: len(perm) - len(perm) % world][rank::world]
    return torch.from_numpy(perm).to(device)


def _train_epoch(module: QuantileForecaster, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.OneCycleLR,
                 train: _Samples, order: torch.Tensor, q: torch.Tensor, batch_size: int, world: int) -> float:
    """One pass over `order` in batches; the mean training loss."""
    module.train()
    total, batches = 0.0, 0
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        w = train.weights[idx] if train.weights is not None else None
        outputs = module.member_outputs(train.x[idx])
        loss = torch.stack([pinball_loss(out, train.y[idx], q, w) for out in outputs]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            _average_gradients(module, world)
        opt.step()
        sched.step()
        total += float(loss.detach())
        batches += 1
    return total / batches


@torch.no_grad()
def _validation_loss(module: QuantileForecaster, val: _Samples | None, q: torch.Tensor, train_loss: float) -> float:
    """Pinball loss on the validation samples; without any, the training loss."""
    module.eval()
    if val is None:
        return train_loss
    return float(pinball_loss(module.normalised(val.x), val.y, q, val.weights))


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def train(series: RateSeries, train_range: tuple[int, int], val_range: tuple[int, int] | None, cfg: TrainConfig,
          on_epoch: OnEpoch | None = None, shard: tuple[int, int] = (0, 1),
          stop_after: int | None = None) -> TrainResult:
    """Fit a forecaster on minutes `train_range`, keep the epoch best on `val_range` (without one,
    the epoch with the lowest training loss).

    `stop_after` = N (a refit, `val_range` must be None): run the same `cfg.epochs`-long learning-rate
    schedule but stop after epoch N and keep those weights, so a refit on more data follows the
    trajectory whose epoch N validation chose.

    `shard` = (rank, world size) when several workers train together (Ray Train): each takes every
    world-th sample of the shuffled order and gradients are averaged across workers (a process
    group must be up), so all end with the same weights."""
    if stop_after is not None and not (val_range is None and 0 < stop_after <= cfg.epochs):
        raise ValueError(f"stop_after={stop_after} needs no validation range and 1..{cfg.epochs} epochs")
    world = shard[1]
    started = time.monotonic()
    torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = device_for()
    module = build_module(cfg).to(device)
    tr = trainable_origins(series, *train_range, cfg, module.history_len)
    if len(tr) < cfg.batch_size:
        raise ValueError(f"only {len(tr)} training origins with data in minutes {train_range}; need more history")
    _standardise_level(module, series, tr)
    train_set = _samples(module, series, tr, cfg, device)
    assert train_set is not None
    va = trainable_origins(series, *val_range, cfg, module.history_len) if val_range else np.array([], dtype=int)
    val_set = _samples(module, series, va, cfg, device)
    q = torch.tensor(cfg.quantiles, device=device, dtype=torch.float32)

    opt, sched = _optimiser(module, cfg, len(tr), world)
    best = (float("inf"), -1, _weights(module))
    train_loss = float("nan")
    run_epochs = cfg.epochs if stop_after is None else stop_after
    for epoch in range(run_epochs):
        order = _epoch_order(rng, len(tr), shard, device)
        train_loss = _train_epoch(module, opt, sched, train_set, order, q, cfg.batch_size, world)
        val_loss = _validation_loss(module, val_set, q, train_loss)
        if val_loss < best[0] or (stop_after is not None and epoch + 1 == stop_after):
            best = (val_loss, epoch, _weights(module))
        if on_epoch is not None:
            on_epoch(epoch + 1, run_epochs, train_loss, val_loss)
    module.load_state_dict(best[2])
    module.eval()
    return TrainResult(module=module.cpu(), train_loss=train_loss, val_loss=best[0], best_epoch=best[1] + 1,
                       seconds=time.monotonic() - started, samples=len(tr), device=str(device))


def script(module: QuantileForecaster) -> torch.jit.ScriptModule:
    scripted: torch.jit.ScriptModule = torch.jit.script(module.eval())
    return scripted


@torch.no_grad()
def forecast(module: torch.nn.Module, series: RateSeries, origins: np.ndarray, history: int,
             chunk: int = 4096) -> np.ndarray:
    """[len(origins), horizon, quantiles] forecasts, first step = minute t of each origin t."""
    outs = []
    for i in range(0, len(origins), chunk):
        part = origins[i : i + chunk]
        hist = torch.from_numpy(windows(series.values, part, history))
        nxt = torch.from_numpy(series.unix_of(part))
        outs.append(module(hist, nxt).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0, 0))
