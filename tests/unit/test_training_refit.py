"""The backtest's refit: the model scored on test is retrained on train + validation, for the
epoch count validation chose; the predictive headroom is still tuned with the validation-phase model."""

from typing import Any

import pytest
import torch

from tests.unit.test_training_forecaster import DAY, TINY, synthetic
from training import backtest
from training.autoscale import Forecasts, ScalingSpec
from training.backtest import BacktestConfig, run_backtest
from training.fit import TrainResult, train, trainable_origins
from training.splits import Splits

CFG = TINY.model_copy(update={"epochs": 3})


def _spied_backtest(monkeypatch: pytest.MonkeyPatch, refit: bool) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                                           list[tuple[int, str]], Splits]:
    series = synthetic(6)
    splits = Splits(val_start=4 * DAY, test_start=5 * DAY, end=6 * DAY)
    calls: list[dict[str, Any]] = []
    sources: dict[int, str] = {}
    uppers: list[tuple[int, str]] = []

    def spy_train(series_: Any, train_range: tuple[int, int], val_range: tuple[int, int] | None, cfg: Any,
                  on_epoch: Any = None, stop_after: int | None = None) -> TrainResult:
        result = train(series_, train_range, val_range, cfg, on_epoch, stop_after=stop_after)
        calls.append({"train_range": train_range, "val_range": val_range, "stop_after": stop_after,
                      "result": result, "name": "val-phase" if len(calls) == 0 else "refit"})
        return result

    real_script, real_forecasts = backtest.script, backtest._forecasts

    def spy_script(module: Any) -> torch.jit.ScriptModule:
        scripted = real_script(module)
        sources[id(scripted)] = calls[-1]["name"]
        return scripted

    def spy_forecasts(module: torch.nn.Module, series_: Any, lo: int, *rest: Any) -> Forecasts:
        uppers.append((lo, sources[id(module)]))
        return real_forecasts(module, series_, lo, *rest)

    monkeypatch.setattr(backtest, "train", spy_train)
    monkeypatch.setattr(backtest, "script", spy_script)
    monkeypatch.setattr(backtest, "_forecasts", spy_forecasts)
    cfg = BacktestConfig(scale=20, spec=ScalingSpec(capacity=10, startup_s=120), train=CFG, refit=refit,
                         hpa_targets=(0.5, 0.7), headrooms=(0.0, 0.5))
    bt = run_backtest(series, splits, cfg, lambda _: None)
    assert bt.trained is calls[-1]["result"]
    return bt.result, calls, uppers, splits


def test_refit_trains_on_train_plus_validation_for_the_chosen_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    result, calls, uppers, splits = _spied_backtest(monkeypatch, refit=True)
    assert len(calls) == 2
    first, refit = calls
    assert first["train_range"] == splits.train and first["val_range"] == splits.val
    # The refit sees every minute before the test range, and none of it is held out.
    assert refit["train_range"] == (0, splits.test_start) and refit["val_range"] is None
    assert refit["stop_after"] == first["result"].best_epoch == refit["result"].best_epoch
    history = first["result"].module.history_len
    before_test = trainable_origins(synthetic(6), 0, splits.test_start, CFG, history)
    assert refit["result"].samples == len(before_test) > first["result"].samples
    assert int(before_test.max()) >= splits.val_start  # validation rows were trained on
    setup = result["setup"]
    assert setup["refit"] is True and setup["refit_epochs"] == first["result"].best_epoch
    assert setup["refit_samples"] == refit["result"].samples and setup["refit_minutes"] == [0, splits.test_start]
    # Headroom tuned on validation with the model that never saw validation; test uses the refit one.
    assert sorted(uppers) == [(splits.val_start, "val-phase"), (splits.test_start, "refit")]


def test_no_refit_scores_the_validation_phase_model(monkeypatch: pytest.MonkeyPatch) -> None:
    result, calls, uppers, splits = _spied_backtest(monkeypatch, refit=False)
    assert len(calls) == 1
    assert result["setup"]["refit"] is False and result["setup"]["refit_epochs"] is None
    assert sorted(uppers) == [(splits.val_start, "val-phase"), (splits.test_start, "val-phase")]
    assert set(result["forecast"]["5"]) >= {"model", "seasonal_naive", "ewma", "holt_winters"}


def test_stop_after_runs_that_many_epochs_of_the_same_schedule_and_keeps_the_last() -> None:
    series = synthetic(5)
    seen: list[tuple[int, int]] = []
    cfg = TINY.model_copy(update={"epochs": 4})
    two = train(series, (0, 5 * DAY), None, cfg, lambda e, n, *_: seen.append((e, n)), stop_after=2)
    assert seen == [(1, 2), (2, 2)] and two.best_epoch == 2
    again = train(series, (0, 5 * DAY), None, cfg, stop_after=2)
    for pa, pb in zip(two.module.parameters(), again.module.parameters(), strict=True):
        assert torch.equal(pa, pb)  # seeded
    with pytest.raises(ValueError, match="stop_after"):
        train(series, (0, 4 * DAY), (4 * DAY, 5 * DAY), cfg, stop_after=2)
