"""A pool kept on paper: when each instance of a policy's own count is ready.

A policy that does not act (the shadow HPA, a what-if, a replayed schedule) still needs its own
replica count and ready instances, or it judges its next step by another policy's pool. The
instances are the times each becomes ready; the rules are the pool's: an added instance serves a
startup after it was asked for, and a removal takes the one that would be ready last. `replay_schedule`
plays a schedule of counts on such a pool against recorded windows: what it would have cost, and how long
it would have been short."""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # settings imports this package, and features_table imports settings
    from infra.core.features_table import ServiceWindow


def resize(ready_at: list[float], want: int, now: float, startup_s: float) -> list[float]:
    """`ready_at` once `want` instances are asked for at `now`."""
    if want > len(ready_at):
        return [*ready_at, *[now + startup_s] * (want - len(ready_at))]
    return sorted(ready_at)[:want]


def ready(ready_at: list[float], now: float) -> int:
    """Instances ready at `now`."""
    return sum(1 for r in ready_at if r <= now)


def replay_schedule(decided: list[tuple[float, int]], initial: int, startup_s: float, windows: list[ServiceWindow],
                    capacity_rps: float, start: float, end: float) -> tuple[float, float]:
    """(replica-seconds, under-provisioned seconds) of a policy whose counts `decided` (time, desired) had
    been applied from `start` to `end`, second by second: an added replica counts from its decision and
    serves `startup_s` later; a removal takes a starting replica first. A second is under-provisioned when
    its window's rate is above the ready replicas' capacity. The predictive autoscaler's and the shadow
    HPA's decisions go through this same function, so their figures compare like for like."""
    pending = sorted(decided)
    seconds: list[float] = []
    t = start
    while t < end:
        seconds.append(t)
        t += 1.0
    rates = _rate_each_second(seconds, windows)
    ready_at: list[float] = [-math.inf] * initial
    replica_s = under_s = 0.0
    k = 0
    for t, rate in zip(seconds, rates, strict=True):
        while k < len(pending) and pending[k][0] <= t:
            ready_at = resize(ready_at, pending[k][1], t, startup_s)
            k += 1
        replica_s += len(ready_at)
        if rate is not None and rate > capacity_rps * ready(ready_at, t):
            under_s += 1
    return replica_s, under_s


def _rate_each_second(seconds: list[float], windows: list[ServiceWindow]) -> list[float | None]:
    """The rate of the first window (in `windows`' order) that holds each of `seconds` (ascending), None where
    none does. Each window fills the seconds it holds, the last window first so that earlier ones overwrite:
    O(seconds + windows x log seconds) where asking every window for every second was their product."""
    rates: list[float | None] = [None] * len(seconds)
    for w in reversed(windows):
        first, stop = bisect.bisect_left(seconds, w.start_s), bisect.bisect_left(seconds, w.end_s)
        rates[first:stop] = [w.rate] * max(0, stop - first)
    return rates
