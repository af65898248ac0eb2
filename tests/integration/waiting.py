"""Helpers the integration tests share: polling for a condition, and a decision sink that keeps what
it is given (the loop under test publishes to it instead of Kafka)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lb_adapters.schemas import Decision, PredictionRecord


def wait_for(what: str, cond: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@dataclass
class Recorder:
    decisions: list[Decision] = field(default_factory=list)

    def publish(self, decisions: list[Decision], predictions: Sequence[PredictionRecord] = ()) -> None:
        self.decisions += decisions
