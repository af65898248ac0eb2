"""Prometheus metrics of a stream worker, in a registry of its own (one per app object)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class StreamMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ready = Gauge("foresight_stream_ready", "1 once the worker started (its agents run); it may hold no "
                           "partition yet: see foresight_stream_assigned_partitions.", registry=r)
        self.assigned = Gauge("foresight_stream_assigned_partitions",
                              "Input partitions (access and metrics topics) this worker consumes: set once a "
                              "rebalance completed (tables recovered), 0 while one is under way.", registry=r)
        self.startup_seconds = Gauge("foresight_stream_startup_seconds",
                                     "Seconds from process start to ready.", registry=r)
        self.first_event_seconds = Gauge("foresight_stream_first_event_seconds",
                                         "Seconds from process start to the first processed event.", registry=r)
        self.records = Counter("foresight_stream_records", "Kafka records consumed.", registry=r)
        self.events = Counter("foresight_stream_events", "Access events aggregated.", registry=r)
        self.duplicates = Counter("foresight_stream_duplicates",
                                  "Access events not counted: their event id was already counted in their window "
                                  "(delivered twice by ingest: spool replay, HTTP retry, a file sent again).",
                                  registry=r)
        self.over_cap = Counter("foresight_stream_over_cap_events",
                                "Events (access and metric) of instances past streams.max_instances_per_service, "
                                "sent to the dead-letter topic as too_many_instances.", registry=r)
        self.tracked_instances = Gauge("foresight_stream_tracked_instances",
                                       "Instances whose state this worker holds.", registry=r)
        self.late = Counter("foresight_stream_late_events",
                            "Events for already closed windows, by kind (access, metric; service: an instance "
                            "window after its service window retired).", ["kind"], registry=r)
        self.rejected = Counter("foresight_stream_rejected", "Records sent to the dead-letter topic.",
                                ["reason"], registry=r)
        self.windows = Counter("foresight_stream_windows_emitted", "Closed windows written.", registry=r)
        self.open_windows = Gauge("foresight_stream_open_windows", "Windows still open.", registry=r)
        self.sink_errors = Counter("foresight_stream_sink_errors", "Failed ClickHouse writes (retried).",
                                   registry=r)
        self.offset_gaps = Counter("foresight_stream_offset_gaps",
                                   "Input offsets skipped by the consumer (records never delivered).", registry=r)
        self.log_restarts = Counter("foresight_stream_log_restarts",
                                    "Input partitions found restarted under the worker (the broker lost its log "
                                    "and the group's offsets, e.g. an in-memory Tansu restarted): positions "
                                    "rebased to the new log.", registry=r)
        self.stalls = Counter("foresight_stream_stalls",
                              "Times the worker stood still for over half the session timeout (paused, starved): "
                              "the group may have expelled it, so it closed no window by the wall clock until a "
                              "session timeout later or a rebalance.", registry=r)
        self.not_owned = Counter("foresight_stream_not_owned_records",
                                 "Records (input and service partials) left to their partition's owner: this worker "
                                 "no longer held the partition when it came to them (expelled by the group).",
                                 registry=r)
        self.unsent = Gauge("foresight_stream_unsent_windows", "Closed windows waiting for ClickHouse.",
                            registry=r)
