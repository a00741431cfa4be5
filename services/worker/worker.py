"""The worker: poll a batch, run the step chain over it, commit after the side effects are delivered."""

from __future__ import annotations

import gc
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import redis
from prometheus_client import CollectorRegistry

from services.worker.checkpointing import Checkpointer, Restored
from services.worker.committing import Committer, TransactionalCommitter, TransactionFailed
from services.worker.http import EndpointServer
from shared.kafka.admin import partition_counts
from shared.kafka.clients import security_options
from shared.kafka.preflight import check_kafka_security
from shared.kafka.transport import EventConsumer, TransportError, open_consumer, open_producer
from shared.learners.base import Learner
from shared.learners.registry import build_learner
from shared.monitoring.metrics import Metrics
from shared.pii import check_pii_key_apart, dead_letter_copy
from shared.preflight import check_kafka, check_redis
from shared.settings import ModelSettings, Settings
from shared.signing_keys import checkpoint_keys
from shared.state.checkpoints import CheckpointStore
from shared.state.connection import check_redis_security, redis_client
from shared.state.dedup import DedupWindow
from shared.state.entities import EntityStore
from shared.state.label_join import LabelJoin
from shared.steps.backpressure import Backpressure, Parts
from shared.steps.batch import Batch, Step
from shared.steps.champion import Champion
from shared.steps.clean import CleanStep
from shared.steps.dead_letters import DeadLetterLimitStep
from shared.steps.decode import DecodeStep
from shared.steps.dedup import DedupStep
from shared.steps.drift import DriftStep
from shared.steps.entities import EntityFeaturesStep, entity_spec
from shared.steps.group_champion import build_champion
from shared.steps.labels import DelayedLabels
from shared.steps.models import ModelStep
from shared.steps.ordering import TimeOrder
from shared.steps.publish import PublishStep
from shared.steps.score import ScoreStep
from shared.steps.semantics import SemanticCheckStep, SemanticRules
from shared.sync.group import open_group_sync

#: a batch with more than this many polls' worth of records behind it runs whole, not in parts (a worker catching up
#: on a backlog: its throughput counts, not the first part's latency)
PARTS_MAX_LAG = 2
#: after a pull failed, the next one waits this long (the checkpoint's own backoff handles Redis being down)
PULL_RETRY_S = 1.0
#: a batch of at most this many records, processed at the head of the stream (nothing held, nothing more on the
#: broker) after the loop waited at least ``kafka.linger_ms`` for it, has its outputs sent at once instead of after
#: the linger (at-least-once; docs/operations.md, "Tuning for latency"): no later output would share their batch
NUDGE_MAX_RECORDS = 2
#: the longest poll while held records wait for a lagging partition's next fetch
ORDER_POLL_MS = 10
#: exactly-once: while outputs wait for the commit in flight, polls of at most this long, so that they go out soon
#: after it ended
COMMIT_POLL_MS = 2
#: exactly-once: a chunk of held records ends by the time the next commit is due (its outputs become readable only
#: at that commit, so a chunk running past it delays every output of the transaction), but takes at least this long
COMMIT_CHUNK_MIN_S = 0.005

log = logging.getLogger("streamlearn.worker")

TP = tuple[str, int]


