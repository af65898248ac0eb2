"""The Faust app: `fs.access` + `fs.metrics` -> feature windows on `fs.features` and in ClickHouse.

Two stages, each with its state in a Faust table (changelog topic, recovered on assignment):

1. per instance, on the input partitions: a `stream.take_events` batch is aggregated locally into
   `InstanceState`s, then each touched state is written to the table once, followed by a position
   mark (last input offset of the batch) on the same changelog partition. A state records the
   highest input offset it holds, so a replayed record is skipped: never counted twice. The batch
   is acked only once its changelog writes are durable. The group's committed offsets can still be
   ahead of the recovered table (a revoked worker still writing while the next owner recovers was
   seen on Tansu): a worker compares them with the mark and reads from the mark again, and a record
   arriving past the mark does the same, so nothing is skipped either: exactly once per window.
   Within each open window, an event whose id was already counted there is a duplicate from
   ingest (spool replay, HTTP retry, a file sent twice): not counted, but tallied in
   `foresight_stream_duplicates_total` (the ids' keys live in the state, see `streams.state`).
   A worker holds at most `max_instances_per_service` instances per service: events of any more
   are counted and dead-lettered as `too_many_instances`, so input cannot grow its state at will.
2. per service: each closed instance window (with its DDSketch) goes to an internal topic keyed
   by service, where `ServiceWindow`s merge them by instance name into the `*` window. Instances
   of one service may sit on partitions of different workers; this is where they meet. Instance
   windows may be shorter (`streams.instance_window_s`, a divisor of `window_s`, e.g. 2 s for the
   balancing and risk models): a `*` window then merges each instance's windows within it, under
   the same rules (the instance windows are the durable, exactly-once unit; the merge is replay-safe).

Closed windows go to `fs.features` at once and stay `pending` in their table state until
ClickHouse acknowledged them (a writer task retries while it is down), so nothing is lost if it
is down or the worker dies: the recovered state writes them again, and ReplacingMergeTree keeps
one row. Consumer-group timeouts come from the settings (Tansu holds a join for half the session).

A broker that lost its log (the local Tansu keeps everything in memory: a restart empties every
topic and forgets the group's committed offsets) restarts each partition's offsets at 0, below the
offsets the states hold, so every new record would pass for a replay and be skipped. The worker
notes the highest offset the group ever committed per input partition; a group's committed offset
never moves back on its own, so when it does (or vanished), the log is a new one: the partition's
positions are forgotten (`_rebase_if_restarted`), its states (open windows, their event ids, pending windows) are
kept and written again to the new changelog, and the new log is counted from its start. The worker
also re-creates its own topics the broker lost, and retries refused changelog writes and sends. It
asks the broker for its topics only after a sign that they may be gone (a rebalance, a restarted log,
a refused changelog write or send; `_doubt_topics`), and otherwise once every `TOPICS_BACKSTOP_S`:
listing every topic through a new admin client every few seconds for the worker's life is waste.

A worker the group expelled (it missed heartbeats) goes on folding and writing until it learns it,
as a zombie. Its changelog writes are fenced by epoch (`streams.fencing`): a later recovery keeps the
new owner's states over them. Its commits are refused, so the committed offsets noted above are
only those the broker accepted (or read from it at an assignment). After standing still it closes no
window by the wall clock until the group had time to tell it (`_note_stall`). And since Tansu lists a
partition's end as its last record batch's first record + 1, each recovery is completed with the rest
of that batch (`_read_changelog_tails`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.types import TP

from infra.core import retry
from infra.core.contracts import SERVICE_WIDE
from infra.core.settings import KafkaSettings, StreamSettings
from ingest.schemas import Rejection, decode_access_record, truncate_raw
from streams.access_columns import AccessColumns, access_columns
from streams.compat import faust as faust_internals
from streams.event_ids import id_key
from streams.fencing import FencedTable, changelog_event, highest_epoch, payload, stamp
from streams.metrics import StreamMetrics
from streams.schemas import FeatureWindow, WindowPartial
from streams.sinks.clickhouse import FeatureSink
from streams.state import InstanceState, PartitionClock, ServiceWindow, pending_windows, window_id
from streams.windows import SATURATION_METRICS

log = logging.getLogger("foresight.streams")
MARK_PREFIX = b"__position__/"
MAX_SEEKS = 5  # times a gap in the input is read again before it is given up
TOPICS_EVERY_S = 2.0  # how soon after a sign of trouble the worker checks that the broker still has its topics
TOPICS_BACKSTOP_S = 60.0  # ... and how often it checks them without one
FORGET_DONE_S = 86_400.0  # a retired service window is remembered (to ignore stragglers) for a day


@dataclass
class _Fold:
    """What folding one batch did: to persist (touched states, position marks), to dead-letter, to count."""

    rejects: list[tuple[bytes, str, str]] = field(default_factory=list)
    touched: set[InstanceState] = field(default_factory=set)
    marks: dict[int, dict[str, int]] = field(default_factory=dict)
    counted: int = 0
    late_access: int = 0
    late_metric: int = 0
    duplicates: int = 0
    over_cap: int = 0

    def refuse(self, raw: bytes, service: str, events: dict[str, int], cap: int) -> None:
        """Set a record's events of instances past the cap aside, counted, with the reason."""
        self.over_cap += sum(events.values())
        shown = ", ".join(sorted(events)[:5]) + (", ..." if len(events) > 5 else "")
        self.rejects.append((raw, "too_many_instances",
                             f"service {service!r} already has {cap} instances here (streams.max_instances_per_"
                             f"service); {sum(events.values())} events of {shown} set aside"))


