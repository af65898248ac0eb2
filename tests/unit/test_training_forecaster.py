import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from infra.core.model_registry import MODEL_FILE, SMOKE_FILE, SmokeCase, list_versions, read_manifest
from training.baselines import seasonal_naive
from training.fit import TrainConfig, forecast, script, train
from training.forecaster import QuantileForecaster, pinball_loss
from training.publish import data_fingerprint, publish
from training.series import RateSeries

DAY = 1440


def synthetic(days: int, seed: int = 0) -> RateSeries:
    """Poisson counts per second around a daily cycle, averaged per minute."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    rate = 4 + 3 * np.sin(2 * np.pi * t / DAY)
    values = rng.poisson(rate * 60) / 60.0
    values[3 * DAY : 3 * DAY + 90] = np.nan  # an outage
    return RateSeries(values=values, start_unix_s=1_600_000_000.0, second_index=t * 60, n_seconds=len(t) * 60)


TINY = TrainConfig(epochs=4, hidden=32, recent=60, batch_size=256, lr=5e-3)


def test_pinball_loss_by_hand_and_ignores_missing_targets() -> None:
    pred = torch.tensor([[[1.0, 2.0]], [[1.0, 2.0]]])
    target = torch.tensor([[3.0], [float("nan")]])
    q = torch.tensor([0.5, 0.9])
    assert float(pinball_loss(pred, target, q)) == pytest.approx(0.5 * 2 + 0.9 * 1)  # summed over quantiles


def test_module_output_is_non_decreasing_and_survives_missing_history() -> None:
    module = QuantileForecaster(horizon=5, hidden=16, members=2).eval()
    scripted = torch.jit.script(module)
    history = torch.rand(3, module.history_len) * 10
    history[1, -200:] = float("nan")
    history[2] = float("nan")
    out = scripted(history, torch.tensor([1.6e9, math.nan, 1.6e9], dtype=torch.float64))
    assert out.shape == (3, 5, 3)
    assert torch.isfinite(out).all()
    assert (out[:, :, 1:] >= out[:, :, :-1]).all() and (out >= 0).all()


def test_training_is_seeded_and_beats_seasonal_naive_on_a_noisy_cycle() -> None:
    series = synthetic(6)
    a = train(series, (0, 4 * DAY), (4 * DAY, 5 * DAY), TINY)
    b = train(series, (0, 4 * DAY), (4 * DAY, 5 * DAY), TINY)
    for pa, pb in zip(a.module.parameters(), b.module.parameters(), strict=True):
        assert torch.equal(pa, pb)
    origins = np.arange(5 * DAY, 6 * DAY - 30)
    fc = forecast(script(a.module), series, origins, a.module.history_len)
    actual = series.values[origins + 4]
    naive = seasonal_naive(series.values, origins, 30)[:, 4]
    model_mae = np.mean(np.abs(actual - fc[:, 4, 0]))
    naive_mae = np.mean(np.abs(actual - naive))
    assert model_mae < 0.85 * naive_mae
    coverage = np.mean(actual <= fc[:, 4, 1])
    assert 0.75 < coverage < 0.99


def test_published_version_replays_its_smoke_case(tmp_path: Path) -> None:
    series = synthetic(5)
    result = train(series, (0, 4 * DAY), (4 * DAY, 5 * DAY), TINY.model_copy(update={"epochs": 1}))
    scripted = script(result.module)
    fp = data_fingerprint(series, {"source": "synthetic"})
    path, manifest = publish(tmp_path, scripted, result.module.history_len, TINY, fp, {"x": 1}, series)
    assert list_versions(tmp_path, "forecast") == [manifest.version]
    assert read_manifest(path).forecast is not None
    assert read_manifest(path).forecast.history_len == result.module.history_len  # type: ignore[union-attr]
    loaded = torch.jit.load(str(path / MODEL_FILE))
    smoke = SmokeCase.model_validate(json.loads((path / SMOKE_FILE).read_text()))
    inputs = {"history": torch.tensor(smoke.inputs["history"], dtype=torch.float32),
              "next_minute": torch.tensor(smoke.inputs["next_minute"], dtype=torch.float64)}
    assert torch.allclose(loaded(**inputs), torch.tensor(smoke.output), rtol=smoke.rtol, atol=smoke.atol)
    assert data_fingerprint(series, {"source": "synthetic"}) == fp
    assert data_fingerprint(synthetic(5, seed=1), {"source": "synthetic"}) != fp
