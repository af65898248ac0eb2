"""The closed-loop demo's autoscaler on the replayed trace's own clock and units.

The demo replays NASA 1995 at `speedup` trace seconds per wall second, each request `scale` times.
The forecaster was trained on the trace's minutes, its calendar and its levels (it reads yesterday's
same minutes and the time of day), so the autoscaler that asks it is run in trace time: its clock is
the trace's (1995), its interval, the service's startup and every duration of both replica policies are
trace seconds, and its rates are the trace's req/s. Nothing else is changed: the windows are the
stream worker's, read from ClickHouse `features`, and only relabelled on the way in; decisions and
predictions are relabelled back to wall time and wall req/s on the way out, so the record, the
dashboard and the summary stay on the wall clock.

A policy on this clock is the policy an operator would run on the real service (HPA's 300 s
stabilization is 300 trace seconds), which is what the comparison with the shadow HPA is about.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from infra.core.features_table import ServiceWindow
from lb_adapters.autoscaler import RateSource
from lb_adapters.schemas import Decision, DecisionSink, PredictionRecord

MINUTE_S = 60


@dataclass(frozen=True)
class TraceTime:
    """Wall <-> trace time and units: wall second `wall0` sends trace second `trace0` (epoch s, 1995)."""

    wall0: float
    trace0: float
    speedup: float
    scale: float

    def trace(self, wall_s: float) -> float:
        return self.trace0 + (wall_s - self.wall0) * self.speedup

    def wall(self, trace_s: float) -> float:
        return self.wall0 + (trace_s - self.trace0) / self.speedup

    @property
    def rate_factor(self) -> float:
        """Wall req/s per trace req/s: each trace second is sent in 1/speedup s, `scale` times."""
        return self.speedup * self.scale

    def now(self) -> float:
        return self.trace(time.time())


def trace_windows(windows: Sequence[ServiceWindow], tt: TraceTime, history_s: float) -> list[ServiceWindow]:
    """Wall windows as trace windows (trace requests, trace req/s). Before the replay (`tt.wall0`) only the
    written history counts (windows `history_s` wall seconds long); a window of an earlier run that
    overlaps it is not this trace's past."""
    out = []
    for w in windows:
        if w.start_s < tt.wall0 and not math.isclose(w.end_s - w.start_s, history_s):
            continue
        start, end = tt.trace(w.start_s), tt.trace(w.end_s)
        requests = w.requests / tt.scale
        out.append(ServiceWindow(math.floor(start), math.floor(end), round(requests),
                                 requests / (end - start) if end > start else 0.0))
    return out


def spread_minutes(windows: Sequence[ServiceWindow], start_s: int, end_s: int,
                   step_s: int = MINUTE_S) -> list[tuple[int, int]]:
    """Requests per `step_s` step of [start_s, end_s), each window's requests spread evenly over its
    length (a 10 s wall window is 10 trace minutes of requests); steps no window covers are left out
    (missing, not zero)."""
    per_step: dict[int, float] = {}
    for w in windows:
        length = w.end_s - w.start_s
        if length <= 0:
            continue
        first = max(start_s, (w.start_s // step_s) * step_s)
        for step in range(first, min(end_s, w.end_s), step_s):
            overlap = min(w.end_s, step + step_s) - max(w.start_s, step)
            if overlap > 0:
                per_step[step] = per_step.get(step, 0.0) + w.requests * overlap / length
    return [(k, round(v)) for k, v in sorted(per_step.items())]


class TraceTimeRates:
    """A RateSource in trace time over one in wall time."""

    def __init__(self, wall: RateSource, tt: TraceTime, history_s: float) -> None:
        self.wall_rates, self.tt, self.history_s = wall, tt, history_s

    def windows(self, service: str, since_s: int) -> list[ServiceWindow]:
        return trace_windows(self.wall_rates.windows(service, math.floor(self.tt.wall(since_s))), self.tt,
                             self.history_s)

    def minutes(self, service: str, start_s: int, end_s: int, step_s: int = MINUTE_S) -> list[tuple[int, int]]:
        return spread_minutes(self.windows(service, start_s), start_s, end_s, step_s)

    def newest(self, services: list[str], since_s: int) -> dict[str, int]:
        ends = self.wall_rates.newest(services, math.floor(self.tt.wall(since_s)))
        return {s: math.floor(self.tt.trace(e)) for s, e in ends.items()}


_REF_TS = re.compile(r"#(\d+)$")


class WallTimeSink:
    """Relabels an autoscaler's decisions and predictions from trace time and units back to the wall's
    before they are recorded: timestamps, horizons, forecast rates (the counts are unit-free)."""

    def __init__(self, sink: DecisionSink, tt: TraceTime) -> None:
        self.sink, self.tt = sink, tt

    def _ms(self, trace_ms: int) -> int:
        return round(self.tt.wall(trace_ms / 1000) * 1000)

    def publish(self, decisions: list[Decision], predictions: Sequence[PredictionRecord] = ()) -> None:
        relabelled = [d.model_copy(update={
            "ts": self._ms(d.ts),
            "prediction_ref": _REF_TS.sub(lambda m: f"#{self._ms(int(m.group(1)))}", d.prediction_ref)})
            for d in decisions]
        records = [p.model_copy(update={
            "ts": self._ms(p.ts), "horizon_s": round(p.horizon_s / self.tt.speedup),
            "value": p.value * self.tt.rate_factor if p.kind == "forecast" else p.value}) for p in predictions]
        self.sink.publish(relabelled, records)