def _mark_key(partition: int) -> bytes:
    return MARK_PREFIX + str(partition).encode()


def faust_broker_url(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap_servers.split(","))


def broker_credentials(kafka: KafkaSettings) -> Any:
    """Faust's credentials for the cluster's SASL and/or TLS (Faust hands them to aiokafka); None for plaintext."""
    from faust.auth import SASLCredentials, SSLCredentials

    context = kafka.ssl_context()
    if kafka.security_protocol.startswith("SASL_"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        return SASLCredentials(username=kafka.sasl_username, password=password, mechanism=kafka.sasl_mechanism,
                               ssl_context=context)
    if context is not None:
        return SSLCredentials(context)
    return None


class FeatureStream:
    def __init__(self, cfg: StreamSettings, kafka: KafkaSettings, sink: FeatureSink, data_dir: Path,
                 metrics: StreamMetrics | None = None, clock: Callable[[], float] = time.time,
                 started_at: float | None = None) -> None:
        self.cfg = cfg
        self.sink = sink
        self.clock = clock
        self.started_at = started_at or time.monotonic()
        self.metrics = metrics or StreamMetrics()
        self.window_ms = cfg.window_s * 1000  # service-wide windows
        self.instance_window_ms = cfg.instance_window * 1000  # per-instance windows: window_ms or a divisor of it
        self.lateness_ms = int(cfg.allowed_lateness_s * 1000)
        self.topic_access, self.topic_metrics = kafka.topic_access, kafka.topic_metrics
        self.last_event_wall = 0.0
        self._seen_first_event = False
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # In-memory views of the tables for the partitions this worker owns, loaded on first use.
        self._instances: dict[int, dict[bytes, InstanceState]] = {}
        self._tracked: Tally[str] = Tally()  # service -> instances in `_instances`, held to the cap
        self._clocks: dict[int, PartitionClock] = {}
        self._services: dict[int, dict[bytes, ServiceWindow]] = {}
        self._next_offset: dict[TP, int] = {}
        self._writer: asyncio.Future[None] | None = None
        self._settled = False  # tables recovered for the current assignment
        self._seeks: dict[tuple[TP, int], int] = {}
        self._checked: set[TP] = set()  # partitions compared with the group's committed offsets
        self._marks: dict[int, dict[str, int]] = {}
        # Highest offset the group committed per input partition, kept across rebalances: one lower (or
        # none) after a rebalance means the broker lost the log (`_log_restarted`).
        self._committed_seen: dict[TP, int] = {}
        self._log_checked: set[TP] = set()  # input partitions checked for a restarted log, this assignment
        # Windows on fs.features (and partials on their topic) in this process: only those go to
        # ClickHouse, so an acknowledged window was always published first. Recovered pending
        # windows are published again (`_republish`); their consumers take a repeat.
        self._published: set[tuple[str, str, int, int]] = set()
        self._republish: list[tuple[FeatureWindow, WindowPartial | None]] = []
        # Why the broker may have lost the worker's topics (None: no sign since the last good check).
        self._topics_doubt: str | None = None
        self._topics_checked_at = time.monotonic()  # Faust declared them at start
        self._epoch = 0  # stamps this worker's changelog writes (`streams.fencing`); raised at each assignment
        self._last_tick: float | None = None  # monotonic time of the last tick (`_note_stall`)
        self._closes_held_until = 0.0  # after a stall (`_note_stall`); a new assignment confirms ownership
        self.app = faust.App(
            cfg.app_id,
            broker=faust_broker_url(kafka.bootstrap_servers),
            broker_credentials=broker_credentials(kafka),
            store="memory://",
            web_enabled=False,
            datadir=str(data_dir),
            topic_partitions=kafka.partitions,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=cfg.session_timeout_s,
            broker_heartbeat_interval=cfg.heartbeat_interval_s,
            broker_rebalance_timeout=cfg.rebalance_timeout_s,
            table_standby_replicas=0,  # recovery replays the changelog; standbys would double the reads
            # Faust crashes the worker when a changelog ends below where it last read it: a broker that lost
            # it (the worker keeps what it holds and writes it again, `_rebase_if_restarted`), and on Tansu
            # whenever the last batch holds several records (its listed end is the batch's first record + 1;
            # `_read_changelog_tails`).
            recovery_consistency_check=False,
            producer_max_batch_size=cfg.producer_batch_bytes,
            producer_linger=cfg.producer_linger_s,
        )
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        source = self.app.topic(kafka.topic_access, kafka.topic_metrics, **raw)
        self.features = self.app.topic(kafka.topic_features, **raw)
        self.dlq = self.app.topic(kafka.topic_dlq, **raw)
        self.partials = self.app.topic(f"{cfg.app_id}-service-partials", partitions=kafka.partitions,
                                       internal=True, **raw)
        table: dict[str, Any] = {"partitions": kafka.partitions, "key_type": bytes, "value_type": bytes}
        beacon = self.app.tables.beacon
        self.instance_table = FencedTable(self.app, name="instance-windows", beacon=beacon, **table)
        self.service_table = FencedTable(self.app, name="service-windows", beacon=beacon, **table)
        for t in (self.instance_table, self.service_table):
            self.app.tables.add(t)
        self.app.agent(source, name=f"{cfg.app_id}.windows")(self._process)
        self.app.agent(self.partials, name=f"{cfg.app_id}.services")(self._merge_services)
        self.app.timer(interval=0.5, name=f"{cfg.app_id}.tick")(self._tick)
        self.app.timer(interval=TOPICS_EVERY_S, name=f"{cfg.app_id}.topics")(self._ensure_topics)
        self.kafka = kafka
        self.app.task(self._on_start)
        faust_internals.on_accepted_commits(self.app, self._note_committed)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.on_rebalance_complete.connect(self._on_settled)

    async def _on_start(self) -> None:
        self.metrics.ready.set(1)
        self.metrics.startup_seconds.set(time.monotonic() - self.started_at)
        log.info("stream worker ready %.1f s after start", time.monotonic() - self.started_at)
        self._writer = asyncio.ensure_future(self._write_clickhouse())

    def _doubt_topics(self, why: str) -> None:
        """A sign the broker may have lost the worker's topics: check them on the next topics tick."""
        if self._topics_doubt is None:
            log.debug("checking the worker's topics: %s", why)
            self._topics_doubt = why

    async def _ensure_topics(self) -> None:
        """Create any of the worker's topics the broker no longer has. Faust declares its changelogs and
        the partials topic once, at start; a broker that lost them (the in-memory Tansu restarted)
        refuses the group's commits for them for ever, and the group cannot rejoin. Runs every
        TOPICS_EVERY_S, but asks the broker only after a sign of trouble or once a TOPICS_BACKSTOP_S."""
        from infra.core.kafka_admin import ensure_topics

        if self._topics_doubt is None and time.monotonic() - self._topics_checked_at < TOPICS_BACKSTOP_S:
            return
        why, self._topics_doubt = self._topics_doubt, None  # a sign that comes during the check stays
        changelog = {"cleanup.policy": "compact"}
        extra = {self.instance_table.changelog_topic.get_topic_name(): changelog,
                 self.service_table.changelog_topic.get_topic_name(): changelog,
                 self.partials.get_topic_name(): {}}
        try:
            created = await asyncio.get_running_loop().run_in_executor(None, ensure_topics, self.kafka, extra)
        except Exception as exc:  # broker down, or no right to create topics: the next tick tries again
            log.debug("checking the worker's topics failed: %s", exc)
            self._topics_doubt = self._topics_doubt or why or "the last check failed"
            return
        self._topics_checked_at = time.monotonic()
        if created:
            log.warning("created the missing topics %s (the broker lost them: restarted without storage?)",
                        ", ".join(created))

    async def _on_revoked(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """Forget the in-memory views: whoever owns a partition next recovers it from the changelog.
        Until that recovery completed, the timer must not load (and so freeze) a half-read table.
        A rebalance is also when a broker that lost the group (and its topics) shows: check them."""
        self._settled = False
        self.metrics.assigned.set(0)
        self._doubt_topics("the group rebalances")
        async with self._lock:
            self._instances.clear()
            self._tracked.clear()
            self._clocks.clear()
            self._services.clear()
            self._next_offset.clear()
            self._checked.clear()
            self._log_checked.clear()
            self._marks.clear()
            self._published.clear()
            self._republish.clear()

    async def _on_assigned(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """A new epoch for the new assignment: above the last one and the wall clock (`streams.fencing`)."""
        self._epoch = max(int(self.clock() * 1000), self._epoch + 1)
        await self._on_revoked(sender, *args, signal=signal, **kwargs)

    async def _read_changelog_tails(self) -> None:
        """Apply the rest of each owned changelog partition's last record batch. Faust's recovery reads to
        the end offset the broker lists, and Tansu lists the last batch as ending after its first record
        (`read_last_batches`): a batch of states and their position mark lost all but its first state,
        leaving the new owner with some states newer than the mark and others older. Applied again in
        order through the fenced apply, the records Faust did read change nothing."""
        from infra.core.kafka_admin import read_last_batches

        tables = {t.changelog_topic.get_topic_name(): t for t in (self.instance_table, self.service_table)}
        try:
            owned = [(tp.topic, tp.partition) for tp in self.app.consumer.assignment() if tp.topic in tables]
        except Exception:  # consumer not started: nothing was recovered either
            return
        if not owned:
            return
        try:
            tails = await asyncio.get_running_loop().run_in_executor(None, read_last_batches, self.kafka, owned)
        except Exception as exc:
            log.error("reading the last record batches of %d changelog partitions failed (%s): the states just "
                      "recovered may lack the last writes of their previous owner", len(owned), exc)
            return
        for (topic, _), records in tails.items():
            if records:
                tables[topic].apply_changelog_batch([changelog_event(r.key, r.value, r.partition) for r in records])

    async def _on_settled(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await self._read_changelog_tails()
        # ... and above every epoch just recovered, so a clock behind another worker's cannot go back
        recovered = highest_epoch([*self.instance_table.data.values(), *self.service_table.data.values()])
        self._epoch = max(self._epoch, recovered + 1)
        self._closes_held_until = 0.0
        self.last_event_wall = self.clock()  # a rebalance is a pause, not an idle stream
        self._settled = True
        # what this worker now consumes: a second worker of the group is only useful once it holds some
        inputs = (self.topic_access, self.topic_metrics)
        self.metrics.assigned.set(sum(1 for tp in self.app.consumer.assignment() if tp.topic in inputs))

    # -- stage 1: instance windows -------------------------------------------------------------

    def _instances_of(self, partition: int) -> dict[bytes, InstanceState]:
        states = self._instances.get(partition)
        if states is None:
            states = self._instances[partition] = {}
            for key, raw in list(self.instance_table.data.items()):
                if key.startswith(MARK_PREFIX):
                    continue
                st = InstanceState.loads(payload(raw))
                if st.partition == partition:
                    states[key] = st
                    self._tracked[st.service] += 1
                    self._republish.extend(st.pending_closed())
            self._clocks[partition] = PartitionClock(self.lateness_ms, max((s.max_ts for s in states.values()),
                                                                           default=0))
        return states

    def _instance(self, partition: int, service: str, instance: str) -> InstanceState | None:
        """The instance's state, created on its first event; None when this worker already holds
        `max_instances_per_service` instances of the service (the caller sets the events aside)."""
        states = self._instances_of(partition)
        key = f"{service}/{instance}".encode()
        st = states.get(key)
        if st is None:
            if self._tracked[service] >= self.cfg.max_instances_per_service:
                return None
            st = states[key] = InstanceState(service, instance, partition)
            self._tracked[service] += 1
        return st

    async def _process(self, stream: Any) -> None:
        async for events in stream.take_events(self.cfg.take_max, within=self.cfg.take_within_s):
            if not self._seen_first_event:
                self._seen_first_event = True
                self.metrics.first_event_seconds.set(time.monotonic() - self.started_at)
                log.info("first event processed %.1f s after start", time.monotonic() - self.started_at)
            self.metrics.records.inc(len(events))
            gaps: dict[TP, int] = {}
            async with self._lock:
                owned = self._owned({self.topic_access, self.topic_metrics})
                rejects, touched, marks = self._apply(events, gaps, owned)
                closed_states, closed = self._close({st.partition for st in touched}, None)
                futures = self._persist(self.instance_table, touched | closed_states)
                futures += self._persist_marks(marks)  # after the states: same changelog partition, in order
            self.last_event_wall = self.clock()
            await self._finish(futures, closed, rejects)
            if gaps:
                await self.app.consumer.seek_wait(gaps)

    def _marks_of(self, partition: int) -> dict[str, int]:
        """Per input partition, the last offset whose batch is wholly in the changelog. Written after
        the batch's states to the same changelog partition, so when it is there, they are."""
        marks = self._marks.get(partition)
        if marks is None:
            raw = self.instance_table.data.get(_mark_key(partition))
            marks = self._marks[partition] = orjson.loads(payload(raw)) if raw else {}
        return marks

    def _persist_marks(self, batch: dict[int, dict[str, int]]) -> list[Any]:
        futures = []
        for partition, offsets in batch.items():
            marks = self._marks_of(partition)
            for tp_key, offset in offsets.items():
                marks[tp_key] = max(marks.get(tp_key, -1), offset)
            raw = stamp(self._epoch, orjson.dumps(marks))
            self.instance_table.data[_mark_key(partition)] = raw
            futures.append(self._durable(self.instance_table, partition, _mark_key(partition),
                                         self.instance_table.send_changelog(partition, _mark_key(partition), raw)))
        return futures

    def _position(self, tp: TP, tp_key: str) -> int | None:
        """The next input offset this partition's table state needs (None: nothing recorded yet)."""
        pos = self._next_offset.get(tp)
        if pos is None:
            mark = self._marks_of(tp.partition).get(tp_key)
            pos = None if mark is None else mark + 1
        return pos

    def _gap(self, tp: TP, expected: int, got: int) -> bool:
        """A record past the next one needed: the records between were never delivered (the consumer
        group committed past them, e.g. a worker resumed from offsets ahead of the changelog it
        recovered). Read them again rather than lose them; after MAX_SEEKS tries, give them up."""
        self.metrics.offset_gaps.inc()
        tries = self._seeks.get((tp, expected), 0) + 1
        self._seeks[(tp, expected)] = tries
        if tries > MAX_SEEKS:
            log.error("%s: records %d..%d are not delivered after %d seeks; going on without them", tp,
                      expected, got - 1, MAX_SEEKS)
            return False
        log.warning("%s: records %d..%d were not delivered; reading from %d again", tp, expected, got - 1,
                    expected)
        return True

    def _note_committed(self, offsets: Mapping[TP, int | None]) -> None:
        """Remember the highest offset the group committed per input partition: of the commits the
        broker accepted, and as read from it at an assignment. Not every offset Faust tried to commit:
        a worker the group expelled still tries, is refused, and would note offsets ahead of the group's."""
        for tp, offset in offsets.items():
            if offset is not None and tp.topic in (self.topic_access, self.topic_metrics):
                self._committed_seen[tp] = max(offset, self._committed_seen.get(tp, offset))

    def _log_restarted(self, tp: TP) -> str | None:
        """Why `tp`'s log is not the one this worker's states were built from; None when it is (or unknown).

        The group's committed offset only moves forward (Faust never commits backwards, and a new owner
        starts from the committed offset). After a rebalance it is read from the broker again: lower
        than the highest one seen, or gone, means the broker lost the group's offsets, and with the
        in-memory Tansu, the log with them. A brand-new group that never committed cannot tell."""
        seen = self._committed_seen.get(tp)
        if seen is None or self._marks_of(tp.partition).get(f"{tp.topic}:{tp.partition}") is None:
            return None
        committed = faust_internals.committed_offsets(self.app.consumer).get(tp)
        if committed is None or committed < seen:
            return f"the group's committed offset went back from {seen} to {committed}"
        return None

    def _rebase_if_restarted(self, tp: TP) -> set[InstanceState] | None:
        """Once per assignment, before any of its records is folded: when `tp`'s log restarted, forget
        every position that refers to the old log (the states' applied offsets, the position mark, the
        gap seeks), so its new records count; the partition's states, to be written again to the new
        changelog (which lost them too) together with the marks. None when the log is the same."""
        self._log_checked.add(tp)
        why = self._log_restarted(tp)
        if why is None:
            self._note_committed({tp: faust_internals.committed_offsets(self.app.consumer).get(tp)})
            return None
        tp_key = f"{tp.topic}:{tp.partition}"
        self.metrics.log_restarts.inc()
        self._doubt_topics(f"{tp}'s log restarted")
        self._committed_seen.pop(tp, None)
        self._next_offset.pop(tp, None)
        for seek in [k for k in self._seeks if k[0] == tp]:
            del self._seeks[seek]
        marks = self._marks_of(tp.partition)
        old = marks.pop(tp_key, None)
        states = set(self._instances_of(tp.partition).values())
        for st in states:
            st.offsets.pop(tp_key, None)
        log.error("%s: the broker lost this partition's log (%s; a broker without durable storage restarted?). "
                  "Records up to offset %s it held are gone; reading the new log from its start. %d instance "
                  "states (open windows, their event ids, windows not yet in ClickHouse) are kept and written "
                  "to the new changelog", tp, why, old, len(states))
        return states

    async def _finish(self, futures: list[Any], closed: list[tuple[FeatureWindow, WindowPartial | None]],
                      rejects: list[tuple[bytes, str, str]]) -> None:
        """Wait until the states are in the changelog (only then may the batch be acked), then publish
        the closed windows; once delivered they may go to ClickHouse."""
        if futures:
            await asyncio.gather(*futures)
        if closed:
            # A broker gone or just restarted refuses sends for a while: publish them all again until
            # acknowledged (a repeat on fs.features is harmless, a partial replaces itself).
            async for attempt in retry.until_accepted(log, f"publishing {len(closed)} closed windows",
                                                      lambda _: self._doubt_topics("a window send failed")):
                with attempt:
                    sent = []
                    for window, partial in closed:
                        sent.append(await self.features.send(key=f"{window.service}/{window.instance}".encode(),
                                                             value=window.model_dump_json().encode()))
                        if partial is not None:
                            sent.append(await self.partials.send(key=window.service.encode(),
                                                                 value=partial.model_dump_json().encode()))
                    await asyncio.gather(*sent)
            self._published.update((w.service, w.instance, w.window_start, w.emitted_at) for w, _ in closed)
            self._wake.set()
        for raw, reason, detail in rejects:
            await self._reject(raw, reason, detail)

    def _apply(self, events: Iterable[Any], gaps: dict[TP, int], owned: set[int] | None = None
               ) -> tuple[list[tuple[bytes, str, str]], set[InstanceState], dict[int, dict[str, int]]]:
        """Fold a batch in. A partition that shows a gap is left alone for the rest of the batch, and
        `gaps` says where to read it again. A record of a partition this worker no longer holds (`owned`,
        None: all) is left to its owner: an expelled worker hears of its expulsion as a revocation of an
        assignment it no longer has, so Faust does not wait for its agents, whose batches in hand would
        otherwise load that partition's states again, and fold, close and publish them."""
        fold = _Fold()
        for event in events:
            msg = event.message
            if owned is not None and msg.partition not in owned:
                self.metrics.not_owned.inc()
                continue
            tp_key = self._admit(msg, gaps, fold)
            if tp_key is None:
                continue
            access = msg.topic == self.topic_access
            # Ingest keys by instance, so a record is usually one instance's envelope: decoded into
            # columns, folded in at once. Anything else (mixed, ill-typed, metrics) goes event by event.
            cols = access_columns(event.value) if access else None
            if cols is None or cols.keys is None or not self._fold_columns(msg, tp_key, cols, event.value, fold):
                self._fold_items(msg, tp_key, event.value, access, fold)
        self._count(fold)
        return fold.rejects, fold.touched, fold.marks

    def _admit(self, msg: Any, gaps: dict[TP, int], fold: _Fold) -> str | None:
        """The record's `topic:partition` when it is the next one of its partition to fold (its position
        noted), None when it is to be read again later: its partition shows a gap in this batch."""
        tp_key = f"{msg.topic}:{msg.partition}"
        marks = fold.marks
        if msg.tp in gaps:
            return None
        if msg.tp not in self._log_checked:
            fold.touched.update(self._rebase_if_restarted(msg.tp) or ())
        expected = self._position(msg.tp, tp_key)
        if expected is not None and msg.offset > expected and self._gap(msg.tp, expected, msg.offset):
            gaps[msg.tp] = expected  # input topics have no holes of their own (no transactions)
            self._next_offset[msg.tp] = expected
            return None
        self._next_offset[msg.tp] = max(expected or 0, msg.offset + 1)
        marks.setdefault(msg.partition, {})[tp_key] = msg.offset
        if msg.partition not in self._clocks:
            self._instances_of(msg.partition)
        return tp_key

    def _fold_columns(self, msg: Any, tp_key: str, cols: AccessColumns, raw: bytes, fold: _Fold) -> bool:
        """One instance's envelope folded in at once; False (nothing changed) to go event by event instead."""
        st = self._instance(msg.partition, cols.service, cols.instance)
        if st is None:
            fold.refuse(raw, cols.service, {cols.instance: len(cols.ts)}, self.cfg.max_instances_per_service)
            return True
        if st.applied(tp_key, msg.offset):  # a replay: this state already holds it
            return True
        folded = st.add_access_columns(cols.ts, cols.status, cols.latency_ms, cols.bytes_sent, self.instance_window_ms,
                                       self._clocks[msg.partition], cols.keys)
        if folded is None:
            return False
        fold.counted += folded[0]
        fold.late_access += folded[1]
        fold.duplicates += len(cols.ts) - folded[0] - folded[1]
        st.offsets[tp_key] = msg.offset
        fold.touched.add(st)
        return True

    def _fold_items(self, msg: Any, tp_key: str, raw: bytes, access: bool, fold: _Fold) -> None:
        """A record event by event; a bad event is dead-lettered with its reason, the others counted."""
        try:
            items = decode_access_record(raw)
        except (ValueError, TypeError) as exc:
            fold.rejects.append((raw, "bad_record", str(exc)))
            return
        record_states: list[InstanceState] = []
        refused: Tally[tuple[str, str]] = Tally()
        last: tuple[str, str] | None = None
        st: InstanceState | None = None
        over = False
        for item in items:
            try:
                if not access and item["name"] not in SATURATION_METRICS:
                    continue  # a sample no window keeps: no state for its service/instance (exporters' own)
                key = (item["service"], item["instance"])
                if key != last:
                    last = key
                    st = self._instance(msg.partition, *key)
                    over = st is None
                    if st is not None and st.applied(tp_key, msg.offset):  # a replay: this state holds it
                        st = None
                    elif st is not None and st not in record_states:
                        record_states.append(st)
                if over:
                    refused[key] += 1
                elif st is not None:
                    self._fold_item(st, item, access, fold)
            except (KeyError, TypeError, ValueError) as exc:
                fold.rejects.append((raw, "bad_event", f"{type(exc).__name__}: {exc}"))
        for st in record_states:
            st.offsets[tp_key] = msg.offset
        fold.touched.update(record_states)
        for service in dict.fromkeys(s for s, _ in refused):
            fold.refuse(raw, service, {i: n for (s, i), n in refused.items() if s == service},
                        self.cfg.max_instances_per_service)

    def _fold_item(self, st: InstanceState, item: dict[str, Any], access: bool, fold: _Fold) -> None:
        clock = self._clocks[st.partition]
        if not access:
            if st.add_sample(item, self.instance_window_ms, clock) is False:
                fold.late_metric += 1
            return
        added = st.add_access(item, self.instance_window_ms, clock, id_key(item["id"]))
        if added:
            fold.counted += 1
        elif added is None:
            fold.duplicates += 1
        else:
            fold.late_access += 1

    def _count(self, fold: _Fold) -> None:
        """The batch's tallies into the metrics: once per batch, a Prometheus increment per event costs more."""
        self.metrics.events.inc(fold.counted)
        if fold.late_access:
            self.metrics.late.labels("access").inc(fold.late_access)
        if fold.late_metric:
            self.metrics.late.labels("metric").inc(fold.late_metric)
        if fold.duplicates:
            self.metrics.duplicates.inc(fold.duplicates)
        if fold.over_cap:
            self.metrics.over_cap.inc(fold.over_cap)

    def _close(self, partitions: Iterable[int], wall_ms: int | None
               ) -> tuple[set[InstanceState], list[tuple[FeatureWindow, WindowPartial | None]]]:
        """Close what the partition watermark (or, when idle, the wall clock) has passed."""
        states: set[InstanceState] = set()
        out: list[tuple[FeatureWindow, WindowPartial | None]] = []
        emitted_at = int(self.clock() * 1000)
        for p in partitions:
            mark = self._clocks[p].watermark if wall_ms is None else max(self._clocks[p].watermark,
                                                                         wall_ms - self.lateness_ms)
            for st in self._instances_of(p).values():
                if st.windows and min(st.windows) + self.instance_window_ms <= mark:
                    out.extend(st.close(mark, self.instance_window_ms, emitted_at))
                    states.add(st)
        self.metrics.open_windows.set(sum(len(st.windows) for by_key in self._instances.values()
                                          for st in by_key.values()))
        self.metrics.tracked_instances.set(sum(self._tracked.values()))
        return states, out

    def _persist(self, table: Any, states: Iterable[InstanceState | ServiceWindow]) -> list[Any]:
        """Write each state to the table once, its changelog on the state's own partition."""
        futures = []
        for st in states:
            raw = stamp(self._epoch, st.dumps())
            table.data[st.key] = raw
            futures.append(self._durable(table, st.partition, st.key, table.send_changelog(st.partition, st.key, raw)))
        return futures

    def _durable(self, table: Any, partition: int, key: bytes, sent: Any) -> asyncio.Future[None]:
        """A changelog write that completes once the broker acknowledged it: a failed one (the broker
        gone or just restarted, its topics not yet answering) is sent again, with what the table
        holds for the key by then, until it is acknowledged. The batch is acked only after that.
        A key the table no longer holds is not written again: it was deleted on purpose (its tombstone
        sent then), or its partition went to another worker, whose state a tombstone would wipe."""
        async def settle() -> None:
            pending = sent
            async for attempt in retry.until_accepted(log, f"changelog write of {key!r} (partition {partition})",
                                                      lambda _: self._doubt_topics("a changelog write failed")):
                with attempt:
                    if pending is None:  # the last try failed: the key's current value
                        value = table.data.get(key)
                        if value is None:
                            return
                        pending = table.send_changelog(partition, key, value, value_serializer="raw")
                    current, pending = pending, None
                    await current
        return asyncio.ensure_future(settle())

    # -- stage 2: service-wide windows ----------------------------------------------------------

    def _services_of(self, partition: int) -> dict[bytes, ServiceWindow]:
        states = self._services.get(partition)
        if states is None:
            states = self._services[partition] = {}
            for key, raw in list(self.service_table.data.items()):
                st = ServiceWindow.loads(payload(raw))
                if st.partition == partition:
                    states[key] = st
                    if st.pending is not None:
                        self._republish.append((FeatureWindow.model_validate(st.pending), None))
        return states

    def _service_window(self, partial: WindowPartial, partition: int) -> ServiceWindow:
        """The service-wide window an instance window belongs to (the one starting at or before it)."""
        states = self._services_of(partition)
        start = partial.window_start - partial.window_start % self.window_ms
        key = f"{partial.service}|{start}".encode()
        st = states.get(key)
        if st is None:
            st = states[key] = ServiceWindow(partial.service, start, partition)
        return st

    async def _merge_services(self, stream: Any) -> None:
        """Replays are harmless here (a partial replaces itself), so plain at-least-once suffices."""
        async for events in stream.take_events(self.cfg.take_max, within=self.cfg.take_within_s):
            now = self.clock()
            async with self._lock:
                touched = []
                owned = self._owned({self.partials.get_topic_name()})
                for event in events:
                    if event.message.partition not in owned:  # its owner merges it (see `_apply`)
                        self.metrics.not_owned.inc()
                        continue
                    try:
                        partial = WindowPartial.model_validate_json(event.value)
                    except ValueError as exc:  # not ours to fix here; never stop the merge for it
                        self.metrics.rejected.labels("bad_partial").inc()
                        log.warning("skipping an undecodable service partial: %s", exc)
                        continue
                    st = self._service_window(partial, event.message.partition)
                    if st.add(partial, now):
                        touched.append(st)
                    elif st.done:
                        self.metrics.late.labels("service").inc()
                futures = self._persist(self.service_table, touched)
            if futures:
                await asyncio.gather(*futures)

    async def _emit_services(self, owned: set[int]) -> None:
        now = self.clock()
        async with self._lock:
            out, changed = [], []
            for partition, states in self._services.items():
                if partition not in owned:
                    continue
                for key in [k for k, st in states.items() if st.done and now - st.updated > FORGET_DONE_S]:
                    st = states.pop(key)
                    self.service_table.data.pop(key, None)
                    self.service_table.send_changelog(st.partition, key, None, value_serializer="raw")
                for st in states.values():
                    if st.due(now, self.cfg.idle_close_s, self.window_ms, self.instance_window_ms):
                        out.append(st.emit(self.window_ms, int(now * 1000)))
                        changed.append(st)
                    elif st.retire(now, self.cfg.service_retain_s):
                        changed.append(st)
            futures = self._persist(self.service_table, changed)
        await self._finish(futures, [(w, None) for w in out], [])

    # -- wall clock: idle close, service emission ------------------------------------------------

    def _owned(self, topics: set[str]) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic in topics}

    def _caught_up(self) -> bool:
        """True when every input partition has been *processed* to its end: only then may the wall clock
        close windows (a worker catching up on a backlog would otherwise make that backlog late).
        Not the fetch position: a worker that just took a partition over has fetched far ahead of
        what it processed. Faust keeps the committed offsets (next to read) in a private mapping."""
        consumer = self.app.consumer
        committed = faust_internals.committed_offsets(consumer)
        for tp in consumer.assignment():
            if tp.topic not in (self.topic_access, self.topic_metrics):
                continue
            high = consumer.highwater(tp)
            done = self._position(tp, f"{tp.topic}:{tp.partition}")
            if done is None:
                done = committed.get(tp) or 0
            if high is None or done < high:
                return False
        return True

    async def _seek_behind_commits(self) -> None:
        """Once per assignment: where the group committed past what the recovered table holds, read
        from the table's position (replays are skipped per state; missing records are not lost)."""
        consumer = self.app.consumer
        committed = faust_internals.committed_offsets(consumer)
        seeks: dict[TP, int] = {}
        futures: list[Any] = []
        async with self._lock:
            for tp in consumer.assignment():
                if tp.topic not in (self.topic_access, self.topic_metrics):
                    continue
                if tp not in self._log_checked:
                    rebased = self._rebase_if_restarted(tp)
                    if rebased is not None:
                        futures += self._persist(self.instance_table, rebased)
                        futures += self._persist_marks({tp.partition: {}})
                if tp in self._checked:
                    continue
                self._checked.add(tp)
                pos, done = self._position(tp, f"{tp.topic}:{tp.partition}"), committed.get(tp)
                if pos is not None and done is not None and done > pos and self._gap(tp, pos, done):
                    seeks[tp] = pos
                    self._next_offset[tp] = pos
        if futures:
            await asyncio.gather(*futures)
        if seeks:
            await consumer.seek_wait(seeks)

    def _note_stall(self) -> None:
        """A tick far later than its 0.5 s means the process stood still (paused, starved): long enough,
        and the group may have expelled it without its knowing yet. Until the group had time to tell it
        (a session timeout), it must not close windows by the wall clock: a zombie that closes a window
        it no longer owns publishes it short, and later than the new owner's complete one, which the
        features table would then keep."""
        now = time.monotonic()
        gap, self._last_tick = now - (self._last_tick or now), now
        if gap > self.cfg.session_timeout_s / 2:
            self._closes_held_until = now + self.cfg.session_timeout_s
            self.metrics.stalls.inc()
            log.warning("the worker stood still for %.1f s; closing windows by the wall clock waits %.0f s for "
                        "the group to confirm it still owns its partitions", gap, self.cfg.session_timeout_s)

    async def _tick(self) -> None:
        """Load every owned partition's state (pending windows of a recovered one must go out), close
        windows by wall clock when the input is idle, and emit settled service-wide windows."""
        self._note_stall()
        if not self._settled or self.app.rebalancing:  # settled is signalled before Faust reads the committed
            return  # offsets again (`_rebase_if_restarted` would take "none yet" for a lost log)
        try:
            owned_in = self._owned({self.topic_access, self.topic_metrics})
            owned_partials = self._owned({self.partials.get_topic_name()})
        except Exception:  # consumer not started / rebalancing: next tick
            return
        async with self._lock:
            for p in owned_in:
                self._instances_of(p)
            for p in owned_partials:
                self._services_of(p)
            again, self._republish = self._republish, []
        await self._seek_behind_commits()
        if again:
            await self._finish([], again, [])
        now = self.clock()
        held = time.monotonic() < self._closes_held_until
        if not held and now - self.last_event_wall >= self.cfg.idle_close_s and self._caught_up():
            async with self._lock:
                closed_states, closed = self._close([p for p in self._instances if p in owned_in], int(now * 1000))
                futures = self._persist(self.instance_table, closed_states)
            await self._finish(futures, closed, [])
        if not held:
            await self._emit_services(owned_partials)
        async with self._lock:
            self._forget_idle_instances()
        if any(pending_windows(self._all_states())):
            self._wake.set()

    def _forget_idle_instances(self) -> None:
        """Drop the states of instances idle for `instance_retain_s` of their partition's event time
        (`InstanceState.forgettable`), so instances that come and go (pods) do not use up the cap."""
        retain_ms = int(self.cfg.instance_retain_s * 1000)
        for partition, states in self._instances.items():
            watermark = self._clocks[partition].watermark
            for key in [k for k, st in states.items() if st.forgettable(watermark, retain_ms)]:
                st = states.pop(key)
                self._tracked[st.service] -= 1
                self.instance_table.data.pop(key, None)
                self.instance_table.send_changelog(partition, key, None, value_serializer="raw")

    # -- ClickHouse ------------------------------------------------------------------------------

    def _all_states(self) -> list[InstanceState | ServiceWindow]:
        out: list[InstanceState | ServiceWindow] = [st for s in self._instances.values() for st in s.values()]
        out.extend(st for s in self._services.values() for st in s.values())
        return out

    async def _write_clickhouse(self) -> None:
        """Write pending windows; only what ClickHouse acknowledged leaves the table state."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch: list[dict[str, Any]] = []
            # ClickHouse down or refusing: keep them, and retry shortly with what is pending then.
            async for attempt in retry.until_stored():
                with attempt:
                    batch = await self._write_pending()
            if not batch:
                continue
            try:
                await self._acknowledge(batch)
            except Exception:  # the windows stay pending and are written again: harmless, keep going
                log.exception("acknowledging %d written windows failed", len(batch))

    async def _write_pending(self) -> list[dict[str, Any]]:
        """One write of every pending published window to ClickHouse; the windows written."""
        async with self._lock:
            batch = [w for w in pending_windows(self._all_states()) if window_id(w) in self._published]
        self.metrics.unsent.set(len(batch))
        if not batch:
            return batch
        windows = [FeatureWindow.model_validate(w) for w in batch]
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.sink.write, windows)
        except Exception as exc:
            self.metrics.sink_errors.inc()
            log.warning("ClickHouse write of %d windows failed, will retry: %s", len(windows), exc)
            raise
        self.metrics.windows.inc(len(windows))
        return batch

    async def _acknowledge(self, written: list[dict[str, Any]]) -> None:
        done = {window_id(w) for w in written}
        self._published.difference_update(done)
        async with self._lock:
            inst, serv = [], []
            for st in self._all_states():
                if isinstance(st, InstanceState):
                    acked = [s for s, p in st.pending.items() if window_id(p["w"]) in done]
                    for s in acked:
                        del st.pending[s]
                    if acked:
                        inst.append(st)
                elif st.pending is not None and (st.service, SERVICE_WIDE, st.window_start, st.emitted_at) in done:
                    st.pending = None
                    serv.append(st)
            futures = self._persist(self.instance_table, inst) + self._persist(self.service_table, serv)
        if futures:
            await asyncio.gather(*futures)
        self.metrics.unsent.set(len(pending_windows(self._all_states())))

    async def _reject(self, raw: bytes, reason: str, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        rej = Rejection(source="streams", reason=reason, detail=detail[:500], raw=truncate_raw(raw),
                        ts_received=int(self.clock() * 1000))
        await self.dlq.send(key=b"streams", value=rej.model_dump_json().encode())
