"""Drain policy: from each instance's risk and the registry's state to drains and re-admissions.
Pure; the membership guardrails (last ready instance, `max_unavailable`, operator pins) are applied
here too, so a decision that comes out is one the controller may carry out.

- Hysteresis: drain after `drain_after` consecutive rounds at or above `drain_above` (one noisy window
  is not a trend), re-admit only after `readmit_after` consecutive rounds at or below `readmit_below`
  (< `drain_above`), so an instance near the threshold does not flap.
- Unknown is not healthy: an instance with no recent window (risk None) is neither drained nor
  counted towards its re-admission; its streak starts again.
- Only what a controller drained is re-admitted by one; an operator's state is never undone.
- One at a time: after a drain, `cooldown_rounds` pass before the next one, so the replacement
  capacity arrives and the peers' windows settle before another instance is judged against them.
- Never drain into overload: with the per-instance capacity known (estimated from what each served,
  `policies.capacity`, or the uniform `capacity_rps`), an instance is drained only if the ready ones
  left carry the service's load times `capacity_margin`. An overloaded instance looks sick to its
  peers, but draining it moves the overload onto them (the cascade outlier ejection is known for);
  that is a scaling problem, and the autoscaler's. A drain refused so says which share of the load the
  instance keeps (`hold_share`): the controller holds it at a low weight instead of draining it. A hold
  has the drain's hysteresis: it lasts (action `hold`, each round) until the instance's risk stays at or
  below `readmit_below` for `readmit_after` rounds; else a held instance, now sending fewer errors, would
  look healthier, lose its hold and take its full share again. Once the others can carry the load, the
  drain the hold put off goes ahead (the replacement the controller asked for has arrived).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from infra.core.service_registry import InstanceRecord
from infra.core.settings import HealthSettings
from lb_adapters.policies.capacity import check_capacity
from lb_adapters.policies.membership import Verdict, check_drain, may_change_state, set_by


@dataclass(frozen=True)
class DrainKnobs:
    drain_above: float = 0.8
    readmit_below: float = 0.3
    readmit_after: int = 3
    max_drained_fraction: float = 0.25
    capacity_rps: float | None = None  # requests/s of an instance with no estimate of its own; None: unknown
    cooldown_rounds: int = 0  # after a drain, no other drain of the service for this many rounds
    drain_after: int = 1  # consecutive rounds at or above drain_above before a drain (an unknown round resets)
    capacity_margin: float = 1.15  # the instances left must carry load x this (at most ~87% busy)
    min_utilisation: float = 0.25  # capacity estimates read a lower utilisation as this (policies.capacity)

    def __post_init__(self) -> None:
        if not 0 <= self.readmit_below < self.drain_above <= 1:
            raise ValueError(f"need 0 <= readmit_below ({self.readmit_below}) < drain_above ({self.drain_above}) <= 1")
        if self.readmit_after < 1 or self.drain_after < 1:
            raise ValueError("readmit_after and drain_after must be at least 1 round")
        if self.capacity_margin < 1:
            raise ValueError(f"capacity_margin ({self.capacity_margin}) below 1 would drain into overload")


def health_knobs(h: HealthSettings, round_s: float | None = None) -> DrainKnobs:
    """The knobs `health.*` sets. Its round counts are rounds of `health.interval_s`; a caller that judges
    every `round_s` seconds instead (the risk replay, one round per window) gets them rescaled to the same
    seconds. Re-admission never comes before the risk's horizon either way (`readmit_rounds`)."""
    round_s = round_s or h.interval_s
    per_round = h.interval_s / round_s
    return DrainKnobs(drain_above=h.drain_above, readmit_below=h.readmit_below,
                      readmit_after=h.readmit_rounds(round_s), max_drained_fraction=h.max_drained_fraction,
                      capacity_rps=h.capacity_rps, cooldown_rounds=round(h.cooldown_rounds * per_round),
                      drain_after=max(1, round(h.drain_after * per_round)), capacity_margin=h.capacity_margin,
                      min_utilisation=h.min_utilisation)


@dataclass(frozen=True)
class DrainState:
    """Consecutive healthy rounds of each instance a controller drained, risky rounds of each ready one."""

    healthy_streak: Mapping[str, int] = field(default_factory=dict)
    cooldown: int = 0  # rounds left before the next drain may happen
    risky_streak: Mapping[str, int] = field(default_factory=dict)
    held: Mapping[str, int] = field(default_factory=dict)  # held instead of drained -> healthy rounds in a row


@dataclass(frozen=True)
class DrainDecision:
    instance: str
    action: Literal["drain", "readmit", "refuse", "hold"]
    risk: float | None
    reason: str
    hold_share: float | None = None  # a drain refused for capacity: the share of the load the instance keeps


