"""Answers from registered health models (kinds `latency` and `risk`), with their explanations.

Functions of the module (TorchScript or plain torch) and arrays, no I/O, so the arithmetic is
unit-tested without the registry.

Weights from a latency model: each instance's capacity is the load at which its predicted p99
exceeds `slack` times the service's typical predicted p99 (the median at an equal share of the
service's requests), found on a grid of multiples of that share. Weights are proportional to
capacity * (1 - error rate); they may be 0 (drain): an instance failing every request, or one
whose capacity is under 1/512 of the best one's. An instance that completed no request in the
window has no latency to go by: it gets the median weight of the measured ones.

Explanations are attributions (integrated gradients from the service's median instance): the
inputs that push the prediction up the most are named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from infra.core.health_features import LOAD_COLUMNS, derive

# Multiples of an equal share of the service's requests at which capacity is probed.
LOAD_MULTIPLIERS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
EQUAL = LOAD_MULTIPLIERS.index(1.0)
MAX_MULTIPLIER = 10.0  # capacity is reported up to 10 equal shares
SLACK = 2.0
FLOOR_MS = 1.0
TOP_DRIVERS = 2
IG_STEPS = 8
MIN_EFFECT = 0.01  # smaller attributions are not worth a reason


def predict(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The module's output on `x` as numpy; a non-finite output raises (the caller falls back)."""
    with torch.inference_mode():
        out: torch.Tensor = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    values = out.numpy()
    if not np.isfinite(values).all():
        raise ValueError("the model gave NaN or infinite values")
    return values


def attributions(module: torch.nn.Module, x: np.ndarray, columns: Sequence[str], output: str,
                 steps: int = IG_STEPS) -> np.ndarray:
    """[n, columns]: how much each input moves the output away from the service's typical instance.

    Integrated gradients from the service's median input to each row (`steps` midpoints, one
    batched backward pass): the attributions of a row add up to output(row) - output(median),
    and a saturated output (a sigmoid near 1) still credits the inputs that saturated it.
    `output`: `p99` (log1p of the latency model's p99) or `risk`. Load columns read 0: the load
    is the question asked, not a reason."""
    n, c = x.shape
    if n == 0:
        return np.zeros((0, c))
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    base = torch.from_numpy(np.median(x, axis=0).astype(np.float32))  # as `drivers` words it (mean of the middle two)
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    path = (base + alphas[:, None, None] * (xt - base)[None]).reshape(-1, c).requires_grad_(True)
    out = module(path)
    picked = torch.log1p(out[:, 1].clamp_min(0.0)) if output == "p99" else out
    (grad,) = torch.autograd.grad(picked.sum(), path)
    effects = (grad.reshape(steps, n, c).mean(dim=0) * (xt - base)).detach().numpy().astype(np.float64)
    effects[:, [j for j, name in enumerate(columns) if name in LOAD_COLUMNS]] = 0.0
    return effects


def drivers(effects: np.ndarray, x: np.ndarray, columns: Sequence[str], describe: str,
            top: int = TOP_DRIVERS) -> list[list[str]]:
    """Per row, the inputs with the largest positive effect, worded: `<column> <value> (service median m)`."""
    if not len(x):
        return []
    median = np.median(x, axis=0)
    order = np.argsort(-effects, axis=1)[:, :top]
    out: list[list[str]] = []
    for i, js in enumerate(order.tolist()):
        out.append([f"{columns[j]} {x[i, j]:.3g} (service median {median[j]:.3g}) {describe} {effects[i, j]:+.2f}"
                    for j in js if effects[i, j] >= MIN_EFFECT])
    return out


