"""The Kubernetes and pool scalers against HTTP fakes that record what they are sent (the Ray Serve
scaler runs against a real Serve in tests/integration/test_autoscale_ray_serve.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.core.ports import free_port
from lb_adapters.actuators.base import ActuatorError
from lb_adapters.actuators.scalers.base import Replicas
from lb_adapters.actuators.scalers.kubernetes import KubernetesScaler, kube_client
from lb_adapters.actuators.scalers.pool import PoolScaler
from tests.unit.scaler_fakes import SCALE_PATH, fake_kubernetes_api, fake_pool_admin

RBAC = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "base" / "scaler-rbac.yaml"


def test_kubernetes_scaler_reads_and_patches_the_scale_subresource_only() -> None:
    with fake_kubernetes_api() as (url, api):
        api.replicas["web"], api.existing["web"] = 3, 2
        scaler = KubernetesScaler(kube_client(url), "shop", "web")
        assert scaler.current() == Replicas(current=3, ready=2)
        scaler.scale(5)
        assert api.replicas["web"] == 5
        assert scaler.current() == Replicas(current=5, ready=2)
    methods = [(r.method, r.path) for r in api.requests]
    path = "/apis/apps/v1/namespaces/shop/deployments/web/scale"
    assert methods == [("GET", path), ("PATCH", path), ("GET", path)]
    patch = api.requests[1]
    assert patch.body == {"spec": {"replicas": 5}}
    assert patch.content_type == "application/merge-patch+json"


def test_every_request_the_kubernetes_scaler_makes_is_allowed_by_its_rbac_and_nothing_more() -> None:
    docs = list(yaml.safe_load_all(RBAC.read_text()))
    rules = [rule for d in docs if d["kind"] == "Role" for rule in d["rules"]]
    assert rules == [{"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]}]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    with fake_kubernetes_api() as (url, api):
        api.replicas["web"] = 1
        scaler = KubernetesScaler(kube_client(url), "shop", "web")
        scaler.current()
        scaler.scale(2)
    allowed = {(verb, f"{g}/{res}") for r in rules for g in r["apiGroups"] for res in r["resources"]
               for verb in r["verbs"]}
    for req in api.requests:
        assert SCALE_PATH.match(req.path), req.path
        assert (req.method.lower(), "apps/deployments/scale") in allowed


def test_kubernetes_errors_are_actuator_errors_that_say_what_failed() -> None:
    with fake_kubernetes_api() as (url, _api):
        missing = KubernetesScaler(kube_client(url), "shop", "nope")
        with pytest.raises(ActuatorError, match=r"kubernetes/shop/nope: .*404.*not found"):
            missing.current()
        with pytest.raises(ActuatorError, match="404"):
            missing.scale(1)
    closed = KubernetesScaler(kube_client(f"http://127.0.0.1:{free_port()}"), "shop", "web")
    with pytest.raises(ActuatorError, match="unreachable"):
        closed.current()


def test_pool_scaler_speaks_the_pool_admin_contract() -> None:
    with fake_pool_admin() as (url, pool):
        pool.replicas["api"], pool.existing["api"], pool.ready["api"] = 2, 2, 1
        scaler = PoolScaler(url, "api")
        assert scaler.current() == Replicas(current=2, ready=1)
        scaler.scale(4)
        assert pool.replicas["api"] == 4
    assert [(r.method, r.path, r.body) for r in pool.requests] == [
        ("GET", "/v1/pools/api", None), ("PUT", "/v1/pools/api/replicas", {"replicas": 4})]


def test_pool_errors_are_actuator_errors() -> None:
    with fake_pool_admin() as (url, _pool):
        with pytest.raises(ActuatorError, match="answered 404"):
            PoolScaler(url, "ghost").current()
        _pool.replicas["api"] = 1
        with pytest.raises(ActuatorError, match="answered 422"):
            PoolScaler(url, "api").scale(-1)
    with pytest.raises(ActuatorError, match="unreachable"):
        PoolScaler(f"http://127.0.0.1:{free_port()}", "api").current()