def decide_drains(risk: Mapping[str, float | None], records: Mapping[str, InstanceRecord], state: DrainState,
                  knobs: DrainKnobs, load_rps: float | None = None,
                  capacity: Mapping[str, float | None] | None = None) -> tuple[list[DrainDecision], DrainState]:
    """`risk`: instance -> probability of failure soon (None: no recent window); `records`: every valid
    registry record of the service; `load_rps`: the service's request rate now; `capacity`: requests/s
    each instance can serve (estimated; missing or None: `knobs.capacity_rps`). Returns the decisions
    (a `refuse` says which drain a guardrail stopped, and why) and the next state."""
    decisions: list[DrainDecision] = []
    streak: dict[str, int] = {}
    for name, record in sorted(records.items()):
        if record.state != "draining" or set_by(record) != "controller":
            continue
        r = risk.get(name)
        streak[name] = state.healthy_streak.get(name, 0) + 1 if r is not None and r <= knobs.readmit_below else 0
        if streak[name] >= knobs.readmit_after:
            decisions.append(DrainDecision(name, "readmit", r, f"risk {r:.2f} <= {knobs.readmit_below:g} for "
                                                              f"{streak[name]} rounds"))
            del streak[name]
    out_now = {n: r for n, r in records.items()}
    cooling = state.cooldown
    drained = False
    held: dict[str, int] = {}
    risky: dict[str, int] = {}
    for name, rec in records.items():
        r = risk.get(name)
        if rec.state == "ready" and r is not None and r >= knobs.drain_above:
            risky[name] = state.risky_streak.get(name, 0) + 1
    for name in sorted((n for n, rec in records.items() if rec.state == "ready"),
                       key=lambda n: -(risk.get(n) or 0.0)):
        r = risk.get(name)
        shown = "unknown" if r is None else f"{r:.2f}"
        why_drain, put_off = f"risk {shown} >= {knobs.drain_above:g}", None
        if r is None or r < knobs.drain_above or risky.get(name, 0) < knobs.drain_after:
            if name not in state.held:
                continue
            healthy = state.held[name] + 1 if r is not None and r <= knobs.readmit_below else 0
            if healthy >= knobs.readmit_after:
                continue  # recovered while held: the hold ends, the drain is off
            left = [n for n, rec in out_now.items() if rec.state == "ready" and n != name]
            fits = check_capacity(name, left, capacity or {}, load_rps, knobs.capacity_margin, knobs.capacity_rps)
            if not fits.allowed:
                held[name] = healthy
                decisions.append(DrainDecision(
                    name, "hold", r, f"held, not drained: risk {shown}, not yet <= {knobs.readmit_below:g} for "
                                     f"{knobs.readmit_after} rounds ({healthy} so far), and {fits.reason}",
                    fits.hold_share))
                continue
            # the others can carry the load now: the drain the hold put off goes ahead, through the same guardrails
            why_drain, put_off = (f"held for capacity, risk {shown} not yet <= {knobs.readmit_below:g} for "
                                  f"{knobs.readmit_after} rounds ({healthy} so far)"), healthy
        pinned = may_change_state(records[name], "draining", "controller")
        verdict = pinned if not pinned.allowed else check_drain(out_now, [name], knobs.max_drained_fraction)
        if verdict.allowed and cooling > 0:
            verdict = Verdict(False, f"another drain happened {knobs.cooldown_rounds - cooling + 1} round(s) ago "
                                     f"(cooldown of {knobs.cooldown_rounds} rounds)")
        hold = None
        if verdict.allowed and (capacity or knobs.capacity_rps is not None):
            left = [n for n, rec in out_now.items() if rec.state == "ready" and n != name]
            fits = check_capacity(name, left, capacity or {}, load_rps, knobs.capacity_margin, knobs.capacity_rps)
            verdict = Verdict(fits.allowed, f"{verdict.reason}; {fits.reason}" if fits.allowed else fits.reason)
            hold = fits.hold_share
        if not verdict.allowed:
            decisions.append(DrainDecision(name, "refuse", r, f"{why_drain}, but {verdict.reason}", hold))
            if hold is not None:
                held[name] = 0
            elif put_off is not None:
                held[name] = put_off  # refused by the budget, a cooldown or a pin: tried again next round
            continue
        rounds = f" for {risky[name]} rounds" if knobs.drain_after > 1 and name in risky else ""
        decisions.append(DrainDecision(name, "drain", r, f"{why_drain}{rounds}; {verdict.reason}"))
        out_now[name] = records[name].model_copy(update={"state": "draining"})
        risky.pop(name, None)
        drained = True
        cooling = knobs.cooldown_rounds
    return decisions, DrainState(streak, knobs.cooldown_rounds if drained else max(0, cooling - 1), risky, held)