class Worker:
    """One consumer-group member running the step chain.

    ``stop()`` (or SIGTERM/SIGINT via :meth:`install_signal_handlers`) asks it to drain: the current batch
    is finished, its outputs delivered, its offsets committed, and the clients closed.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        learner_factory: Callable[[ModelSettings], Learner] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self._stop = threading.Event()
        self._last_loop = time.monotonic()
        self._ready = False
        factory = learner_factory or (
            lambda m: build_learner(m, settings.preprocessing, settings.worker.seed)
        )
        self.model_step = ModelStep(settings.models, factory, scope=settings.sync.scope)
        probe = self.model_step.fresh_set()
        self.tasks = {name: learner.task for name, learner in probe.learners.items()}
        self.champion_selector: Champion = build_champion(settings, self.model_step.model_names, self.tasks)
        #: the champion of the batch being processed: scored as ``role="champion"`` and published to the predictions
        #: topic (a drift ``promote`` during the batch takes effect with the next one, so the two always agree)
        self._batch_champion = self.champion_selector.current
        self._pending_offsets: dict[TP, int] = {}
        #: partitions assigned by the last rebalance, paused until the poll loop has restored them
        self._to_restore: list[TP] = []
        #: per partition, the next offset to process (what a checkpoint taken now reflects)
        self._processed: dict[TP, int] = {}
        #: per partition, records below this offset were published before a restart: learn only
        self._replay_until: dict[TP, int] = {}
        #: partitions whose learn-only replay has not caught up yet (logged once when it does)
        self._replaying: set[TP] = set()
        self.checkpointer: Checkpointer | None = None
        self._events_since_commit = 0
        #: the last batch was small and at the head of the stream: its outputs are nudged out after the loop's turn
        self._nudge_due = False
        #: when the previous batch was processed (a nudge is due only after the loop waited the linger for records)
        self._last_batch_done = 0.0
        self._last_commit = time.monotonic()
        self._last_pull = time.monotonic()
        self.consumer: EventConsumer | None = None
        self.committer: Committer | None = None
        #: partitions whose restore waits for Redis are retried from this time on, with a growing delay
        self._restore_not_before = 0.0
        self._restore_backoff_s = 1.0
        #: exactly-once: why the open transaction must be given up (set by a rebalance listener)
        self._rewind_reason: str | None = None
        #: at-least-once: outputs were not delivered; nothing processed may be committed or checkpointed any more
        self._delivery_failure: TransportError | None = None
        self._kafka_ok = True
        self.steps: list[Step] = []
        #: where the steps that run part by part begin (the model step; docs/architecture.md, "Parts of a batch")
        self._model_index = 0
        self.parts = Parts()
        #: the dedup step's window, whose connection the worker closes when it stops
        self._dedup_window: DedupWindow | None = None
        self.score_step = ScoreStep(self.metrics, self.tasks, settings.metrics.rolling_window,
                                    export_interval_s=settings.metrics.export_interval_s,
                                    champion=lambda: self._batch_champion)
        order = None
        if settings.worker.partition_order == "time":
            order = TimeOrder([settings.kafka.topics.events], settings.worker.order_wait_ms / 1000)
        #: the time order's counters as last exported (delivered, given up, seconds waited)
        self._order_exported: tuple[int, int, float] = (0, 0, 0.0)
        self.backpressure = Backpressure(settings.kafka.max_poll_interval_ms,
                                         paused_gauge=self.metrics.paused_partitions, order=order,
                                         hold_per_partition=settings.kafka.max_poll_records)
        self.drift_step = DriftStep(settings.drift, self.metrics, self.model_step, self.tasks, self.champion_selector,
                                    self.score_step.rolling, settings.champion.metric)
        self.endpoint: EndpointServer | None = None
        #: the delayed-label join (event side is a step; the worker feeds it the label records)
        self.delayed_labels: DelayedLabels | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT only set the stop flag; the loop drains."""

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s received: draining", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _healthy(self) -> bool:
        return time.monotonic() - self._last_loop < max(60.0, self.settings.kafka.max_poll_interval_ms / 1000)

    def _readiness(self) -> tuple[bool, str]:
        if not self._kafka_ok:
            return False, "degraded: Kafka coordinator unreachable, reconnecting"
        if not self._ready:
            return False, "not ready: waiting for partition assignment"
        if self.checkpointer is not None and (
            not self.checkpointer.healthy or self.registry.get_sample_value("streamlearn_redis_up") == 0
        ):
            return False, "degraded: Redis unavailable, checkpoints are being retried (still predicting)"
        return True, "ready"

    def start(self) -> None:
        """Connect to Kafka, start the HTTP endpoint, subscribe; :class:`StartupError` when it cannot."""
        kafka = self.settings.kafka
        signing_keys = checkpoint_keys(self.settings.hmac_key, self.settings.hmac_verify_keys)
        check_pii_key_apart(self.settings)
        clean = CleanStep(self.settings.cleaning)  # refuses a pii.hash without a usable hash_key
        # a refused TLS or SASL set-up stops the start with one clear line, before any client retries it
        check_kafka_security(kafka)
        if self._uses_redis():
            check_redis_security(self.settings.redis)
        if self.settings.worker.startup_checks:
            self._check_dependencies()
        if self.settings.metrics.enabled:
            self.endpoint = EndpointServer(
                self.settings.metrics.host, self.settings.metrics.port, self.registry,
                self._healthy, self._readiness,
            )
            self.endpoint.start()
        if self.settings.checkpoint.enabled:
            client = redis_client(self.settings.redis)
            store = CheckpointStore(
                client, self.settings.redis.namespace, kafka.group_id,
                signing_keys,
            )
            group = open_group_sync(client, self.settings, self.metrics, signing_keys)
            self.checkpointer = Checkpointer(store, self.model_step, self.settings.checkpoint, self.metrics,
                                             group=group)
            self.checkpointer.probe()
        self.consumer = open_consumer(kafka)
        self.backpressure.attach(self.consumer)
        self.committer = (
            TransactionalCommitter(self.consumer, lambda: open_producer(kafka, transactional=True),
                                   op_timeout_ms=kafka.transaction_op_timeout_ms,
                                   observe_commit=self.metrics.transaction_commit_seconds.observe)
            if kafka.exactly_once else Committer(self.consumer, open_producer(kafka))
        )
        publish = PublishStep(
            self.committer.send, kafka.topics, self.model_step, lambda: self._batch_champion, self.metrics,
            dead_letter_value=dead_letter_copy(self.settings.cleaning.pii, clean.mask),
        )
        self.steps = self._build_steps(publish, clean)
        self._model_index = self.steps.index(self.model_step)
        self._export_champion()
        topics = [kafka.topics.events] + ([kafka.topics.labels] if self.delayed_labels is not None else [])
        if self.delayed_labels is not None:
            check_co_partitioned(partition_counts(kafka.bootstrap_servers, [kafka.topics.events, kafka.topics.labels],
                                                  **security_options(kafka)), kafka.topics.events, kafka.topics.labels)
        self.consumer.subscribe(topics, self)
        log.info("worker subscribed to %s as group %s", ", ".join(topics), kafka.group_id)
        _freeze_startup_objects()

    def _uses_redis(self) -> bool:
        """Whether a feature keeps state in Redis (checkpoints, dedup, entity features, the label join)."""
        s = self.settings
        return s.checkpoint.enabled or s.dedup.enabled or s.entities.enabled or s.labels.enabled

    def _check_dependencies(self) -> None:
        """Kafka, and Redis when a feature keeps state there, answer; else :class:`StartupError` (one line)."""
        s = self.settings
        check_kafka(s.kafka, s.worker.connect_timeout_s)
        if self._uses_redis():
            check_redis(s.redis, s.worker.connect_timeout_s)

    def _build_steps(self, publish: PublishStep, clean: CleanStep) -> list[Step]:
        """The step chain: decode, dedup, clean, entity features, models, publish, delayed-label join, score, drift.

        The predictions are published as soon as the models made them: the steps after publish (the label join's
        Redis round trip, the scoreboards, the drift monitors) are bookkeeping that no output waits for
        (docs/architecture.md). Dedup, entity features and the delayed-label join keep their state in Redis
        (docs/state.md); each is left out when its settings section is disabled.
        """
        s = self.settings
        namespace, group = s.redis.namespace, s.kafka.group_id
        client: redis.Redis | None = None
        if s.dedup.enabled or s.entities.enabled or s.labels.enabled:
            client = redis_client(s.redis)
        rules = SemanticRules(s.limits, {learner.task for learner in self.model_step.fresh_set().learners.values()})
        steps: list[Step] = [DecodeStep(s.limits), SemanticCheckStep(rules), DeadLetterLimitStep(s.limits)]
        if client is not None and s.dedup.enabled:
            window = DedupWindow(client, namespace, group, s.dedup.window_s, s.dedup.max_entries)
            self._dedup_window = window
            steps.append(DedupStep(window, self.metrics))
        steps.append(clean)
        if client is not None and s.entities.enabled:
            store = EntityStore(client, namespace, group, entity_spec(s.entities))
            steps.append(EntityFeaturesStep(store, self.metrics))
        steps += [self.model_step, publish]
        if client is not None and s.labels.enabled:
            lb = s.labels
            join = LabelJoin(
                client, namespace, group, lb.ttl_s, lb.max_entries, lb.early_label_ttl_s, max_held=lb.max_held,
                joined_marker_ttl_s=lb.joined_marker_ttl_s, late_marker_ttl_s=lb.late_marker_ttl_s,
                max_joined=lb.max_joined, max_seen=lb.max_seen,
            )
            assert self.committer is not None
            self.delayed_labels = DelayedLabels(
                join, self.model_step, self.score_step, self.metrics, position=self._processed.get,
                observe=self.drift_step.observe,
                send=self.committer.send, dead_letter_topic=s.kafka.topics.dead_letters,
                limit=DeadLetterLimitStep(s.limits), rules=rules,
            )
            steps.append(self.delayed_labels)
        steps += [self.score_step, self.drift_step]
        return steps

    def run(self, *, max_seconds: float | None = None, idle_exit_s: float | None = None) -> None:
        """Poll and process until stopped (or the optional limits pass), then drain and close."""
        if self.consumer is None:
            self.start()
        assert self.consumer is not None
        deadline = time.monotonic() + max_seconds if max_seconds else None
        last_data = time.monotonic()
        try:
            while not self._stop.is_set():
                self._last_loop = time.monotonic()
                if deadline is not None and self._last_loop > deadline:
                    break
                if idle_exit_s is not None and self._last_loop - last_data > idle_exit_s:
                    break
                try:
                    polled = self.consumer.poll(timeout_ms=self._poll_timeout_ms(),
                                                max_records=self.settings.kafka.max_poll_records)
                except TransportError as exc:  # kafka-python 3 raises here while the broker is unreachable
                    self._kafka_unreachable(exc)
                    continue
                if self._delivery_failure is not None:  # found by a rebalance listener inside the poll
                    raise self._delivery_failure
                self._kafka_ok = self.consumer.connected()
                self.metrics.kafka_up.set(1 if self._kafka_ok else 0)
                if self._rewind_reason is not None:
                    self._rewind(self._rewind_reason)
                    polled = []  # read before the rewind: the partitions are read again from their checkpoints
                if self._to_restore and time.monotonic() >= self._restore_not_before:
                    self.restore_assigned()
                try:
                    if polled:
                        last_data = time.monotonic()
                        self.backpressure.submit(Batch(polled, time.time()))
                    # a time-bounded chunk; while records are held, partitions stay paused and the loop keeps polling
                    self.backpressure.process_next(self.process, self._chunk_budget_s())
                    self.backpressure.apply(self.consumer)
                    self._export_order()
                    self._update_champion()  # also while idle: a switch made by another worker arrives
                    self.score_step.export()
                    if self.checkpointer is not None:
                        self.checkpointer.poll()  # a background checkpoint's outcome, also while idle
                    self.model_step.train_if_due()
                    self._maybe_pull()
                    self._maybe_commit()
                    self._maybe_nudge()
                except TransactionFailed as exc:
                    self._rewind(str(exc))
        finally:
            self.close()

    def _export_order(self) -> None:
        """The held records, the time order's waits and the outputs waiting for a commit, as metrics."""
        assert self.consumer is not None
        self.metrics.held_records.set(self.backpressure.backlog + self.consumer.held_back)
        if self.committer is not None:
            self.metrics.deferred_outputs.set(self.committer.deferred)
        order = self.backpressure.order
        if order is None:
            return
        exported = self._order_exported
        now = (order.delivered, order.given_up, order.waited_s)
        if now != exported:
            self.metrics.order_waits.labels("delivered").inc(now[0] - exported[0])
            self.metrics.order_waits.labels("gave_up").inc(now[1] - exported[1])
            self.metrics.order_wait_seconds.inc(max(0.0, now[2] - exported[2]))
            self._order_exported = now

    def _poll_timeout_ms(self) -> int:
        """No wait while held records can be processed; while they wait for a partition's next fetch, polls of
        at most ``ORDER_POLL_MS`` until it arrives or the wait is given up; otherwise ``kafka.poll_timeout_ms``
        (``COMMIT_POLL_MS`` while outputs wait for a commit in flight), and exactly-once, with processed records
        not committed yet, no later than their transaction's commit is due."""
        if self.backpressure.ready():
            return 0
        timeout = self.settings.kafka.poll_timeout_ms
        if self.committer is not None and self.committer.deferred:
            timeout = min(timeout, COMMIT_POLL_MS)
        if self._pending_offsets and self.settings.kafka.exactly_once:
            # outputs are read once their transaction commits: a poll waiting for more records must not delay that
            timeout = min(timeout, max(0, math.ceil(self._commit_due_in_s() * 1000)))
        wait_left = self.backpressure.wait_left_s()
        if wait_left is None:
            return timeout
        # short polls while waiting: kafka-python sleeps up to the poll's timeout when nothing is in flight
        return max(1, min(timeout, ORDER_POLL_MS, math.ceil(wait_left * 1000)))

    def _chunk_budget_s(self) -> float | None:
        """Exactly-once: the time left until the next commit is due (at least ``COMMIT_CHUNK_MIN_S``), so that the
        commit is not held up by a long chunk; otherwise ``None`` (backpressure's own budget)."""
        if not self.settings.kafka.exactly_once:
            return None
        return max(COMMIT_CHUNK_MIN_S, self._commit_due_in_s())

    def _commit_due_in_s(self) -> float:
        """Seconds until the periodic commit is due by ``worker.commit_interval_s`` (negative: overdue)."""
        return self._last_commit + self.settings.worker.commit_interval_s - time.monotonic()

    def process(self, batch: Batch) -> None:
        """Run every step over one batch and remember the offsets it allows to commit."""
        started = time.perf_counter()
        self._batch_champion = self.champion_selector.current
        if self._replay_until:
            for record in batch.records:
                if record.offset < self._replay_until.get((record.topic, record.partition), 0):
                    record.already_published = True
        labels_topic = self._labels_topic
        label_records = [r for r in batch.records if r.topic == labels_topic] if labels_topic else []
        events = Batch([r for r in batch.records if r.topic != labels_topic], batch.polled_at) if label_records \
            else batch
        for step in self.steps[:self._model_index]:  # once per batch: their Redis round trips are shared
            step.process(events)
        records = len(events.records)
        whole = self.parts.part_size(records) >= records or self._far_behind(events)
        self._nudge_due = self._nudge_wanted(events, time.monotonic())
        self.parts.run(events, self.steps[self._model_index:], whole=whole)
        next_offsets = events.next_offsets()
        self._processed.update(next_offsets)
        if self.delayed_labels is not None:
            # labels after the events of the same poll (read by then): a label never waits for an event it came with
            label_offsets = self.delayed_labels.resolve(label_records)
            self._processed.update(label_offsets)
            next_offsets.update(label_offsets)
        self._update_champion()
        for tp, offset in next_offsets.items():
            # a replay below the committed offset commits nothing: the commit must never move back (a restart
            # would then publish again what is committed already)
            replay_until = self._replay_until.get(tp, -1)
            if offset > replay_until:
                self._pending_offsets[tp] = offset
            if offset >= replay_until and tp in self._replaying:
                self._replaying.discard(tp)
                log.info("%s caught up with its committed offset %d (learn-only replay done)", tp, replay_until)
        self._events_since_commit += len(batch.records)
        if self.checkpointer is not None:
            self.checkpointer.account(len(batch.records))
        self.metrics.batch_size.observe(len(batch.records))
        self.metrics.processing_seconds.observe(time.perf_counter() - started)
        self._last_batch_done = time.monotonic()

    def _nudge_wanted(self, batch: Batch, now: float) -> bool:
        """A small batch at the head, after the loop waited at least ``kafka.linger_ms`` for it: its outputs would
        wait out the linger alone (where records come closer together, the next ones share the linger's batch;
        the time the previous batch took to process does not count, so a worker busy at a high rate never nudges)."""
        idle = now - self._last_batch_done >= self.settings.kafka.linger_ms / 1000
        return idle and self._small_at_head(batch)

    def _small_at_head(self, batch: Batch) -> bool:
        """At most ``NUDGE_MAX_RECORDS`` records, with nothing held and nothing more on the broker (by the last
        fetch) for their partitions."""
        if not 0 < len(batch.records) <= NUDGE_MAX_RECORDS or self.consumer is None or self.backpressure.backlog:
            return False
        return all(self.consumer.lag(tp) == 0 for tp in {(r.topic, r.partition) for r in batch.records})

    def _maybe_nudge(self) -> None:
        """Send a small batch's outputs now rather than after ``kafka.linger_ms``, unless more records wait."""
        if not self._nudge_due:
            return
        self._nudge_due = False
        if self.committer is not None and self.settings.kafka.linger_ms > 0 and not self.backpressure.ready() \
                and self.committer.nudge():
            self.metrics.producer_nudges.inc()

    def _far_behind(self, batch: Batch) -> bool:
        """More than ``PARTS_MAX_LAG`` polls' worth of records wait behind this batch (held, or on the broker by the
        last fetch): its records wait for that backlog anyway, so parts would cost throughput and save no latency."""
        if self.consumer is None:
            return False
        behind = self.backpressure.backlog
        for tp in {(r.topic, r.partition) for r in batch.records}:
            behind += self.consumer.lag(tp) or 0
        return behind > PARTS_MAX_LAG * self.settings.kafka.max_poll_records

    @property
    def champion(self) -> str:
        """The model whose predictions go to the predictions topic."""
        return self.champion_selector.current

    def _update_champion(self, *, force: bool = False) -> None:
        """Hand the champion what was scored since the last call; export it when it changed (docs/architecture.md,
        "One champion for the group")."""
        labelled, sums = self.score_step.take_labelled(), self.score_step.take_sums()
        if len(self.model_step.model_names) > 1:
            selector = self.champion_selector
            switches = selector.switches
            rolling = self.score_step.rolling(self.settings.champion.metric) if labelled else {}
            if selector.update(labelled, rolling, sums, force=force) is not None:
                self._export_champion()
            if selector.switches > switches:
                self.metrics.champion_switches.inc(selector.switches - switches)

    def _export_champion(self) -> None:
        for name in self.model_step.model_names:
            self.metrics.champion.labels(name).set(1 if name == self.champion else 0)

    def _maybe_pull(self) -> None:
        """Group scope: every ``sync.pull_every_s``, learn what the other workers published since the last look
        (not while this worker holds every partition: no other worker learns until a rebalance restores it)."""
        checkpointer = self.checkpointer
        every = self.settings.sync.pull_every_s
        if checkpointer is None or checkpointer.group is None or every <= 0 or not checkpointer.healthy \
                or checkpointer.group.alone:
            return
        now = time.monotonic()
        if now - self._last_pull < every:
            return
        self._last_pull = now
        model_set = self.model_step.shared_set()
        if model_set is None or self._to_restore:  # a state being restored merges the stream when adopted
            return
        try:
            checkpointer.group.pull(model_set)
        except redis.RedisError as exc:  # the next sync reads them (and backs off while Redis is down)
            self._last_pull = now + PULL_RETRY_S  # not ten warnings a second while Redis is down
            log.warning("reading the group's deltas failed (%s); next try in %.0f s", exc, PULL_RETRY_S)

    def _maybe_commit(self, force: bool = False) -> None:
        due = (
            force
            or self._events_since_commit >= self.settings.worker.commit_every_events
            or time.monotonic() - self._last_commit >= self.settings.worker.commit_interval_s
            or self._sync_due()
        )
        if due and (self._pending_offsets or force):
            self.commit(wait=False)
        elif self.committer is not None:
            try:  # at-least-once: commit what is delivered by now
                self.committer.release()
            except TransportError as exc:
                self._delivery_failure = exc
                raise

    def _sync_due(self) -> bool:
        """Group scope, at-least-once: a sync is due. A sync is a checkpoint, and a checkpoint is taken at a commit:
        waiting for the commit cadence (``worker.commit_interval_s``) would space the syncs by that instead of
        ``sync.every_events``. With exactly-once a commit ends a transaction, so the syncs ride on the transactions
        (docs/architecture.md, "One model per group")."""
        checkpointer = self.checkpointer
        return (checkpointer is not None and checkpointer.group is not None and not self.settings.kafka.exactly_once
                and checkpointer.due())

    def commit(self, *, checkpoint: bool = False, wait: bool = True) -> None:
        """Commit the processed offsets once their outputs are delivered, then checkpoint when due.

        ``wait=False`` (the loop's periodic commits, at-least-once) neither waits for the outputs' delivery (the
        offsets are committed by a later turn of the loop, once delivered) nor for the offset commit's answer. A
        periodic checkpoint due then is snapshotted now and written once every output before it is delivered (or,
        exactly-once, its transaction committed); it may run ahead of the committed offset, which is safe: a
        restore resumes from the checkpoint (docs/architecture.md).
        """
        assert self.committer is not None
        offsets, self._pending_offsets = self._pending_offsets, {}
        checkpoint_due = self.checkpointer is not None and (checkpoint or self.checkpointer.due())
        # a periodic checkpoint taken in the loop is snapshotted now and written once the commit's outputs are durable
        held = self._hold_checkpoint() if checkpoint_due and not (wait or checkpoint) else None
        try:
            if wait or (checkpoint_due and held is None):
                self.committer.commit(offsets, wait=wait)
            else:
                self.committer.commit_when_delivered(offsets, then=held)
        except TransportError as exc:
            self._delivery_failure = exc
            raise
        self.score_step.publish_counts()  # their predictions are delivered (and committed): count them
        self._events_since_commit = 0
        self._last_commit = time.monotonic()
        if self.checkpointer is not None:
            if checkpoint_due and held is None:
                # a periodic checkpoint may go to a forked child; a forced one (revoke, shutdown) is written now
                self._checkpoint(list(self.model_step.sets), background=not checkpoint)
            self.checkpointer.export_age()
        self._update_gauges()

    def _hold_checkpoint(self) -> Callable[[], object] | None:
        """Snapshot the periodic checkpoint now, when it is taken in the loop; what writes it (else ``None``)."""
        assert self.checkpointer is not None
        tps = list(self.model_step.sets)
        offsets = {tp: self._processed[tp] for tp in tps if tp in self._processed}
        if not self.checkpointer.can_hold(offsets):
            return None
        self.checkpointer.hold(offsets, extra=self._label_offsets(tps))
        return self.checkpointer.write_held

    def _checkpoint(self, tps: Sequence[TP], *, background: bool = False) -> None:
        assert self.checkpointer is not None
        if self.model_step.scope == "group":  # one state for every held partition: all of them, each time
            tps = list(self.model_step.sets)
        self.checkpointer.save({tp: self._processed[tp] for tp in tps if tp in self._processed},
                               extra=self._label_offsets(tps), background=background)

    # --- the labels topic (co-partitioned with the events topic; docs/contract.md) --------------------
    @property
    def _labels_topic(self) -> str | None:
        return self.settings.kafka.topics.labels if self.delayed_labels is not None else None

    def _label_offsets(self, tps: Sequence[TP]) -> dict[TP, dict[str, Any]]:
        """Per events partition p, the next offset of labels partition p, checkpointed with p's models."""
        labels = self._labels_topic
        if labels is None:
            return {}
        extra: dict[TP, dict[str, Any]] = {}
        for tp in tps:
            offset = self._processed.get((labels, tp[1]))
            if offset is not None:
                extra[tp] = {"label_offsets": {f"{labels}:{tp[1]}": offset}}
        return extra

    def _restore_label_partitions(self, tps: Sequence[TP], restored: dict[TP, Restored]) -> None:
        """Seek each assigned label partition to the offset checkpointed with its events partition's models.

        Labels read after that offset were learned after the checkpoint, so the restored models learn them
        again (the join hands each out once more, docs/state.md); those below the committed offset are not
        counted again. Without a checkpointed offset the partition resumes from its committed offset; when the
        models are rebuilt from the earliest offset, so are the labels.
        """
        consumer = self.consumer
        assert consumer is not None
        starts: dict[TP, int] = {}
        rebuild: set[int] = set()
        for event_tp, result in restored.items():
            if result.seek_to == -1:
                rebuild.add(event_tp[1])
            for name, offset in (result.extra.get("label_offsets") or {}).items():
                topic, _, partition = name.rpartition(":")
                starts[(topic, int(partition))] = int(offset)
        for tp in tps:
            committed = consumer.committed(tp)
            start: int | None = committed
            if tp[1] in rebuild:
                consumer.seek_to_beginning(tp)
                start = None
            elif tp in starts:
                start = starts[tp]
                consumer.seek(tp, start)
            if start is None:
                start = consumer.position(tp, timeout_ms=5000)
                if start is None:  # unknown yet: the next processed batch sets it
                    log.warning("position of %s unknown", tp)
            if start is not None:
                self._processed[tp] = start
            if committed is not None and committed > (start or 0):
                self._replay_until[tp] = committed
                self._replaying.add(tp)

    def _update_gauges(self) -> None:
        for name, size in self.model_step.memory_bytes().items():
            self.metrics.model_memory.labels(name).set(size)
        for name, keys in self.model_step.sequence_keys().items():
            self.metrics.sequence_keys.labels(name).set(keys)
        consumer = self.consumer
        if consumer is None:
            return
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            position = consumer.position(tp, timeout_ms=100) if high is not None else None
            if high is None or position is None:  # unknown during a rebalance; lag is best-effort
                continue
            self.metrics.consumer_lag.labels(tp[0], str(tp[1])).set(max(0, high - position))

    def on_assigned(self, tps: Sequence[TP]) -> None:
        """Rebalance listener (IO thread): pause the new partitions until the loop has restored them."""
        consumer = self.consumer
        assert consumer is not None
        if tps:
            consumer.pause(tps)
            self._to_restore.extend(tp for tp in tps if tp not in self._to_restore)

    def restore_assigned(self) -> None:
        """Poll loop: restore each newly assigned partition's models, seek to where it resumes, resume it."""
        consumer = self.consumer
        assert consumer is not None
        tps, self._to_restore = self._to_restore, []
        assigned = consumer.assignment()
        tps = [tp for tp in tps if tp in assigned]
        deferred: list[TP] = []
        group_restored: dict[TP, Restored] | None = None
        if self.checkpointer is not None and self.checkpointer.group is not None and tps:
            tps, group_restored = self._restore_group(tps)
            if group_restored is None:
                deferred = [tp for tp in tps if tp[0] != self._labels_topic]
        label_tps = [tp for tp in tps if tp[0] == self._labels_topic]
        restored_by_tp: dict[TP, Restored] = {}
        new_tps: list[TP] = []
        for tp in tps:
            if tp[0] == self._labels_topic or tp in deferred:
                continue
            if self.checkpointer is None:
                self.model_step.assign(tp)
                continue
            committed = consumer.committed(tp)
            if group_restored is not None:
                restored = group_restored[tp]
            else:
                try:
                    restored = self.checkpointer.restore(tp, committed)
                except redis.RedisError as exc:  # Redis down: keep the partition paused and try again later
                    log.warning("cannot restore %s yet (Redis: %s); retrying in %.0f s", tp, exc,
                                self._restore_backoff_s)
                    deferred.append(tp)
                    continue
            restored_by_tp[tp] = restored
            self.model_step.assign(tp, restored.model_set)
            start: int | None
            if restored.seek_to == -1:  # rebuild: from wherever the retained log begins
                consumer.seek_to_beginning(tp)
                start = None
            elif restored.seek_to is not None:
                consumer.seek(tp, restored.seek_to)
                start = restored.seek_to
            else:
                start = committed
            if committed is None and restored.seek_to is None:
                # a partition this group never committed: checkpoint its fresh models at once, so that no commit
                # exists without a checkpoint at or below it (a crash before the first periodic checkpoint would
                # otherwise count as lost state)
                start = consumer.position(tp)
                if start is None:
                    log.warning("position of %s unknown: no initial checkpoint", tp)
                else:
                    new_tps.append(tp)
            if start is not None:
                self._processed[tp] = start
            if restored.replay_until > (start or 0):
                self._replay_until[tp] = restored.replay_until
                self._replaying.add(tp)
        if deferred:
            # a label partition follows its events partition (co-partitioned): both wait
            deferred += [tp for tp in label_tps if tp[1] in {d[1] for d in deferred}]
            tps = [tp for tp in tps if tp not in deferred]
            label_tps = [tp for tp in label_tps if tp not in deferred]
            self._to_restore.extend(tp for tp in deferred if tp not in self._to_restore)
            self._restore_not_before = time.monotonic() + self._restore_backoff_s
            self._restore_backoff_s = min(self._restore_backoff_s * 2, self.settings.checkpoint.max_backoff_s)
        else:
            self._restore_backoff_s = 1.0
        if label_tps:
            self._restore_label_partitions(label_tps, restored_by_tp)
        if new_tps and self.checkpointer is not None:
            self._checkpoint(new_tps)
        if tps:
            consumer.resume(tps)
        self._ready = True
        self.metrics.ready.set(1)
        log.info("assigned %s", sorted(tps))

    def _restore_group(self, tps: list[TP]) -> tuple[list[TP], dict[TP, Restored] | None]:
        """Group scope: restore one model set for the new partitions and those already held (which are
        checkpointed and given up first, so that one state reflects them all); ``None`` while Redis is down."""
        consumer, checkpointer = self.consumer, self.checkpointer
        assert consumer is not None and checkpointer is not None and checkpointer.group is not None
        held = [tp for tp in self.model_step.sets if tp not in tps]
        if held and [tp for tp in tps if tp[0] != self._labels_topic]:
            self.commit(checkpoint=True)
            held_labels = [tp for tp in consumer.assignment() if tp[0] == self._labels_topic and tp not in tps]
            self._forget(held + held_labels)
            consumer.pause(held + held_labels)
            tps = tps + held + held_labels
        events = [tp for tp in tps if tp[0] != self._labels_topic]
        if not events:
            return tps, {}
        checkpointer.group.alone = len(events) == consumer.partition_count(self.settings.kafka.topics.events)
        if checkpointer.group.alone:
            log.info("group scope: this worker holds every partition of %s; it syncs at the checkpoint cadence",
                     self.settings.kafka.topics.events)
        try:
            return tps, checkpointer.restore_group({tp: consumer.committed(tp) for tp in events})
        except redis.RedisError as exc:
            log.warning("cannot restore %s yet (Redis: %s); retrying in %.0f s", events, exc, self._restore_backoff_s)
            return tps, None

    async def on_revoked(self, tps: Sequence[TP]) -> None:
        """Rebalance listener (IO thread): commit what was processed, checkpoint, then let the partitions go."""
        self._to_restore = [tp for tp in self._to_restore if tp not in tps]
        # after a failed delivery nothing is committed or checkpointed, also when close() leaves the group
        if self.committer is not None and self._rewind_reason is None and self._delivery_failure is None:
            offsets, self._pending_offsets = self._pending_offsets, {}
            try:
                await self.committer.commit_in_listener(offsets)
            except TransactionFailed as exc:
                # nothing of the open transaction is visible; the new owner resumes from the last commit
                self._rewind_reason = f"{exc} (on revoke)"
            except TransportError as exc:  # at-least-once: the poll loop stops the worker
                self._delivery_failure = exc
            else:
                self.score_step.publish_counts()
                self._events_since_commit = 0
                self._last_commit = time.monotonic()
                if self.checkpointer is not None:
                    self._checkpoint([tp for tp in tps if tp in self.model_step.sets])
        self._forget(tps)
        if self.model_step.scope == "group" and self.model_step.sets:
            # one state reflects every held partition: the ones kept are restored with the next assignment's
            kept = list(self.model_step.sets)
            self._forget(kept)
            if self.consumer is not None:
                self.consumer.pause(kept)
            self._to_restore.extend(tp for tp in kept if tp not in self._to_restore)
        log.info("revoked %s", sorted(tps))

    def on_lost(self, tps: Sequence[TP]) -> None:
        """Rebalance listener: the group already gave these partitions away; drop their state uncommitted."""
        self._to_restore = [tp for tp in self._to_restore if tp not in tps]
        for tp in tps:
            self._pending_offsets.pop(tp, None)
        if self.committer is not None:
            self.committer.forget(list(tps))
        self._forget(tps)
        if self.settings.kafka.exactly_once and self._rewind_reason is None:
            # the open transaction holds outputs of the lost partitions, which their new owner publishes again
            self._rewind_reason = f"partitions {sorted(tps)} lost"
        log.warning("lost %s (the new owner resumes from the last commit and checkpoint)", sorted(tps))

    def _kafka_unreachable(self, exc: TransportError) -> None:
        """Poll loop: the consumer lost the broker; its clients reconnect by themselves, the loop waits a little."""
        if self._kafka_ok:
            log.warning("Kafka unreachable (%r); reconnecting", exc)
        self._kafka_ok = False
        self.metrics.kafka_up.set(0)
        self._stop.wait(self.settings.kafka.reconnect_backoff_max_ms / 1000)

    def _rewind(self, reason: str) -> None:
        """Exactly-once: give up the open transaction and start every assigned partition again, as on a restart.

        A new producer fences the old one (its open transaction is aborted); each partition's models are restored
        from their checkpoint and the records up to the committed offset are learned again without being published.
        """
        consumer, committer = self.consumer, self.committer
        assert consumer is not None and committer is not None
        log.error("transaction given up (%s): new producer, partitions rewound to their checkpoints", reason)
        self.metrics.transaction_rewinds.inc()
        self.score_step.discard_counts()  # the aborted transaction's predictions are not seen by a reader
        self.metrics.kafka_up.set(0)
        self._kafka_ok = False
        self._rewind_reason = None
        self._ready = False
        self._restore_not_before = 0.0
        committer.reset(lambda: self._stop.is_set())
        tps = sorted(consumer.assignment() | set(self._to_restore))
        self._pending_offsets = {}
        self._events_since_commit = 0
        self._last_commit = time.monotonic()
        self._forget(tps)
        self._to_restore = list(tps)
        if tps:
            consumer.pause(tps)
            for tp in tps:
                if self.checkpointer is None or tp[0] == self._labels_topic:
                    committed = consumer.committed(tp)
                    if committed is not None:
                        consumer.seek(tp, committed)
        self._kafka_ok = True
        self.metrics.kafka_up.set(1)

    def _forget(self, tps: Sequence[TP]) -> None:
        if self.checkpointer is not None:
            self.checkpointer.drop_held(tps)
        self.model_step.revoke(tps)
        self.backpressure.forget(tps)
        if self.delayed_labels is not None:
            self.delayed_labels.forget(tps)
        for tp in tps:
            self._processed.pop(tp, None)
            self._replay_until.pop(tp, None)
            self._replaying.discard(tp)

    def close(self) -> None:
        """Drain: commit what was processed, close the clients and the endpoint."""
        try:
            if self._delivery_failure is not None:
                # a checkpoint now would skip the undelivered outputs on restart; the last commit and checkpoint
                # are where the next owner resumes (and publishes them again)
                log.error("outputs not delivered (%s); stopping without a final commit", self._delivery_failure)
            elif self.committer is not None and self.consumer is not None:
                try:
                    self.commit(checkpoint=True)
                except TransactionFailed as exc:  # aborted: the next owner resumes from the last commit
                    log.error("final commit failed (%s); the next owner resumes from the last commit", exc)
        finally:
            self.score_step.export(force=True)
            self._update_champion(force=True)  # the last scores reach the group's window
            self._ready = False
            self.metrics.ready.set(0)
            if self.consumer is not None:
                self.consumer.close()
                self.consumer = None
            if self.committer is not None:
                self.committer.close()
                self.committer = None
            if self._dedup_window is not None:
                self._dedup_window.close()
            if self.endpoint is not None:
                if self.endpoint.wait_for_scrape(self.settings.metrics.final_scrape_wait_s):
                    log.info("final counters scraped")
                self.endpoint.stop()
                self.endpoint = None
        if self.checkpointer is not None and self.checkpointer.group is not None:
            log.info("group sync: %d pulls learned the other workers' examples between syncs",
                     self.checkpointer.group.pulls)
        log.info("worker stopped")


def _freeze_startup_objects() -> None:
    """Move everything allocated so far (imported modules: torch, River, pydantic; the clients) out of the
    collector's reach. A full collection walked about a million such objects and paused the loop 75-90 ms twice
    every 8 s at 6,000 events/s; objects created from now on are collected as usual."""
    gc.collect()
    gc.freeze()


class TopicLayoutError(RuntimeError):
    """The topics are laid out so that the worker cannot be correct (e.g. labels not co-partitioned)."""


def check_co_partitioned(counts: dict[str, int], events: str, labels: str) -> None:
    """Refuse to start when the labels topic's partition count differs from the events topic's.

    A label is learned by the models of its event's partition, and partition *p* of both topics goes to the same
    worker only when the counts match (docs/contract.md). A topic missing from ``counts`` (not created yet) is not
    judged.
    """
    if events in counts and labels in counts and counts[events] != counts[labels]:
        raise TopicLayoutError(
            f"topic {labels!r} has {counts[labels]} partitions but {events!r} has {counts[events]}: delayed labels "
            "need the same partition count (and labels produced with their event's key) so that each label reaches "
            "the worker holding its event's models; repartition the labels topic, or set labels.enabled: false"
        )
