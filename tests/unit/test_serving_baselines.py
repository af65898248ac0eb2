"""The baselines serving answers with when no model is registered, and the history they read."""

from __future__ import annotations

import math

import pytest
import torch

from serving.forecast_model import fit_history
from serving.history import per_minute_rates
from serving.models import peer_risk
from serving.models.forecast_baseline import HORIZON, QUANTILES, RecentLevelQuantiles
from serving.risk_model import risk_array
from serving.schemas import InstanceFeatures


def baseline(history: list[float]) -> torch.Tensor:
    return RecentLevelQuantiles()(torch.tensor([history], dtype=torch.float32), torch.tensor([math.nan]))[0]


def test_forecast_baseline_repeats_the_recent_quantiles_over_the_horizon() -> None:
    out = baseline([float(v) for v in range(1, 102)])  # the last 60 minutes are 42..101
    assert out.shape == (HORIZON, len(QUANTILES))
    expected = torch.quantile(torch.arange(42, 102, dtype=torch.float64), torch.tensor(QUANTILES, dtype=torch.float64))
    assert torch.allclose(out[0].double(), expected, atol=1e-4)
    assert torch.equal(out[0], out[-1])


def test_forecast_baseline_skips_missing_minutes() -> None:
    out = baseline([math.nan, 10.0, math.nan, 10.0, 10.0])
    assert out[0].tolist() == [10.0, 10.0, 10.0]
    assert torch.isnan(baseline([math.nan, math.nan])).all()  # nothing observed: the caller reports it


def test_fit_history_keeps_the_newest_minutes_and_pads_the_oldest() -> None:
    assert fit_history([1.0, 2.0, 3.0, 4.0], 2).tolist() == [3.0, 4.0]
    padded = fit_history([1.0, 2.0], 4)
    assert torch.isnan(padded[:2]).all() and padded[2:].tolist() == [1.0, 2.0]


def test_per_minute_rates_fill_gaps_with_zero_and_start_at_the_first_observed_minute() -> None:
    end = 1_800_000_000 - 1_800_000_000 % 60
    rows = [(end - 300, 600), (end - 120, 60), (end, 999), (end - 6000, 5)]  # current and too-old minutes left out
    history = per_minute_rates(rows, end_minute=end, minutes=10)
    assert history.rates == [10.0, 0.0, 0.0, 1.0, 0.0]
    assert history.next_minute == end
    assert per_minute_rates([], end, 10).rates == []


def features(*rows: tuple[float, float, float]) -> torch.Tensor:
    return torch.from_numpy(risk_array([InstanceFeatures(instance=f"i{n}", latency_p99_ms=p99, error_rate=err, queue=q)
                                         for n, (p99, err, q) in enumerate(rows)]))


def test_risk_flags_the_instance_that_deviates_from_its_peers() -> None:
    x = features((20.0, 0.0, 0.0), (22.0, 0.01, 0.0), (21.0, 0.0, 1.0), (180.0, 0.2, 12.0))
    z = peer_risk.deviation_z(x)
    risk = peer_risk.risk_scores(z).tolist()
    assert max(range(4), key=lambda i: risk[i]) == 3 and risk[3] > 0.9
    assert all(r < 0.3 for r in risk[:3])
    why = peer_risk.reasons(x, z)
    assert why[:3] == [[], [], []]
    assert why[3][0].startswith("latency_p99_ms 180ms vs peers' median")
    assert {reason.split()[0] for reason in why[3]} == {"latency_p99_ms", "error_rate", "queue"}


def test_a_leak_is_flagged_by_its_resource_gauge_before_its_latency_moves() -> None:
    """Peers near 0 of the resource: 0.03 is one unit of deviation, so 0.29 above them is risk 0.8."""
    def leaking(resource: float) -> list[float]:
        rows = [InstanceFeatures(instance=f"i{n}", latency_p99_ms=p99, resource=r)
                for n, (p99, r) in enumerate([(20.0, 0.0), (20.0, 0.0), (20.0, resource)])]
        x = torch.from_numpy(risk_array(rows))
        return peer_risk.risk_scores(peer_risk.deviation_z(x)).tolist()

    assert leaking(0.0)[2] == 0.0
    assert 0.7 < leaking(0.25)[2] < 0.8 < leaking(0.3)[2]
    assert leaking(0.3)[:2] == [0.0, 0.0]  # its peers are not blamed for it
    rows = [InstanceFeatures(instance=f"i{n}", latency_p99_ms=20.0, resource=r) for n, r in enumerate([0.0, 0.01, 0.5])]
    x = torch.from_numpy(risk_array(rows))
    assert peer_risk.reasons(x, peer_risk.deviation_z(x))[2][0].startswith("resource 0.5 vs peers' median 0.01")


def test_identical_peers_and_lone_instances_are_not_at_risk() -> None:
    same = features((30.0, 0.5, 2.0), (30.0, 0.5, 2.0), (30.0, 0.5, 2.0))
    assert peer_risk.risk_scores(peer_risk.deviation_z(same)).tolist() == [0.0, 0.0, 0.0]
    lone = features((900.0, 1.0, 50.0))
    assert peer_risk.risk_scores(peer_risk.deviation_z(lone)).tolist() == [0.0]
    assert peer_risk.reasons(lone, peer_risk.deviation_z(lone)) == [["no peers to compare with"]]


@pytest.mark.parametrize("better", [(5.0, 0.0, 0.0), (1.0, 0.0, 0.0)])
def test_an_instance_better_than_its_peers_is_not_at_risk(better: tuple[float, float, float]) -> None:
    x = features(better, (40.0, 0.0, 0.0), (41.0, 0.0, 0.0), (39.0, 0.0, 0.0))
    assert peer_risk.risk_scores(peer_risk.deviation_z(x))[0].item() == 0.0
