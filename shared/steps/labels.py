"""Delayed labels: predictions of unlabelled events wait in Redis; labels from the labels topic join them.

Two halves, one object (:class:`DelayedLabels`):

* **event side** (``process(batch)``, a step after ``models``): every valid event without an inline label is put
  in the join (:class:`~shared.state.label_join.LabelJoin`) with what learning will need: the features the models
  saw, every model's output, the event's key, time and position. A label that was already held for it joins now.
* **label side** (``resolve(records)``, called by the worker with the label records of a poll): each label is
  decoded, joined, scored on every model's stored output (``ScoreStep.score``) and learned
  (``ModelStep.learn_delayed``) into the model set of the partition its **event** was read from.

Every join is learned exactly once, by positions (docs/state.md): a partition's models learn a join when they read
the second of its two records, that is when the record read now is one side and the other side's offset is below
the position its partition has been read up to (``position``). The join hands itself out again to a record read
again after a restore or a rebalance (``again``); such a hand-out is learned by the same rule, but neither scored
nor counted again. Outcomes go to ``streamlearn_labels_total{outcome}``; nothing here raises on bad labels.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from pydantic import ValidationError

from shared.contract import (
    HEADER_ERROR,
    HEADER_REASON_CODE,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    Label,
)
from shared.learners.base import Output, Row, Target
from shared.monitoring.metrics import Metrics
from shared.state.label_join import JoinedLabel, LabelJoin, PendingPrediction
from shared.steps.batch import Batch, Record, Rejection
from shared.steps.dead_letters import DeadLetterLimitStep
from shared.steps.models import ModelStep
from shared.steps.score import ScoreStep
from shared.steps.semantics import SemanticRules

log = logging.getLogger("streamlearn.labels")

TopicPartition = tuple[str, int]
Send = Callable[[str, bytes, bytes | None, list[tuple[str, bytes]] | None], None]
Observe = Callable[[TopicPartition, int, Mapping[str, Output], Target], None]
Position = Callable[[TopicPartition], int | None]

#: label records larger than this are refused (a label is an id, a value and a time)
MAX_LABEL_BYTES = 4096


def outputs_to_json(outputs: Mapping[str, Output]) -> dict[str, list[Any]]:
    """Model outputs in a JSON-ready form that keeps class types (``True`` stays a boolean, ``1`` an int)."""
    return {name: [o.prediction, [[c, p] for c, p in o.proba.items()], o.score] for name, o in outputs.items()}


def outputs_from_json(data: Mapping[str, Any]) -> dict[str, Output]:
    """The inverse of :func:`outputs_to_json`."""
    return {name: Output(prediction, {c: p for c, p in proba}, score)
            for name, (prediction, proba, score) in data.items()}


def decode_label(value: bytes | None) -> Label:
    """Parse one label record; raise ``ValueError`` with a reason a person can act on."""
    if not value:
        raise ValueError("empty label record: expected a JSON object")
    if len(value) > MAX_LABEL_BYTES:
        raise ValueError(f"label record of {len(value)} bytes exceeds {MAX_LABEL_BYTES}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"label is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"label is a JSON {type(data).__name__}, expected an object")
    try:
        return Label.model_validate(data)
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in err['loc']) or 'label'}: {err['msg']}" for err in exc.errors()[:5]]
        raise ValueError("invalid label: " + "; ".join(parts)) from None


class DelayedLabels:
    """The delayed-label join wired to the models and the scoreboards (see the module docstring).

    ``observe`` (optional) gets every first-time join like an inline label (the drift step's ``observe``).
    ``send`` (optional) dead-letters invalid label records to ``dead_letter_topic`` with the usual headers.
    ``rules`` (optional) refuses labels that do not fit the models' task or whose ``ts`` is out of the window.
    ``limit`` (optional) caps the invalid label records as the events' own cap does (its own window): a batch that
    crosses it raises :class:`~shared.steps.dead_letters.DeadLetterLimitExceeded` before anything of it is sent.
    ``position`` gives, per partition, the next offset its models will read (``None``: nothing read yet); the
    worker counts the events of a batch as read before it resolves the labels of the same batch.
    """

    def __init__(
        self,
        join: LabelJoin,
        models: ModelStep,
        scorer: ScoreStep,
        metrics: Metrics,
        *,
        position: Position,
        observe: Observe | None = None,
        send: Send | None = None,
        dead_letter_topic: str | None = None,
        limit: DeadLetterLimitStep | None = None,
        rules: SemanticRules | None = None,
        max_retry: int = 10_000,
        retry_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        gauge_interval_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.join = join
        self._models = models
        self._position = position
        self._scorer = scorer
        self._metrics = metrics
        self._observe = observe
        self._send = send
        self._dead_letter_topic = dead_letter_topic
        self._limit = limit
        self._rules = rules
        self._max_retry = max_retry
        self._retry_backoff_s = retry_backoff_s
        self._max_backoff_s = max_backoff_s
        self._gauge_interval_s = gauge_interval_s
        self._monotonic = monotonic
        self._last_gauge = -float("inf")
        #: pending predictions whose put failed (Redis down): retried before the next put, bounded
        self._retry: list[PendingPrediction] = []
        #: labels whose resolve failed (Redis down): retried with the next call, bounded
        self._deferred: list[_LabelRecord] = []
        self._backoff_s = 0.0
        #: while Redis failed recently, label records are not tried before this (monotonic) time
        self.retry_at = -float("inf")
        for outcome in ("joined", "held", "late", "orphan", "duplicate", "invalid", "misrouted"):
            metrics.labels.labels(outcome)

    # --- event side -------------------------------------------------------------------------------
    def process(self, batch: Batch) -> None:
        """Put the batch's unlabelled predictions in the join; learn the ones whose label was held."""
        items = [self._pending(r) for r in batch.records if r.is_valid and r.pending_label and r.event is not None]
        if self._retry:
            items, self._retry = self._retry + items, []
        if not items:
            self._export_size()
            return
        try:
            result = self.join.put_pending(items)
        except redis.RedisError as exc:
            self._keep_for_retry(items, exc)
            return
        self._redis_ok()
        self._metrics.join_evictions.inc(result.evicted)
        if result.orphaned:
            self._metrics.labels.labels("orphan").inc(result.orphaned)
        if result.already_joined:
            log.info("%d events whose label was already joined were seen again (not stored)",
                     len(result.already_joined))
        self._apply(result.joined, reading="event")
        self._export_size()

    @staticmethod
    def _pending(record: Record) -> PendingPrediction:
        event = record.event
        assert event is not None
        return PendingPrediction(
            event_id=event.id, topic=record.topic, partition=record.partition, offset=record.offset,
            features=dict(record.features or {}), key=event.key,
            event_ts=event.ts if event.ts is not None else record.timestamp_ms / 1000.0,
            outputs=outputs_to_json(record.outputs),
        )

    def _keep_for_retry(self, items: list[PendingPrediction], exc: Exception) -> None:
        self._metrics.redis_up.set(0)
        dropped = max(0, len(items) - self._max_retry)
        self._retry = items[dropped:]
        if dropped:
            self._metrics.join_evictions.inc(dropped)
        log.warning("label join unavailable (%s): %d predictions kept in memory for retry, %d dropped",
                    exc, len(self._retry), dropped)

    # --- label side -------------------------------------------------------------------------------
    def resolve(self, records: Sequence[Record]) -> dict[TopicPartition, int]:
        """Join, score and learn the labels of ``records`` (label-topic records, in offset order per partition).

        Returns, per label partition seen (now or deferred earlier), the offset up to which it may be committed.
        When Redis fails, the valid labels are kept in memory (at most ``max_retry``) and tried again with the
        next call after a backoff; their partitions are not committed past the first of them meanwhile.
        """
        outcomes: Counter[str] = Counter()
        fresh: list[_LabelRecord] = []
        for record in records:
            try:
                label = decode_label(record.value)
            except ValueError as exc:
                record.rejection = Rejection("invalid_label", str(exc))
                continue
            if self._rules is not None:
                record.rejection = self._rules.check_label(label.label) or self._rules.check_ts(label.ts)
                if record.rejection is not None:
                    continue
            fresh.append(_LabelRecord(record.topic, record.partition, record.offset, label.id, label.label,
                                      label.ts, record.already_published))
        if self._limit is not None and records:
            self._limit.process(Batch(list(records), 0.0))  # raises past the cap, before any dead letter is sent
        for record in records:
            if record.rejection is not None and not record.already_published:
                outcomes["invalid"] += 1
                self._dead_letter(record, record.rejection)
        offsets = _next_offsets(records)
        todo, self._deferred = self._deferred + fresh, []
        if todo and self._monotonic() >= self.retry_at:
            try:
                result = self.join.resolve_labels([(r.event_id, r.label, r.label_ts) for r in todo],
                                                  [(r.topic, r.partition, r.offset) for r in todo])
            except redis.RedisError as exc:
                self._metrics.redis_up.set(0)
                self._backoff_s = min(max(self._retry_backoff_s, self._backoff_s * 2), self._max_backoff_s)
                self.retry_at = self._monotonic() + self._backoff_s
                log.warning("label join unavailable (%s): %d labels kept for a retry in %.1f s",
                            exc, len(todo), self._backoff_s)
                self._defer(todo)
            else:
                self._redis_ok()
                self._metrics.join_evictions.inc(result.evicted)
                outcomes["orphan"] += result.orphaned
                # Outcomes of label records read again after a restart were counted the first time.
                counted = {r.event_id for r in todo if not r.replayed}
                for outcome, ids in (("held", result.held), ("duplicate", result.duplicates),
                                     ("late", result.late)):
                    outcomes[outcome] += sum(1 for event_id in ids if event_id in counted)
                self._apply(result.joined, reading="label")
        elif todo:
            self._defer(todo)
        for outcome, n in outcomes.items():
            if n:
                self._metrics.labels.labels(outcome).inc(n)
        for r in todo:
            offsets[(r.topic, r.partition)] = max(offsets.get((r.topic, r.partition), 0), r.offset + 1)
        capped: dict[TopicPartition, int] = {}
        for r in self._deferred:
            capped[(r.topic, r.partition)] = min(capped.get((r.topic, r.partition), r.offset), r.offset)
        offsets.update(capped)
        self._export_size()
        return offsets

    def _defer(self, todo: list[_LabelRecord]) -> None:
        dropped = max(0, len(todo) - self._max_retry)
        if dropped:
            self._metrics.join_evictions.inc(dropped)
            log.error("%d labels dropped: more than %d waiting for Redis", dropped, self._max_retry)
        self._deferred = todo[dropped:]

    def forget(self, tps: Sequence[TopicPartition]) -> None:
        """Drop the deferred labels of revoked partitions (their new owner reads them from the commit)."""
        gone = set(tps)
        self._deferred = [r for r in self._deferred if (r.topic, r.partition) not in gone]

    def _dead_letter(self, record: Record, rejection: Rejection) -> None:
        log.debug("invalid label at %s[%d]@%d: %s", record.topic, record.partition, record.offset, rejection.reason)
        if self._send is None or self._dead_letter_topic is None:
            return
        headers = [
            (HEADER_ERROR, rejection.reason.encode("utf-8")),
            (HEADER_REASON_CODE, rejection.code.encode("utf-8")),
            (HEADER_SOURCE_TOPIC, record.topic.encode("utf-8")),
            (HEADER_SOURCE_PARTITION, str(record.partition).encode("ascii")),
            (HEADER_SOURCE_OFFSET, str(record.offset).encode("ascii")),
        ]
        self._send(self._dead_letter_topic, record.value or b"", record.key, headers)
        self._metrics.dead_letters.labels(rejection.code).inc()

    # --- both sides -------------------------------------------------------------------------------
    def _read_before(self, tp: TopicPartition, offset: int) -> bool:
        """Whether the models of this worker have read ``tp`` past ``offset`` (their state reflects that record)."""
        position = self._position(tp)
        return position is not None and offset < position

    def _apply(self, joined: Sequence[JoinedLabel], *, reading: str) -> None:
        """Score and count first joins; learn each join whose other side was read before, in order, into its event
        partition's model set. ``reading`` is the side read now: ``event`` or ``label``."""
        if not joined:
            return
        rows: dict[TopicPartition, list[Row]] = {}
        targets: dict[TopicPartition, list[Target]] = {}
        outcomes: Counter[str] = Counter()
        for item in joined:
            pending = item.pending
            tp = (pending.topic, pending.partition)
            if tp not in self._models.sets:
                outcomes["misrouted"] += 1
                log.warning("label for %s joined, but its event's partition %s[%d] is not owned by this worker: "
                            "not learned (produce labels with the event's key; docs/contract.md)",
                            pending.event_id, pending.topic, pending.partition)
                continue
            if not item.again:
                outputs = outputs_from_json(pending.outputs)
                self._scorer.score(outputs, item.label)
                if self._observe is not None:
                    self._observe(tp, pending.offset, outputs, item.label)
                outcomes["joined"] += 1
            if reading == "event":
                other = item.label_position
                learn = other is None or self._read_before((other[0], other[1]), other[2])
            else:
                learn = self._read_before(tp, pending.offset)
            if learn:
                rows.setdefault(tp, []).append(Row(pending.features, pending.key))
                targets.setdefault(tp, []).append(item.label)
        for tp, tp_rows in rows.items():
            self._models.learn_delayed(tp, tp_rows, targets[tp])
            for name in self._models.sets[tp].learners:
                self._metrics.learned.labels(name).inc(len(tp_rows))
        for outcome, n in outcomes.items():
            self._metrics.labels.labels(outcome).inc(n)

    def _redis_ok(self) -> None:
        self._backoff_s = 0.0
        self.retry_at = -float("inf")

    def _export_size(self) -> None:
        now = self._monotonic()
        if now - self._last_gauge < self._gauge_interval_s:
            return
        self._last_gauge = now
        with contextlib.suppress(redis.RedisError):
            sizes = self.join.sizes()
            self._metrics.join_entries.set(sizes.pending)
            self._metrics.join_held.set(sizes.held)

    def export_size(self) -> None:
        """Refresh the join-size gauges now (pending predictions and held labels, one round trip)."""
        self._last_gauge = -float("inf")
        self._export_size()


@dataclass(frozen=True, slots=True)
class _LabelRecord:
    """A decoded label and where it was read."""

    topic: str
    partition: int
    offset: int
    event_id: str
    label: Target
    label_ts: float | None
    #: read again after a restart (below the committed offset): its outcome was counted before
    replayed: bool


def _next_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = (record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets
