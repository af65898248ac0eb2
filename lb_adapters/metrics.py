"""Prometheus metrics of the adapter loop."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ROUNDS = Counter("foresight_adapter_rounds", "Decision rounds run.", ["outcome"])
DECISIONS = Counter("foresight_adapter_decisions", "Decisions made, by actuator and outcome.", ["actuator", "outcome"])
WEIGHT = Gauge("foresight_adapter_weight", "Weight HAProxy reports after the last round.", ["backend", "server"])
LEADER = Gauge("foresight_adapter_leader", "1 while this copy holds the service's leadership (acts), 0 on standby.",
               ["service"])
