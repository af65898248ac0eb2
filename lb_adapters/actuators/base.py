"""What the controllers need of an actuator; each balancer, registry or scaler implements it."""

from __future__ import annotations

from typing import Protocol


class ActuatorError(RuntimeError):
    """An actuator could not do what it was asked; the decision is recorded as failed, the loop goes on."""


class WeightActuator(Protocol):
    """A balancer whose servers carry weights (HAProxy's runtime API, nginx's upstream)."""

    name: str  # recorded as the decision's `actuator`

    def weights(self, backend: str) -> dict[str, int]: ...

    def set_weight(self, backend: str, server: str, weight: int) -> None: ...
