"""Answers from registered health models (kinds `latency` and `risk`), with their explanations.

Pure functions of a `predict` callable (the TorchScript module wrapped), so the arithmetic is
unit-tested without the registry.

Weights from a latency model: each instance's capacity is the load at which its predicted p99
exceeds `slack` times the service's typical predicted p99 (the median at an equal share of the
service's requests), found on a grid of multiples of that share. Weights are proportional to
capacity * (1 - error rate); they may be 0 (drain): an instance failing every request, or one
whose capacity is under 1/512 of the best one's.

Explanations are occlusions: an input drives a prediction when putting the service's median
value in its place moves the prediction; the largest moves are named.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from infra.core.health_features import LOAD_COLUMNS, derive

Predict = Callable[[np.ndarray], np.ndarray]  # float32 [rows, columns] -> the module's output as numpy

# Multiples of an equal share of the service's requests at which capacity is probed.
LOAD_MULTIPLIERS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
EQUAL = LOAD_MULTIPLIERS.index(1.0)
MAX_MULTIPLIER = 10.0  # capacity is reported up to 10 equal shares
SLACK = 2.0
FLOOR_MS = 1.0
TOP_DRIVERS = 2


def module_predict(module: torch.nn.Module) -> Predict:
    """A TorchScript health module as a numpy function; a non-finite output raises (the caller falls back)."""
    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: torch.Tensor = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        values = out.numpy()
        if not np.isfinite(values).all():
            raise ValueError("the model gave NaN or infinite values")
        return values
    return predict


def occlusion_effects(predict: Predict, x: np.ndarray, columns: list[str] | tuple[str, ...]) -> np.ndarray:
    """[n, columns]: predict(x) minus predict(x with that column at the median of the rows); load columns 0.

    `predict` must return one value per row (take the output of interest before calling)."""
    n, c = x.shape
    base = predict(x)
    median = np.median(x, axis=0)
    probed = [j for j, name in enumerate(columns) if name not in LOAD_COLUMNS]
    effects = np.zeros((n, c), dtype=np.float64)
    if not probed or n == 0:
        return effects
    stacked = np.repeat(x[None, :, :], len(probed), axis=0)
    for k, j in enumerate(probed):
        stacked[k, :, j] = median[j]
    moved = predict(stacked.reshape(-1, c)).reshape(len(probed), n)
    effects[:, probed] = (base[None, :] - moved).T
    return effects


def drivers(effects: np.ndarray, x: np.ndarray, columns: list[str] | tuple[str, ...], describe: str,
            top: int = TOP_DRIVERS) -> list[list[str]]:
    """Per row, the inputs with the largest positive effect, worded: `<column> <value> (service median m)`."""
    median = np.median(x, axis=0) if len(x) else np.zeros(x.shape[1])
    out: list[list[str]] = []
    for i in range(x.shape[0]):
        order = [j for j in np.argsort(-effects[i]) if effects[i, j] > 1e-6][:top]
        out.append([f"{columns[j]} {x[i, j]:.3g} (service median {median[j]:.3g}) {describe} {effects[i, j]:+.2f}"
                    for j in order])
    return out


@dataclass(frozen=True)
class WeightAnswer:
    weights: list[int]
    reasons: list[list[str]]


def crossing_load(loads: np.ndarray, p99: np.ndarray, target: float, most: float) -> np.ndarray:
    """Per instance (column of `p99` [loads, n]), the load at which predicted p99 first exceeds `target`.

    Interpolated between the probed loads; under the first probe, scaled down from it; past the
    last, extrapolated along the last segment's slope, at most `most`. A model need not be
    monotone in load: the first crossing counts."""
    k, n = p99.shape
    over = p99 > target
    first = np.where(over.any(axis=0), np.argmax(over, axis=0), k)
    out = np.empty(n)
    for i in range(n):
        f = int(first[i])
        if f == 0:
            out[i] = loads[0] * target / max(float(p99[0, i]), FLOOR_MS)
            continue
        lo, hi = (f - 1, f) if f < k else (k - 2, k - 1)
        rise = float(p99[hi, i] - p99[lo, i])
        if rise <= 0:
            out[i] = most
            continue
        out[i] = loads[lo] + (target - float(p99[lo, i])) * (loads[hi] - loads[lo]) / rise
    return np.clip(out, 0.0, most)


def capacity_weights(predict: Predict, raw: dict[str, np.ndarray], columns: list[str] | tuple[str, ...],
                     max_weight: int, slack: float = SLACK) -> WeightAnswer:
    """Weights of one service's instances from a latency model (`predict`: rows -> [rows, 2] p50, p99 ms)."""
    requests = raw["requests"].astype(np.float64)
    n = requests.shape[0]
    share = max(float(requests.sum()) / max(n, 1), 1.0)
    loads = np.array(LOAD_MULTIPLIERS) * share
    x = np.concatenate([derive(raw, np.full(n, load), columns) for load in loads])
    p99 = np.maximum(predict(x)[:, 1].astype(np.float64).reshape(len(loads), n), 0.0)  # [loads, n]
    target = slack * max(float(np.median(p99[EQUAL])), FLOOR_MS)
    capacity = crossing_load(loads, p99, target, MAX_MULTIPLIER * share)
    error_rate = np.clip(raw.get("error_rate", np.zeros(n)).astype(np.float64), 0.0, 1.0)
    score = capacity * (1.0 - error_rate)
    best = float(score.max()) if n else 0.0
    weights = np.round(score / best * max_weight) if best > 0 else np.zeros(n)

    x_equal = x[EQUAL * n:(EQUAL + 1) * n]
    effects = occlusion_effects(lambda rows: np.log1p(np.maximum(predict(rows)[:, 1], 0.0)), x_equal, columns)
    named = drivers(effects, x_equal, columns, "raises log p99 by")
    reasons = []
    for i in range(n):
        why = [f"capacity ~{capacity[i]:.3g} requests/window at predicted p99 <= {target:.3g} ms "
               f"(p99 {p99[EQUAL, i]:.3g} ms at an equal share of {share:.3g})"]
        if error_rate[i] > 0:
            why.append(f"error rate {error_rate[i]:.1%} scales it by {1 - error_rate[i]:.2f}")
        reasons.append(why + named[i])
    return WeightAnswer([int(w) for w in weights], reasons)


def risk_answer(predict: Predict, raw: dict[str, np.ndarray], columns: list[str] | tuple[str, ...]
                ) -> tuple[list[float], list[list[str]]]:
    """Risk of one service's instances from a risk model (`predict`: rows -> [rows] probabilities)."""
    x = derive(raw, None, columns)
    risks = np.clip(predict(x).astype(np.float64), 0.0, 1.0)
    reasons = drivers(occlusion_effects(predict, x, columns), x, columns, "adds risk", top=3)
    return [float(r) for r in risks], reasons
