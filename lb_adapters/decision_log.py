"""Publishes decisions to `fs.decisions`, keyed by service."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kafka import KafkaProducer

from lb_adapters.schemas import Decision, PredictionRecord


class DecisionLog:
    def __init__(self, bootstrap_servers: str, topic: str, security: Mapping[str, Any] | None = None) -> None:
        """`security`: KafkaSettings.kafka_python_options() for a cluster with SASL/TLS."""
        self.topic = topic
        self.producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, **(security or {}))

    def publish(self, decisions: list[Decision], predictions: Sequence[PredictionRecord] = ()) -> None:
        for d in decisions:
            self.producer.send(self.topic, key=d.service.encode(), value=d.model_dump_json().encode())
        self.producer.flush(timeout=10)

    def close(self) -> None:
        self.producer.close(timeout=5)
