"""Replays a version's recorded smoke case before it may answer requests.

A file that loads can still be the wrong model (a truncated copy that happens to parse, a
mismatched `smoke.json`, a module saved from different weights); replaying one recorded call
and checking the output's shape, finiteness and order (quantiles; p50 <= p99) or range
(probabilities) catches that before traffic does.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from infra.core.model_registry import ModelManifest, SmokeCase

# dtypes of `forward`'s arguments per the registry contract (infra.core.model_registry); others float32.
INPUT_DTYPES: dict[str, torch.dtype] = {"history": torch.float32, "next_minute": torch.float64}


class SmokeFailure(ValueError):
    """The version does not reproduce its recorded call or breaks the output contract."""


def to_tensor(name: str, value: list[Any]) -> torch.Tensor:
    """JSON stores NaN as null; put it back before the module sees the input."""
    return torch.tensor(_nulls_to_nan(value), dtype=INPUT_DTYPES.get(name, torch.float32))


def _nulls_to_nan(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [_nulls_to_nan(v) for v in value]
    return value


def check_forecast_output(output: torch.Tensor, manifest: ModelManifest, batch: int) -> None:
    """Shape [batch, horizon, n_quantiles], all finite, quantiles non-decreasing."""
    spec = manifest.forecast
    if spec is None:
        raise SmokeFailure("manifest of a forecast model has no `forecast` spec")
    expected = (batch, spec.horizon, len(spec.quantiles))
    if tuple(output.shape) != expected:
        raise SmokeFailure(f"output shape {tuple(output.shape)}, expected {expected} (batch, horizon, quantiles)")
    if not torch.isfinite(output).all():
        raise SmokeFailure("output has NaN or infinite values")
    if output.shape[-1] > 1 and bool((output.diff(dim=-1) < 0).any()):
        raise SmokeFailure("quantiles are not non-decreasing along the last axis")


def check_health_output(output: torch.Tensor, manifest: ModelManifest, n: int) -> None:
    """Risk: [n] probabilities in [0, 1]; latency: [n, 2] milliseconds with 0 <= p50 <= p99. All finite."""
    if manifest.kind == "risk":
        if tuple(output.shape) != (n,):
            raise SmokeFailure(f"output shape {tuple(output.shape)}, expected ({n},) (one probability per instance)")
        if not torch.isfinite(output).all() or bool(((output < 0) | (output > 1)).any()):
            raise SmokeFailure("risk output is not a probability in [0, 1] everywhere")
        return
    if tuple(output.shape) != (n, 2):
        raise SmokeFailure(f"output shape {tuple(output.shape)}, expected ({n}, 2) (p50, p99 per instance)")
    if not torch.isfinite(output).all():
        raise SmokeFailure("output has NaN or infinite values")
    if bool((output[:, 0] < 0).any()) or bool((output[:, 0] > output[:, 1]).any()):
        raise SmokeFailure("latency output breaks 0 <= p50 <= p99")


def replay(module: torch.jit.ScriptModule, manifest: ModelManifest, smoke: SmokeCase) -> None:
    """Raises SmokeFailure unless the module gives the recorded output (within rtol/atol)."""
    inputs = {name: to_tensor(name, value) for name, value in smoke.inputs.items()}
    try:
        with torch.inference_mode():
            output = module(**inputs)
    except Exception as exc:  # a TorchScript runtime error names what broke; keep it as the reason
        raise SmokeFailure(f"forward failed on the smoke inputs: {exc}".splitlines()[0]) from exc
    if not isinstance(output, torch.Tensor):
        raise SmokeFailure(f"forward returned {type(output).__name__}, not a tensor")
    recorded = torch.tensor(_nulls_to_nan(smoke.output), dtype=output.dtype)
    if manifest.kind == "forecast":
        batch = next(iter(inputs.values())).shape[0] if inputs else 0
        check_forecast_output(output, manifest, batch)
    elif manifest.kind in ("risk", "latency"):
        x = inputs.get("x")
        if x is None or x.dim() != 2:
            raise SmokeFailure("the smoke case of a health model needs `x`, a matrix [instances, columns]")
        check_health_output(output, manifest, x.shape[0])
    if recorded.shape != output.shape:
        raise SmokeFailure(f"output shape {tuple(output.shape)} differs from the recorded {tuple(recorded.shape)}")
    if not torch.allclose(output, recorded, rtol=smoke.rtol, atol=smoke.atol, equal_nan=True):
        worst = float((output - recorded).abs().nan_to_num(0.0).max())
        raise SmokeFailure(
            f"output differs from the recorded one (max abs diff {worst:.3g}, rtol {smoke.rtol}, atol {smoke.atol})")
