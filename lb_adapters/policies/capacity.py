"""Per-instance capacity, estimated from what each instance has served, and the overload guard of drains.

Pure arithmetic: the controllers keep the state and do the I/O.

Estimate: capacity = served rate / utilisation, each an exponential moving average over rounds of the
instance's windows (requests / window length; the backend's `busy` share of workers). This is
throughput at observed utilisation, in requests/s, model-free (it works while the baseline answers)
and per instance (unequal instances are the case the guard exists for). Why not the latency model's
capacity: that one is relative (the load at which its predicted p99 passes twice the service's
typical p99, capped at 10 equal shares), it exists only while a learned version answers, and serving
returns it only inside the reasons text.

Utilisation is unbiased where it can be: the controllers pass each window's mean of the busy gauge's
samples (`busy_mean`; the bench passes the gauge read now, a sample of it). Only a window whose mean is
0 (a row written before that column, or no busy sample) falls back to its `busy`, the peak, which reads
high and so capacity low (a 4-worker backend ~55% busy on average shows a peak near 1 over a few
samples, and its capacity then reads as the rate it serves). The remaining bias is towards refusing a
drain: under `min_utilisation` the utilisation is taken as `min_utilisation`, so an idle instance counts
for a lower bound (served / min_utilisation), not for a noisy ratio. An instance whose windows never
showed a busy share (no such gauge) has no estimate: the uniform fallback
(`health.capacity_rps`) stands in, else the guard says it cannot judge.

Guard: draining `x` is allowed when the ready instances left carry the load with a margin,
sum(capacity) >= load x margin. When not, `x` keeps the share of the load the others cannot take
(load - sum(capacity) / margin), at a low weight rather than none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

ALPHA = 0.1  # share of a round's window in the moving averages: ~10 rounds of memory (capacity varies slowly;
# one 2 s window's rate and busy share are noisy, and the guard must not let a drain through on one lucky round)


@dataclass(frozen=True)
class Served:
    """Moving averages of one instance's served rate (requests/s) and utilisation (0..1)."""

    rps: float
    utilisation: float


def update_served(previous: Mapping[str, Served], observed: Mapping[str, tuple[float, float | None]],
                  alpha: float) -> dict[str, Served]:
    """`observed`: instance -> (served requests/s, busy share) of this round. A busy share of None (no
    gauge) leaves the utilisation as it was; an instance not observed keeps its averages (capacity does
    not vanish when traffic does)."""
    out = dict(previous)
    for name, (rps, busy) in observed.items():
        before = previous.get(name)
        if before is None:
            out[name] = Served(rps, busy or 0.0)
            continue
        if busy is None:
            util = before.utilisation
        else:
            util = busy if before.utilisation <= 0 else alpha * busy + (1 - alpha) * before.utilisation
        out[name] = Served(alpha * rps + (1 - alpha) * before.rps, util)
    return out


def guard_load(window_rps: float | None, served: Mapping[str, Served]) -> float | None:
    """The load the guard weighs: the larger of this window's rate and the averaged one (the sum of the
    instances' averaged served rates). Capacity is averaged over rounds, so the load must be too, or one
    quiet window lets a drain through; a rise still counts at once."""
    if window_rps is None:
        return None
    return max(window_rps, sum(s.rps for s in served.values()))


def capacities(served: Mapping[str, Served], min_utilisation: float) -> dict[str, float | None]:
    """Requests/s each instance can serve; None: never seen busy (no estimate)."""
    return {name: None if s.utilisation <= 0 else s.rps / max(s.utilisation, min_utilisation)
            for name, s in served.items()}


@dataclass(frozen=True)
class CapacityVerdict:
    allowed: bool
    reason: str
    hold_share: float | None = None  # refused: the share of the load the instance keeps (0..1)


def check_capacity(candidate: str, left: Iterable[str], capacity: Mapping[str, float | None],
                   load_rps: float | None, margin: float, fallback_rps: float | None) -> CapacityVerdict:
    """May `candidate` be taken out of service, with `left` the instances that would still serve?"""
    left = sorted(left)
    if load_rps is None:
        return CapacityVerdict(True, "load unknown: overload not checked")
    if not left:
        return CapacityVerdict(False, "no instance would be left serving", 1.0)
    caps: dict[str, float] = {}
    unknown = []
    for name in left:
        c = capacity.get(name)
        c = fallback_rps if c is None else c
        if c is None:
            unknown.append(name)
        else:
            caps[name] = c
    if unknown:
        return CapacityVerdict(True, f"capacity of {', '.join(unknown)} unknown: overload not checked")
    total = sum(caps.values())
    each = ", ".join(f"{n} {c:.0f}" for n, c in caps.items())
    if total >= load_rps * margin:
        return CapacityVerdict(True, f"the {len(left)} left carry {total:.0f} req/s ({each}) >= "
                                     f"{load_rps:.0f} req/s x {margin:g}")
    share = min(1.0, max(0.0, (load_rps - total / margin) / load_rps)) if load_rps > 0 else 0.0
    return CapacityVerdict(False, f"the {len(left)} left would be overloaded: they carry {total:.0f} req/s ({each}) "
                                  f"< {load_rps:.0f} req/s "
                                  f"x {margin:g}: {candidate} keeps ~{share:.0%} of the load at a low weight "
                                  f"instead (the rest cannot take it; scale up first)", share)


def hold_weight(share: float, others: Mapping[str, int], min_weight: int, max_weight: int) -> int:
    """The weight that gives an instance about `share` of the traffic beside `others`' weights
    (weights split traffic in proportion), at least `min_weight`."""
    rest = sum(w for w in others.values() if w > 0)
    if share >= 1.0 or rest <= 0:
        return max_weight
    return max(min_weight, min(max_weight, round(share / (1.0 - share) * rest)))


class Window(Protocol):
    """What the estimate reads of a feature window (serving.schemas.InstanceFeatures has it)."""

    @property
    def instance(self) -> str: ...

    @property
    def requests(self) -> int: ...

    @property
    def busy(self) -> float: ...


def observe(windows: Sequence[Window], window_s: float,
            utilisation: Mapping[str, float] | None = None) -> dict[str, tuple[float, float | None]]:
    """This round's (served requests/s, busy share) per instance, as `update_served` reads them. The busy
    share is `utilisation`'s (unbiased: the window's mean busy share, or the gauge read now) where given,
    else the window's (its peak, so it reads high; a peak of 0 while serving is taken for no gauge)."""
    now = utilisation or {}
    return {w.instance: (w.requests / window_s, now.get(w.instance, w.busy or None))
            for w in windows}
