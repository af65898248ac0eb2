"""The `fs.decisions` contract: what an adapter decided, why, and what came of it; and the
predictions it acted on (ClickHouse `predictions`), which `prediction_ref` points to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from pydantic import BaseModel, Field


class Decision(BaseModel):
    v: Literal[1] = 1
    ts: int = Field(description="Epoch ms UTC when decided.")
    service: str
    actuator: str = Field(description="haproxy | nginx | etcd | scaler")
    target: str = Field(description="What was acted on, e.g. `demo/s1`.")
    action: str = Field(description="e.g. `set_weight`.")
    before: float | None
    after: float | None = Field(description="Numeric value after; None for a change without one (a membership "
                                "state change: before/after states are in `reason`).")
    reason: str
    prediction_ref: str = Field(description="`model@version` whose answer drove the decision.")
    dry_run: bool = False
    outcome: str = Field("pending", description="applied | skipped | failed: <why> | dry_run")


class PredictionRecord(BaseModel):
    """One predicted value a controller acted on: a row of ClickHouse `predictions`."""

    ts: int = Field(description="Epoch ms UTC when the prediction was made (or fetched).")
    kind: str = Field(description="forecast | risk | latency | weights")
    service: str
    instance: str = Field("*", description="`*` for a service-wide prediction.")
    model: str = Field(description="Model name, or `baseline`.")
    model_version: str
    horizon_s: int = Field(0, ge=0, description="How far ahead of `ts` the value is for.")
    quantile: float = Field(0.5, ge=0, le=1, description="Quantile level; 0.5 for a point value or a score.")
    value: float

    def ref(self) -> str:
        """What a decision's `prediction_ref` holds to point at this prediction's rows."""
        return f"{self.kind}:{self.service}/{self.instance}@{self.model}:{self.model_version}#{self.ts}"


class DecisionSink(Protocol):
    """Where controllers record decisions (fs.decisions and ClickHouse `decisions`) and the
    predictions behind them (ClickHouse `predictions`)."""

    def publish(self, decisions: list[Decision], predictions: Sequence[PredictionRecord] = ()) -> None: ...
