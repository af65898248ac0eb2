"""The one interface every replica scaler implements; the autoscaler knows nothing else about them."""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Replicas(NamedTuple):
    """What a scaler reports: `current` replicas started (ready or starting) and `ready` ones serving."""

    current: int
    ready: int


class Scaler(Protocol):
    """Thin I/O: reads and sets a replica count, decides nothing. Failures raise `ActuatorError`."""

    name: str  # recorded as the decision's `actuator` detail, e.g. `pool`, `ray_serve`, `kubernetes`
    target: str  # what it scales, recorded as the decision's `target`

    def current(self) -> Replicas: ...

    def scale(self, replicas: int) -> None: ...
