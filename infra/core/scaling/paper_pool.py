"""A pool kept on paper: when each instance of a policy's own count is ready.

A policy that does not act (the shadow HPA, a what-if, a replayed schedule) still needs its own
replica count and ready instances, or it judges its next step by another policy's pool. The
instances are the times each becomes ready; the rules are the pool's: an added instance serves a
startup after it was asked for, and a removal takes the one that would be ready last."""

from __future__ import annotations


def resize(ready_at: list[float], want: int, now: float, startup_s: float) -> list[float]:
    """`ready_at` once `want` instances are asked for at `now`."""
    if want > len(ready_at):
        return [*ready_at, *[now + startup_s] * (want - len(ready_at))]
    return sorted(ready_at)[:want]


def ready(ready_at: list[float], now: float) -> int:
    """Instances ready at `now`."""
    return sum(1 for r in ready_at if r <= now)
