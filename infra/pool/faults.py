"""Fault injection for pool backends: scenarios (YAML), a seeded generator, and the pure effect of
the faults on an instance at a moment, with the ground truth of when it counts as failed.

A scenario's clock starts when an instance is ready. Each fault ramps in linearly over `ramp_s`.
"Failed" follows the risk model's label: an error rate above 1 %, or no answer (hang, crash). A
slowdown or a loss of capacity degrades an instance without failing it: the balancer's problem,
not the drain's. A leak is the case a model can see coming: latency and a resource gauge creep up
for `lead_s` seconds, then the process crashes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

FaultKind = Literal["slowdown", "capacity_loss", "errors", "hang", "crash", "leak"]
FAILED_ERROR_RATE = 0.01  # the label's threshold: an error rate above this in a window is a failure
KINDS: tuple[FaultKind, ...] = ("slowdown", "capacity_loss", "errors", "hang", "crash", "leak")


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instance: str = Field(description="Instance name, or `#k` for the pool's k-th instance (0-based).")
    kind: FaultKind
    start_s: float = Field(ge=0, description="Seconds after the instance is ready.")
    ramp_s: float = Field(0.0, ge=0, description="Seconds over which the effect grows to full.")
    duration_s: float | None = Field(None, gt=0, description="How long it lasts once full; None = to the end.")
    factor: float = Field(3.0, ge=1, description="slowdown / leak: service time multiplied by this at full.")
    workers_lost: int = Field(1, ge=1, description="capacity_loss: workers taken away at full.")
    error_fraction: float = Field(0.5, gt=0, le=1, description="errors: share of requests answered 500 at full.")
    lead_s: float = Field(60.0, gt=0, description="leak: seconds of creeping precursors before the crash.")

    @model_validator(mode="after")
    def _leak_ramps_over_its_lead(self) -> Fault:
        if self.kind == "leak" and self.ramp_s == 0:
            self.ramp_s = self.lead_s
        return self

    def level(self, t: float) -> float:
        """How much of the fault is in effect at scenario time `t` (0 to 1)."""
        if t < self.start_s:
            return 0.0
        if self.duration_s is not None and t >= self.start_s + self.ramp_s + self.duration_s:
            return 0.0
        return 1.0 if self.ramp_s == 0 else min(1.0, (t - self.start_s) / self.ramp_s)

    def failure_s(self) -> float | None:
        """Scenario time at which the instance counts as failed (the label), or None if it never does."""
        if self.kind in ("hang", "crash"):
            return self.start_s
        if self.kind == "leak":
            return self.start_s + self.lead_s
        if self.kind == "errors":
            # The error share ramps linearly: it passes the label's threshold this far into the ramp.
            return self.start_s + self.ramp_s * min(1.0, FAILED_ERROR_RATE / self.error_fraction)
        return None


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    seed: int | None = Field(None, description="The generator's seed, when it made the scenario.")
    faults: list[Fault] = Field(default_factory=list)

    def for_instance(self, instance: str, index: int) -> list[Fault]:
        return [f for f in self.faults if f.instance in (instance, f"#{index}")]


@dataclass(frozen=True)
class Effect:
    """What an instance does at one moment: the backend applies it to each request."""

    service_factor: float = 1.0
    workers_lost: int = 0
    error_fraction: float = 0.0
    hang: bool = False
    crash: bool = False
    resource: float = 0.0  # the leak's gauge, 0 (healthy) to 1 (about to crash)


def effect_at(faults: Sequence[Fault], t: float) -> Effect:
    """The combined effect of `faults` at scenario time `t`: slowdowns multiply, losses add, the worst
    error share wins."""
    factor, lost, errors, hang, crash, resource = 1.0, 0, 0.0, False, False, 0.0
    for fault in faults:
        level = fault.level(t)
        if fault.kind == "crash":
            crash |= t >= fault.start_s
        elif fault.kind == "leak":
            crash |= t >= fault.start_s + fault.lead_s
            factor *= 1 + (fault.factor - 1) * level
            resource = max(resource, level)
        elif level == 0:
            continue
        elif fault.kind == "slowdown":
            factor *= 1 + (fault.factor - 1) * level
        elif fault.kind == "capacity_loss":
            lost += round(fault.workers_lost * level)
        elif fault.kind == "errors":
            errors = max(errors, fault.error_fraction * level)
        elif fault.kind == "hang":
            hang = True
    return Effect(factor, lost, errors, hang, crash, resource)


def generate(seed: int, instances: int, duration_s: float, faults: int = 1,
             kinds: Sequence[FaultKind] = KINDS) -> Scenario:
    """A reproducible scenario: `faults` faults on distinct instances, starting in the middle half of
    `duration_s`, with kind and strength drawn from `seed`. Never every instance: someone must serve."""
    if instances < 2:
        raise ValueError("a fault scenario needs at least 2 instances (one must stay healthy)")
    rng = random.Random(seed)
    targets = rng.sample(range(instances), min(faults, instances - 1))
    out = []
    for index in targets:
        kind = rng.choice(list(kinds))
        out.append(Fault(
            instance=f"#{index}", kind=kind, start_s=round(rng.uniform(0.25, 0.5) * duration_s, 1),
            ramp_s=round(rng.uniform(10, 60), 1) if kind in ("slowdown", "errors", "capacity_loss") else 0.0,
            factor=round(rng.uniform(2, 6), 2), workers_lost=rng.randint(1, 3),
            error_fraction=round(rng.uniform(0.05, 0.6), 3), lead_s=round(rng.uniform(30, 120), 1),
        ))
    return Scenario(name=f"generated-{seed}", seed=seed, faults=out)


def load_scenario(path: Path) -> Scenario:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"scenario {path}: not YAML: {exc}") from exc
    return Scenario.model_validate(data)


def dump_scenario(scenario: Scenario) -> str:
    return yaml.safe_dump(scenario.model_dump(exclude_none=True), sort_keys=False)
