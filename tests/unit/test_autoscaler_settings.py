"""The `autoscaler` settings as an operator writes them: the README's example, partial knob tables
over the presets, each scaler kind, and mistakes refused with what is wrong."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from infra.core.scaling import predictive_knobs, reactive_knobs
from infra.core.settings import AutoscalerSettings, KubernetesScalerSettings, PoolScalerSettings, RayServeScalerSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> dict[str, Any]:
    section = README.read_text().split("## Autoscaling", 1)[1]
    return tomllib.loads(section.split("```toml", 1)[1].split("```", 1)[0])["autoscaler"]


def test_the_readme_example_parses_and_its_partial_knobs_keep_the_presets_other_values() -> None:
    svc = AutoscalerSettings(**readme_example()).services[0]
    assert isinstance(svc.scaler, PoolScalerSettings)
    assert (svc.knobs.quantile, svc.knobs.headroom, svc.knobs.min_replicas) == (0.9, 0.1, 2)
    assert svc.knobs.scale_down_percent == predictive_knobs().scale_down_percent  # not overridden: the preset's
    assert svc.reactive == reactive_knobs()


def test_each_scaler_kind_is_chosen_by_its_kind() -> None:
    base = {"name": "a", "capacity_rps": 10, "startup_s": 5}
    cfg = AutoscalerSettings(services=[
        {**base, "name": "p", "scaler": {"kind": "pool"}},
        {**base, "name": "r", "scaler": {"kind": "ray_serve", "app": "shop", "deployment": "Api"}},
        {**base, "name": "k", "scaler": {"kind": "kubernetes", "deployment": "api"}},
    ])
    kinds = [type(s.scaler) for s in cfg.services]
    assert kinds == [PoolScalerSettings, RayServeScalerSettings, KubernetesScalerSettings]


@pytest.mark.parametrize(("service", "error"), [
    ({"scaler": {"kind": "nomad"}}, "nomad"),
    ({"scaler": {"kind": "kubernetes"}}, "deployment"),
    ({"scaler": {"kind": "pool"}, "knobs": {"quantile": 1.5}}, "quantile"),
    ({"scaler": {"kind": "pool"}, "knobs": {"min_replicas": 5, "max_replicas": 2}}, "min_replicas 5 > max_replicas 2"),
    ({"scaler": {"kind": "pool"}, "knobs": {"headrom": 0.1}}, "headrom"),
])
def test_mistakes_are_refused_naming_what_is_wrong(service: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        AutoscalerSettings(services=[{"name": "a", "capacity_rps": 10, "startup_s": 5, **service}])


def test_a_service_listed_twice_is_refused() -> None:
    svc = {"name": "a", "capacity_rps": 10, "startup_s": 5, "scaler": {"kind": "pool"}}
    with pytest.raises(ValidationError, match="listed twice"):
        AutoscalerSettings(services=[svc, svc])
