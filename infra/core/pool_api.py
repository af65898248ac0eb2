"""The instance pool's admin API contract (`foresight pool`, loopback): what the autoscaler's pool
actuator sends and reads. In the foundation so lb_adapters can import it without the pool."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PoolInstance(BaseModel):
    instance: str = Field(description="Instance id, also its registry key and balancer server name.")
    port: int
    state: str = Field(description="starting (not registered yet) | ready | draining | drained | stopping | "
                                   "unknown (etcd unreachable)")
    pid: int | None = None
    started_at: int | None = Field(default=None, description="Epoch ms the instance registered as started "
                                   "(its registry record); None before it registers. A scale-down drains the "
                                   "newest ready instance first.")


class PoolStatus(BaseModel):
    """`GET /v1/pools/{service}`, also the body of the 202 answer to a replicas change."""

    service: str
    desired: int = Field(description="Replicas asked for.")
    current: int = Field(description="Instances that count towards `desired`: starting or ready (one drained by "
                         "the health controller or an operator does not; the pool replaces it).")
    ready: int = Field(description="Instances registered as `ready`.")
    instances: list[PoolInstance]


class ReplicasRequest(BaseModel):
    """`PUT /v1/pools/{service}/replicas`."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(ge=0, description="Backend processes wanted; must lie within the service's min/max.")
