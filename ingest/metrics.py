"""Prometheus counters of the ingest process, on the default registry its /metrics serves.

Module-level because Prometheus metrics are process-wide: each exists once however many sources or
sinks a process runs (a second registration would fail).
"""

from __future__ import annotations

from prometheus_client import Counter

LINES_RECEIVED = Counter(
    "foresight_ingest_lines_received", "Log lines handed to a parser.", ["source"])
DATAGRAMS_RECEIVED = Counter(
    "foresight_ingest_syslog_datagrams_received", "UDP syslog datagrams received.")
EVENTS_SENT = Counter(
    "foresight_ingest_events_sent", "Access events acknowledged by Kafka.")
RECORDS_SENT = Counter(
    "foresight_ingest_records_sent", "Kafka records acknowledged (access: an event or a batch envelope).", ["topic"])
REJECTIONS = Counter(
    "foresight_ingest_rejections", "Lines that could not become events, sent to the DLQ.", ["source", "reason"])
SEND_ERRORS = Counter(
    "foresight_ingest_send_errors", "Kafka records that failed to send, after the producer's retries.", ["topic"])
EVENTS_DROPPED = Counter(
    "foresight_ingest_events_dropped",
    "Events given up, by reason (UDP sources under back-pressure past their hold limit).", ["reason"])
