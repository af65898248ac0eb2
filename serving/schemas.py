"""Request and response models of the serving API; the schema is the documentation."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from infra.core.contracts import HAPROXY_MAX_WEIGHT

MAX_INSTANCES = 1000


class InstanceFeatures(BaseModel):
    """The latest feature window of one instance, as the weights model reads it."""

    instance: str = Field(min_length=1, max_length=256, examples=["s1"])
    latency_p99_ms: float = Field(ge=0, examples=[42.0])
    latency_p50_ms: float = Field(0.0, ge=0, examples=[8.0])
    requests: int = Field(0, ge=0, examples=[200])
    error_rate: float = Field(0.0, ge=0, le=1, description="5xx / requests in the window.")
    queue: float = Field(0.0, ge=0, description="Requests queued for this instance (HAProxy qcur).")
    sessions: float = Field(0.0, ge=0, description="Requests in flight at this instance (HAProxy scur, the "
                                                   "window's peak).")
    resource: float = Field(0.0, ge=0, le=1, description="The backend's resource gauge (0 fresh, 1 exhausted), "
                                                         "the window's peak.")
    busy: float = Field(0.0, ge=0, le=1, description="Share of the backend's workers busy, the window's peak.")


WINDOW_S_DOC = ("Length (s) of the windows the instances' counts (requests) cover. A learned model trained on "
               "another length is not used (the baseline answers, and `note` says why); omitted: assumed to be "
               "the model's, and `note` says so.")


class WeightsRequest(BaseModel):
    service: str = Field(min_length=1, max_length=256, examples=["demo"])
    instances: list[InstanceFeatures] = Field(min_length=1, max_length=MAX_INSTANCES)
    window_s: float | None = Field(None, gt=0, examples=[2.0], description=WINDOW_S_DOC)


class InstanceWeight(BaseModel):
    instance: str
    weight: int = Field(ge=0, le=HAPROXY_MAX_WEIGHT)
    reasons: list[str] | None = Field(None, description="A learned model's explanation: the predicted capacity "
                                                        "and latency, and the inputs that drove them.")


class WeightsResponse(BaseModel):
    service: str
    model: str = Field(description="Which model answered.")
    model_version: str = Field(description="Registry version of the model, or `baseline`.")
    weights: list[InstanceWeight]
    note: str | None = Field(None, description="Why the baseline answered instead of a learned version, or "
                                               "what was assumed (the window length).")


# A week of minutes: more history than any forecast model reads; longer requests get 422.
MAX_HISTORY_MINUTES = 10080
MAX_HORIZON_MINUTES = 1440


class ForecastRequest(BaseModel):
    """A service's recent rate, or only its name (the history is then read from ClickHouse)."""

    service: str = Field(min_length=1, max_length=256, examples=["demo"])
    history: list[float | None] | None = Field(
        None, min_length=1, max_length=MAX_HISTORY_MINUTES,
        description="Requests per second averaged per minute, oldest first; null marks a missing minute. "
                    "Omit to read the service's recent history from ClickHouse `features`.")
    next_minute: float | None = Field(
        None, description="Unix time (s) of the first forecast minute; lets a model use time of day. "
                          "Defaults to the minute after the ClickHouse history when that is used.")
    horizon: int = Field(60, ge=1, le=MAX_HORIZON_MINUTES,
                         description="Minutes to forecast; at most the answering model's horizon.")

    @field_validator("history")
    @classmethod
    def _some_minute_observed(cls, history: list[float | None] | None) -> list[float | None] | None:
        if history is not None and all(v is None for v in history):
            raise ValueError("history has no observed minute (every value is null)")
        if history is not None and any(v is not None and (v < 0 or v != v or v == float("inf")) for v in history):
            raise ValueError("history values must be finite and >= 0 (requests per second)")
        return history


class ForecastResponse(BaseModel):
    service: str
    model: str = Field(description="Which model answered.")
    model_version: str = Field(description="Registry version of the model, or `baseline`.")
    quantiles: list[float] = Field(description="Quantile levels, in the order of each forecast row.")
    step_s: int = Field(description="Seconds per forecast step.")
    next_minute: float | None = Field(description="Unix time (s) of the first forecast step, when known.")
    history_source: Literal["request", "clickhouse"]
    history_minutes: int = Field(description="Minutes of history given or read (the model uses its own length "
                                             "of the newest, padding older missing minutes).")
    forecast: list[list[float]] = Field(description="Requests per second: one row per step, one value per quantile.")


class RiskRequest(BaseModel):
    service: str = Field(min_length=1, max_length=256, examples=["demo"])
    instances: list[InstanceFeatures] = Field(min_length=1, max_length=MAX_INSTANCES)
    window_s: float | None = Field(None, gt=0, examples=[2.0], description=WINDOW_S_DOC)


class InstanceRisk(BaseModel):
    instance: str
    risk: float = Field(ge=0, le=1, description="0 = like its peers; towards 1 = far worse than them.")
    reasons: list[str] = Field(description="The signals that drove the score, worst first.")


class OperatingPoint(BaseModel):
    """Where the answering model's training chose to drain (on its train seeds, within a false-drain budget)."""

    drain_above: float = Field(gt=0, le=1, description="Drain at or above this risk ...")
    sustained_s: float = Field(ge=0, description="... held for this many seconds of consecutive windows.")


class RiskResponse(BaseModel):
    service: str
    model: str = Field(description="Which model answered.")
    model_version: str = Field(description="Registry version of the model, or `baseline`.")
    risks: list[InstanceRisk]
    operating_point: OperatingPoint | None = Field(None, description="The learned model's chosen drain point, "
                                                   "when its training chose one; the baseline has none.")
    note: str | None = Field(None, description="Why the baseline answered instead of a learned version, or "
                                               "what was assumed (the window length).")


class RefusedModel(BaseModel):
    version: str
    reason: str
    refused_at: float = Field(description="Unix time of the refusal.")


class ModelStatus(BaseModel):
    """What answers for one model kind, and which registry versions were refused and why."""

    kind: str
    model: str
    version: str = Field(description="Registry version in service, or `baseline`.")
    loaded_at: float | None = Field(None, description="Unix time the version went into service.")
    horizon: int | None = Field(None, description="Forecast models: longest horizon in minutes.")
    history_len: int | None = Field(None, description="Forecast models: minutes of history read.")
    quantiles: list[float] | None = None
    columns: list[str] | None = Field(None, description="Health models: the input features read, in order.")
    horizon_s: float | None = Field(None, description="Risk models: seconds ahead the probability covers.")
    refused: list[RefusedModel] = Field(default_factory=list)


class ReloadResponse(BaseModel):
    models: list[ModelStatus]
    loaded: list[str] = Field(description="`kind/version` put into service by this reload.")
    refused: list[RefusedModel] = Field(description="Versions this reload refused.")
