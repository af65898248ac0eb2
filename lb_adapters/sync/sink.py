"""Decisions leave the sync on their own thread, so a slow or absent Kafka never holds a
membership change back; a bounded queue, and what overflows is counted, not silently lost."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from prometheus_client import Counter

from lb_adapters.schemas import Decision, DecisionSink

log = logging.getLogger(__name__)
DROPPED = Counter("foresight_sync_decisions_dropped", "Decisions not recorded (queue full or sink failing).")
RECORDED = Counter("foresight_sync_decisions_recorded", "Decisions handed to the decision sink.")


class QueuedSink:
    def __init__(self, make_sink: Callable[[], DecisionSink], max_queue: int = 10_000, retry_s: float = 2.0) -> None:
        self._make = make_sink
        self._queue: queue.Queue[list[Decision]] = queue.Queue(max_queue)
        self._retry_s = retry_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-sink", daemon=True)
        self._thread.start()

    def publish(self, decisions: list[Decision]) -> None:
        if not decisions:
            return
        try:
            self._queue.put_nowait(decisions)
        except queue.Full:
            DROPPED.inc(len(decisions))
            log.error("decision queue full: %d decision(s) not recorded", len(decisions))

    def _run(self) -> None:
        sink: DecisionSink | None = None
        while not self._stop.is_set() or not self._queue.empty():
            try:
                batch = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            for _attempt in range(3):
                try:
                    sink = sink or self._make()
                    sink.publish(batch)
                    RECORDED.inc(len(batch))
                    break
                except Exception as exc:  # Kafka away: retry a little, then count the loss
                    log.warning("decision sink failed (%s); retrying", exc)
                    sink = None
                    if self._stop.wait(self._retry_s):
                        break
            else:
                DROPPED.inc(len(batch))

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
