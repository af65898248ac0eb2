"""What the KEDA scaler answers: a pure function of the trigger, a forecast or observed load, and now.

HPA sizes a deployment as ceil(metric / target per replica). The metric here is the request rate the
deployment must carry by the time a replica started now is ready and one more interval has passed:
the forecast's p90 peak over startup + interval. A forecast that is too old (serving away) is stale;
the answer is then the observed peak of the last minutes, and says so. With neither, the scaler
answers an error and KEDA/HPA keep the current size (fail-static).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.schemas import ForecastResponse

# Trigger metadata keys that KEDA itself reads; they reach the scaler too and are not ours to check.
KEDA_KEYS = frozenset({"scalerAddress", "caCert", "tlsCertFile", "tlsClientCert", "tlsClientKey", "unsafeSsl",
                       "enableTLS"})


class MetadataError(ValueError):
    """The ScaledObject's trigger metadata is missing a key or has a wrong value."""


class TriggerConfig(BaseModel):
    """The `metadata` of a ScaledObject's `external` trigger, as KEDA passes it (all strings)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    service: str = Field(min_length=1, max_length=256, description="Foresight service to forecast.")
    target_per_replica: float = Field(alias="targetPerReplica", gt=0,
                                      description="Requests per second one replica carries at its target.")
    startup_s: float = Field(60.0, alias="startupSeconds", ge=0,
                             description="Seconds from scale-up to a replica serving.")
    interval_s: float = Field(30.0, alias="intervalSeconds", ge=0,
                              description="KEDA polling / HPA sync interval: how long the answer must hold.")
    quantile: float = Field(0.9, gt=0, lt=1, description="Forecast quantile to provision for.")
    activation_value: float = Field(0.0, alias="activationValue", ge=0,
                                    description="Active (scale from zero) above this many requests per second.")

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> TriggerConfig:
        ours = {k: v for k, v in metadata.items() if k not in KEDA_KEYS}
        try:
            return cls.model_validate(ours)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'metadata'}: {e['msg']}"
                                 for e in exc.errors())
            raise MetadataError(
                f"trigger metadata: {problems} (keys: service, targetPerReplica; optional startupSeconds, "
                "intervalSeconds, quantile, activationValue)") from exc

    @property
    def lookahead_s(self) -> float:
        return self.startup_s + self.interval_s

    @property
    def horizon_minutes(self) -> int:
        """Forecast minutes to ask for: the lookahead plus the minute in progress."""
        return max(1, math.ceil(self.lookahead_s / 60)) + 1

    @property
    def metric_name(self) -> str:
        """A Kubernetes-safe metric name (KEDA prefixes `sN-` itself)."""
        return "foresight-" + (re.sub(r"[^a-z0-9]+", "-", self.service.lower()).strip("-") or "service")


class NoLoadError(RuntimeError):
    """Neither a fresh forecast nor observed load: KEDA should hold the current size."""


@dataclass(frozen=True)
class Load:
    """The rate HPA provisions for, where it came from, and why."""

    rate: float
    source: Literal["forecast", "observed"]
    note: str


def quantile_column(levels: Sequence[float], quantile: float) -> int:
    """Index of `quantile` among the forecast's levels, or the lowest level above it."""
    above = [(level, i) for i, level in enumerate(levels) if level >= quantile - 1e-9]
    if not above:
        raise ValueError(f"the forecast has no quantile >= {quantile} (levels {list(levels)})")
    return min(above)[1]


def forecast_peak(forecast: ForecastResponse, quantile: float, now_s: float, lookahead_s: float) -> float | None:
    """The forecast's peak at `quantile` over [now, now + lookahead]; None when it does not reach now."""
    column = quantile_column(forecast.quantiles, quantile)
    start = forecast.next_minute if forecast.next_minute is not None else now_s
    first = max(0, math.floor((now_s - start) / forecast.step_s))
    last = max(first, math.ceil((now_s + lookahead_s - start) / forecast.step_s) - 1)
    rows = forecast.forecast[first:last + 1]
    if not rows:
        return None
    return max(max(row[column], 0.0) for row in rows)


def observed_peak(minute_requests: Sequence[tuple[int, int]]) -> float | None:
    """Peak requests per second among whole minutes of (minute start, requests); None without any."""
    if not minute_requests:
        return None
    return max(requests for _, requests in minute_requests) / 60.0


def choose_load(trigger: TriggerConfig, forecast: ForecastResponse | None, forecast_at: float | None,
                forecast_problem: str | None, observed: Sequence[tuple[int, int]] | None, now_s: float,
                max_age_s: float) -> Load:
    """The forecast while it is fresh; otherwise the observed peak, saying why; otherwise NoLoadError."""
    reason = forecast_problem or "no forecast yet"
    if forecast is not None and forecast_at is not None:
        age = now_s - forecast_at
        if age <= max_age_s:
            peak = forecast_peak(forecast, trigger.quantile, now_s, trigger.lookahead_s)
            if peak is not None:
                cached = f", {age:.0f} s old ({forecast_problem})" if forecast_problem else ""
                return Load(peak, "forecast", f"p{trigger.quantile * 100:g} forecast over the next "
                            f"{trigger.lookahead_s:g} s by {forecast.model} {forecast.model_version}{cached}")
            reason = "the forecast does not reach the present"
        else:
            reason = f"forecast is {age:.0f} s old (max {max_age_s:g} s): {reason}"
    peak = observed_peak(observed or [])
    if peak is None:
        raise NoLoadError(f"service {trigger.service!r}: stale predictions ({reason}) and no observed load "
                          "in ClickHouse `features`; holding the current size")
    return Load(peak, "observed", f"stale predictions ({reason}): observed peak {peak:.2f} req/s over "
                f"{len(observed or [])} recent minute(s) of `features`")
