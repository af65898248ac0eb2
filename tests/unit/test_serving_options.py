"""Replica counts and Serve autoscaling bounds come from ServingSettings."""

from __future__ import annotations

from infra.core.settings import ServingSettings
from serving.deployment_options import ingress_options, model_options
from serving.weights_model import WeightsModel


def test_equal_bounds_give_a_fixed_replica_count() -> None:
    options = model_options(ServingSettings(model_min_replicas=2, model_max_replicas=2))
    assert options["num_replicas"] == 2 and "autoscaling_config" not in options
    assert ingress_options(ServingSettings(ingress_replicas=3))["num_replicas"] == 3


def test_different_bounds_autoscale_between_them() -> None:
    settings = ServingSettings(model_min_replicas=1, model_max_replicas=4, target_ongoing_requests=8)
    deployment = WeightsModel.options(**model_options(settings))
    autoscaling = deployment._deployment_config.autoscaling_config
    assert autoscaling is not None
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (1, 4, 8.0)
