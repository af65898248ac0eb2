"""A Kubernetes Deployment's replicas through its `scale` subresource (lightkube).

Only `get` and `patch` on `deployments/scale` (infra/k8s/base/scaler-rbac.yaml). The subresource carries
no readiness: `ready` is its `status.replicas` (pods that exist, capped at the spec), an upper bound of
the ready count; reading `status.readyReplicas` would need `get` on the Deployment itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from lightkube import ApiError, Client, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.resources.apps_v1 import Deployment
from lightkube.types import PatchType

from lb_adapters.actuators.base import ActuatorError
from lb_adapters.actuators.scalers.base import Replicas

T = TypeVar("T")


def kube_client(server: str | None = None, namespace: str | None = None, token: str | None = None) -> Client:
    """A client of `server` (with `token` when given; none for `kubectl proxy`), else the usual kubeconfig
    or the pod's service account."""
    if server:
        # An explicit (empty) user: KubeConfig.from_server leaves none, which lightkube then refuses.
        config = KubeConfig.from_one(cluster=Cluster(server=server), user=User(token=token), namespace=namespace)
        return Client(config=config, field_manager="foresight-autoscaler")
    return Client(namespace=namespace, field_manager="foresight-autoscaler")


class KubernetesScaler:
    name = "kubernetes"

    def __init__(self, client: Client, namespace: str, deployment: str) -> None:
        self.client, self.namespace, self.deployment = client, namespace, deployment
        self.target = f"kubernetes/{namespace}/{deployment}"

    def current(self) -> Replicas:
        scale = self._call(lambda: self.client.get(Deployment.Scale, self.deployment, namespace=self.namespace))
        wanted = (scale.spec.replicas if scale.spec else None) or 0
        existing = (scale.status.replicas if scale.status else None) or 0
        return Replicas(max(wanted, existing), min(wanted, existing))

    def scale(self, replicas: int) -> None:
        self._call(lambda: self.client.patch(Deployment.Scale, self.deployment, {"spec": {"replicas": replicas}},
                                             namespace=self.namespace, patch_type=PatchType.MERGE))

    def _call(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except ApiError as exc:
            raise ActuatorError(f"{self.target}: Kubernetes API answered {exc.status.code}: "
                                f"{exc.status.message}") from exc
        except Exception as exc:  # transport errors come from lightkube's HTTP library (httpx2)
            raise ActuatorError(f"{self.target}: Kubernetes API unreachable: {exc}") from exc
