"""The `fs.decisions` contract: what an adapter decided, why, and what came of it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Decision(BaseModel):
    v: Literal[1] = 1
    ts: int = Field(description="Epoch ms UTC when decided.")
    service: str
    actuator: str = Field(description="haproxy | nginx | etcd | scaler")
    target: str = Field(description="What was acted on, e.g. `demo/s1`.")
    action: str = Field(description="e.g. `set_weight`.")
    before: float | None
    after: float
    reason: str
    prediction_ref: str = Field(description="`model@version` whose answer drove the decision.")
    dry_run: bool = False
    outcome: str = Field("pending", description="applied | skipped | failed: <why> | dry_run")