def crossing_load(loads: np.ndarray, p99: np.ndarray, target: float, most: float) -> np.ndarray:
    """Per instance (column of `p99` [loads, n]), the load at which predicted p99 first exceeds `target`.

    Interpolated between the probed loads; under the first probe, scaled down from it; past the
    last, extrapolated along the last segment's slope, at most `most`. A model need not be
    monotone in load: the first crossing counts."""
    k, n = p99.shape
    over = p99 > target
    first = np.where(over.any(axis=0), np.argmax(over, axis=0), k)
    cols = np.arange(n)
    lo = np.where(first < k, first - 1, k - 2)
    hi = lo + 1
    lo_c = np.maximum(lo, 0)
    rise = p99[hi, cols] - p99[lo_c, cols]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = loads[lo_c] + (target - p99[lo_c, cols]) * (loads[hi] - loads[lo_c]) / rise
    under = loads[0] * target / np.maximum(p99[0], FLOOR_MS)
    out = np.where(first == 0, under, np.where(rise > 0, between, most))
    return np.clip(out, 0.0, most)


@dataclass(frozen=True)
class WeightAnswer:
    weights: list[int]
    reasons: list[list[str]]


def capacity_weights(module: torch.nn.Module, raw: dict[str, np.ndarray], columns: Sequence[str],
                     max_weight: int, slack: float = SLACK) -> WeightAnswer:
    """Weights of one service's instances from a latency model (rows -> [rows, 2] p50, p99 ms)."""
    requests = raw["requests"].astype(np.float64)
    n = requests.shape[0]
    share = max(float(requests.sum()) / max(n, 1), 1.0)
    loads = np.array(LOAD_MULTIPLIERS) * share
    x = np.concatenate([derive(raw, np.full(n, load), columns) for load in loads])
    p99 = np.maximum(predict(module, x)[:, 1].astype(np.float64).reshape(len(loads), n), 0.0)  # [loads, n]
    target = slack * max(float(np.median(p99[EQUAL])), FLOOR_MS)
    capacity = crossing_load(loads, p99, target, MAX_MULTIPLIER * share)
    error_rate = np.clip(raw.get("error_rate", np.zeros(n)).astype(np.float64), 0.0, 1.0)
    measured = (requests > 0) & (raw["latency_p99_ms"] > 0)
    score = np.where(measured, capacity * (1.0 - error_rate), 0.0)
    best = float(score.max()) if n else 0.0
    weights = np.round(score / best * max_weight) if best > 0 else np.zeros(n)
    # no request completed (idle, new or hung): latency unknown, so the typical weight, never the scale
    typical = float(np.round(np.median(weights[measured]))) if measured.any() else float(max_weight)
    weights = np.where(measured, weights, np.where(error_rate < 1.0, typical, 0.0))

    x_equal = x[EQUAL * n:(EQUAL + 1) * n]
    named = drivers(attributions(module, x_equal, columns, "p99"), x_equal, columns, "raises log p99 by")
    reasons = []
    for i in range(n):
        if not measured[i]:
            reasons.append(["no request completed in the window: latency unmeasured, weighed as the service's "
                            "median measured instance"])
            continue
        why = [f"capacity ~{capacity[i]:.3g} requests/window at predicted p99 <= {target:.3g} ms "
               f"(p99 {p99[EQUAL, i]:.3g} ms at an equal share of {share:.3g})"]
        if error_rate[i] > 0:
            why.append(f"error rate {error_rate[i]:.1%} scales it by {1 - error_rate[i]:.2f}")
        reasons.append(why + named[i])
    return WeightAnswer([int(w) for w in weights], reasons)


def risk_answer(module: torch.nn.Module, raw: dict[str, np.ndarray], columns: Sequence[str]
                ) -> tuple[list[float], list[list[str]]]:
    """Risk of one service's instances from a risk model (rows -> [rows] probabilities)."""
    x = derive(raw, None, columns)
    risks = np.clip(predict(module, x).astype(np.float64), 0.0, 1.0)
    reasons = drivers(attributions(module, x, columns, "risk"), x, columns, "adds risk", top=3)
    return [float(r) for r in risks], reasons
