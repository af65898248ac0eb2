"""A DecisionSink that keeps what it is given, for tests of the controllers that publish to one."""

from __future__ import annotations

from collections.abc import Sequence

from lb_adapters.schemas import Decision, PredictionRecord


class RecordingSink:
    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.predictions: list[PredictionRecord] = []

    def publish(self, decisions: list[Decision], predictions: Sequence[PredictionRecord] = ()) -> None:
        self.decisions += decisions
        self.predictions += predictions
