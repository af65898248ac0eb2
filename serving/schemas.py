"""Request and response models of the serving API; the schema is the documentation."""

from __future__ import annotations

from pydantic import BaseModel, Field

MAX_INSTANCES = 1000
HAPROXY_MAX_WEIGHT = 256


class InstanceFeatures(BaseModel):
    """The latest feature window of one instance, as the weights model reads it."""

    instance: str = Field(min_length=1, max_length=256, examples=["s1"])
    latency_p99_ms: float = Field(ge=0, examples=[42.0])
    latency_p50_ms: float = Field(0.0, ge=0, examples=[8.0])
    requests: int = Field(0, ge=0, examples=[200])
    error_rate: float = Field(0.0, ge=0, le=1, description="5xx / requests in the window.")
    queue: float = Field(0.0, ge=0, description="Requests queued for this instance (HAProxy qcur).")


class WeightsRequest(BaseModel):
    service: str = Field(min_length=1, max_length=256, examples=["demo"])
    instances: list[InstanceFeatures] = Field(min_length=1, max_length=MAX_INSTANCES)


class InstanceWeight(BaseModel):
    instance: str
    weight: int = Field(ge=0, le=HAPROXY_MAX_WEIGHT)


class WeightsResponse(BaseModel):
    service: str
    model: str = Field(description="Which model answered.")
    model_version: str = Field(description="Registry version of the model, or `baseline`.")
    weights: list[InstanceWeight]
