"""The forecast deployment's batch logic without Ray: baseline, version in service, limits, fallback."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from serving.forecast_model import ForecastCall, ForecastModelReplica
from serving.models.forecast_baseline import HORIZON as BASELINE_HORIZON
from tests.unit.test_serving_loader import register


class FailsOnSpikes(torch.nn.Module):
    def forward(self, history: torch.Tensor, next_minute: torch.Tensor) -> torch.Tensor:
        if bool((history > 1000.0).any()):
            raise RuntimeError("spike beyond the training range")
        level = torch.nan_to_num(history).mean(dim=1)
        return torch.stack([level, level + 1.0, level + 2.0], dim=-1).unsqueeze(1).expand(-1, 4, -1).contiguous()


def call(history: list[float], horizon: int) -> ForecastCall:
    return ForecastCall(history, math.nan, horizon)


def test_an_empty_registry_answers_from_the_baseline(tmp_path: Path) -> None:
    replica = ForecastModelReplica(tmp_path, poll_s=0)
    short, too_long = replica.forecast_batch([call([4.0, 4.0], 3), call([4.0], BASELINE_HORIZON + 1)])
    assert (short.version, short.values) == ("baseline", [[4.0, 4.0, 4.0]] * 3)
    assert too_long.values is None and too_long.error is not None
    assert too_long.error.startswith(f"horizon {BASELINE_HORIZON + 1} is longer than the {BASELINE_HORIZON} minutes")


def test_requests_of_any_history_length_share_one_batch_of_the_version_in_service(tmp_path: Path) -> None:
    version = register(tmp_path, seed=1, offset_s=0, history_len=12, horizon=4)
    replica = ForecastModelReplica(tmp_path, poll_s=0)
    assert replica.status().version == version and replica.status().history_len == 12
    long, short = replica.forecast_batch([call([float(v) for v in range(30)], 4), call([7.0, 8.0], 2)])
    assert long.version == short.version == version
    current = replica._slot.current
    assert current is not None
    expected = current.module(torch.arange(18, 30, dtype=torch.float32).unsqueeze(0),
                              torch.tensor([math.nan], dtype=torch.float64))[0]
    assert torch.allclose(torch.tensor(long.values), expected, atol=1e-5)
    assert short.values is not None and len(short.values) == 2


def test_a_version_failing_on_a_batch_is_answered_for_by_the_baseline(tmp_path: Path) -> None:
    version = register(tmp_path, seed=0, offset_s=0, module=torch.jit.script(FailsOnSpikes()))
    replica = ForecastModelReplica(tmp_path, poll_s=0)
    calm = replica.forecast_batch([call([10.0] * 12, 2)])[0]
    assert calm.version == version and calm.values == [[10.0, 11.0, 12.0]] * 2
    spiky = replica.forecast_batch([call([10.0] * 11 + [5000.0], 2)])[0]
    assert (spiky.version, spiky.model) == ("baseline", "recent-level-quantiles")
    assert replica.status().version == version  # still in service for the inputs it handles
