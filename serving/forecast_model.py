"""The forecast deployment: the registry's newest valid forecast version, or the baseline.

Each replica loads from the registry at start, polls it every `poll_s`, and reloads on
request; a reload requested on any replica is followed by every replica before its next answer
(see serving.registry_loader). The version in service is read once per batch, so a swap never
splits a batch.
Concurrent requests are padded to the model's history length and evaluated as one tensor.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from ray import serve

from serving.models import forecast_baseline
from serving.registry_loader import LoadedVersion, RegistryReplica
from serving.schemas import ModelStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForecastCall:
    history: list[float]  # NaN for missing minutes
    next_minute: float  # NaN when unknown
    horizon: int


@dataclass(frozen=True)
class ForecastResult:
    model: str
    version: str
    quantiles: list[float]
    step_s: int
    values: list[list[float]] | None  # [horizon][quantiles]; None when `error` says why
    error: str | None = None


@dataclass(frozen=True)
class _Answering:
    """What a batch runs with: the loaded version, or the baseline in its stead."""

    name: str
    version: str
    module: torch.nn.Module
    history_len: int
    horizon: int
    quantiles: list[float]
    step_s: int


def fit_history(history: list[float], length: int) -> torch.Tensor:
    """The last `length` minutes, left-padded with NaN (missing) when there are fewer."""
    tail = history[-length:]
    return torch.tensor([math.nan] * (length - len(tail)) + tail, dtype=torch.float32)


class ForecastModelReplica(RegistryReplica):
    kind = "forecast"

    def __init__(self, registry_root: Path, poll_s: float) -> None:
        torch.set_num_threads(1)
        self._baseline = forecast_baseline.RecentLevelQuantiles().eval()
        self._start_registry(registry_root, poll_s)

    def _baseline_answering(self) -> _Answering:
        return _Answering(forecast_baseline.MODEL_NAME, forecast_baseline.MODEL_VERSION, self._baseline,
                          forecast_baseline.HISTORY_LEN, forecast_baseline.HORIZON,
                          list(forecast_baseline.QUANTILES), 60)

    def _answering(self) -> _Answering:
        loaded: LoadedVersion | None = self._slot.current
        if loaded is None or loaded.manifest.forecast is None:
            return self._baseline_answering()
        spec = loaded.manifest.forecast
        return _Answering(loaded.manifest.name, loaded.version, loaded.module, spec.history_len, spec.horizon,
                          spec.quantiles, spec.step_s)

    def status(self) -> ModelStatus:
        loaded = self._loaded()
        answering = self._answering()
        return ModelStatus(
            kind="forecast", model=answering.name, version=answering.version,
            loaded_at=loaded.loaded_at if loaded else None, horizon=answering.horizon,
            history_len=answering.history_len,
            quantiles=answering.quantiles,
            refused=self.refused_models())

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def forecast(self, calls: list[ForecastCall]) -> list[ForecastResult]:
        return self.forecast_batch(calls)

    def forecast_batch(self, calls: list[ForecastCall]) -> list[ForecastResult]:
        """One tensor evaluation for all `calls`, with the version in service when the batch starts."""
        self._slot.follow()
        answering = self._answering()
        try:
            output = self._run(answering, calls)
        except Exception:
            if answering.version == forecast_baseline.MODEL_VERSION:
                raise
            # A version that passed its smoke check can still fail on some input; answer anyway.
            logger.exception("forecast model %s failed on a batch; answering from the baseline", answering.version)
            answering = self._baseline_answering()
            output = self._run(answering, calls)
        results = []
        for call, rows in zip(calls, output, strict=True):
            error = None
            if call.horizon > answering.horizon:
                error = (f"horizon {call.horizon} is longer than the {answering.horizon} minutes model "
                         f"{answering.name} ({answering.version}) forecasts")
            elif not bool(torch.isfinite(rows[: call.horizon]).all()):
                error = f"model {answering.name} ({answering.version}) gave no finite forecast for this history"
            results.append(ForecastResult(
                answering.name, answering.version, answering.quantiles, answering.step_s,
                None if error else rows[: call.horizon].tolist(), error))
        return results

    @staticmethod
    def _run(answering: _Answering, calls: list[ForecastCall]) -> torch.Tensor:
        history = torch.stack([fit_history(call.history, answering.history_len) for call in calls])
        next_minute = torch.tensor([call.next_minute for call in calls], dtype=torch.float64)
        with torch.inference_mode():
            output: torch.Tensor = answering.module(history, next_minute)
        expected = (len(calls), answering.horizon, len(answering.quantiles))
        if tuple(output.shape) != expected:
            raise ValueError(f"output shape {tuple(output.shape)}, expected {expected}")
        return output


ForecastModel = serve.deployment(name="ForecastModel")(ForecastModelReplica)
