"""When and how the worker saves and restores its partitions' model sets.

Order of operations (docs/architecture.md, "Commit semantics"): the Kafka commit goes first, then the
snapshot of the same batch boundary goes to Redis. A checkpoint therefore never reflects more than Kafka has
committed, and after a crash the worker replays the gap (checkpoint offset to committed offset) learning
without publishing again.

How often (``checkpoint.*``): after a commit, when ``every_events`` events or ``every_seconds`` seconds have passed
since the last attempt, but never so often that snapshots take more than ``max_time_fraction`` of the worker's
time: a checkpoint that took *t* seconds (snapshot and Redis write) makes the next one wait at least
*t* / ``max_time_fraction`` seconds from its start. Cheap models (a linear model's snapshot is well under a
millisecond) keep the event/second cadence; a large forest is checkpointed less often, at the price of a longer
learn-only replay after a crash (nothing is lost or published twice: see above). Forced checkpoints (assignment,
revoke, shutdown) are not deferred.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.learners.registry import restore_learner
from shared.monitoring.metrics import Metrics
from shared.settings import CheckpointSettings
from shared.state.checkpoints import CheckpointStore, PartitionCheckpoint, SnapshotRejected
from shared.steps.models import ModelSet, ModelStep

log = logging.getLogger("streamlearn.checkpoint")

TP = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Restored:
    """The outcome of assigning one partition: its model set, where to resume, and the replay boundary."""

    model_set: ModelSet
    #: seek here before polling (``None``: resume from the committed offset as usual)
    seek_to: int | None
    #: records below this offset were already published: learn them, publish nothing
    replay_until: int
    #: the restored checkpoint's ``extra`` (e.g. ``label_offsets``: the label partitions' next offsets)
    extra: dict[str, Any] = field(default_factory=dict)


class Checkpointer:
    """Saves model sets with their offsets every N events or T seconds, and restores them on assignment."""

    def __init__(
        self, store: CheckpointStore, models: ModelStep, settings: CheckpointSettings, metrics: Metrics, *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._models = models
        self._settings = settings
        self._metrics = metrics
        self._monotonic = monotonic
        self._events_since = 0
        self._last_attempt = monotonic()
        self._last_success: float | None = None
        self._backoff_s = 0.0
        #: the duty-cycle bound: no periodic checkpoint before this monotonic time (see the module docstring)
        self._not_before = 0.0
        #: how long the last checkpoint took (snapshot + Redis), seconds
        self.last_duration_s = 0.0
        self._store_started: float | None = None
        self.healthy = True

    def account(self, events: int) -> None:
        """Count events processed since the last checkpoint."""
        self._events_since += events

    def due(self) -> bool:
        """Whether the next commit should be followed by a checkpoint.

        ``every_events`` or ``every_seconds`` since the last attempt, unless Redis is being backed off or the
        duty-cycle bound (``max_time_fraction``) defers it.
        """
        now = self._monotonic()
        if now - self._last_attempt < self._backoff_s or now < self._not_before:
            return False
        return (self._events_since >= self._settings.every_events
                or now - self._last_attempt >= self._settings.every_seconds)

    @property
    def not_before(self) -> float:
        """The monotonic time before which no periodic checkpoint is due (the duty-cycle bound)."""
        return self._not_before

    def _timed(self, started: float, stored: bool) -> None:
        """Record how long the attempt that began at ``started`` took, and the next earliest periodic one.

        A failed Redis write does not count (it is mostly waiting, and the backoff spaces the retries): only the
        snapshots taken before it do.
        """
        ended = self._monotonic() if stored or self._store_started is None else self._store_started
        duration = max(0.0, ended - started)
        self.last_duration_s = duration
        self._not_before = started + duration / self._settings.max_time_fraction

    def save(self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None = None) -> bool:
        """Snapshot the model sets of ``offsets``' partitions (next offsets to process) in one transaction.

        ``extra`` adds small JSON-ready state per partition (the worker's label-partition offsets).

        Returns ``False`` (and backs off) when Redis is unavailable; the worker keeps predicting.
        """
        started = self._last_attempt = self._monotonic()
        self._store_started = None
        stored = False
        try:
            stored = self._save(offsets, extra)
            return stored
        finally:
            self._timed(started, stored)

    def _save(self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None) -> bool:
        states: dict[TP, PartitionCheckpoint] = {}
        for tp, offset in offsets.items():
            model_set = self._models.sets.get(tp)
            if model_set is None:
                continue
            states[tp] = PartitionCheckpoint(
                models={name: (learner.kind, learner.snapshot()) for name, learner in model_set.learners.items()},
                next_offset=offset,
                extra={**(extra or {}).get(tp, {}), "learned": dict(model_set.learned)},
            )
        if not states:
            return True
        self._store_started = self._monotonic()
        try:
            self._store.save(states)
        except Exception as exc:  # Redis down or failing: keep serving, retry with backoff
            self._metrics.checkpoints.labels("failed").inc()
            self._metrics.redis_up.set(0)
            self._backoff_s = min(max(1.0, self._backoff_s * 2), self._settings.max_backoff_s)
            self.healthy = False
            log.warning("checkpoint failed (%s); retrying in %.0f s", exc, self._backoff_s)
            return False
        self._metrics.checkpoints.labels("ok").inc()
        self._metrics.redis_up.set(1)
        self._backoff_s = 0.0
        self._events_since = 0
        self._last_success = time.time()
        self.healthy = True
        return True

    def probe(self) -> bool:
        """Ping Redis and export the answer (``streamlearn_redis_up``, :attr:`healthy`); used at start-up."""
        up = self._store.ping()
        self._metrics.redis_up.set(1 if up else 0)
        self.healthy = up
        if not up:
            log.warning("Redis does not answer; predictions go on, checkpoints will be retried")
        return up

    def _redis_answered(self) -> None:
        self._metrics.redis_up.set(1)
        self.healthy = True

    def export_age(self) -> None:
        """Refresh the checkpoint-age gauge."""
        if self._last_success is not None:
            self._metrics.checkpoint_age.set(time.time() - self._last_success)

    def restore(self, tp: TP, committed: int | None) -> Restored:
        """The model set for a newly assigned partition, and where to resume reading it."""
        try:
            checkpoint = self._store.load(*tp)
        except redis.RedisError:
            self._metrics.redis_up.set(0)
            self.healthy = False
            raise
        except SnapshotRejected as exc:
            self._redis_answered()
            self._metrics.snapshots_rejected.labels(exc.reason).inc()
            log.error("checkpoint of %s refused (%s): %s; applying on_state_lost=%s",
                      tp, exc.reason, exc, self._settings.on_state_lost)
            checkpoint = None
        else:
            self._redis_answered()
        if checkpoint is not None:
            learners = {
                name: restore_learner(kind, data) for name, (kind, data) in checkpoint.models.items()
            }
            expected = set(self._models.model_names)
            if set(learners) == expected:
                model_set = ModelSet(learners, dict(checkpoint.extra.get("learned", {})))
                replay_until = committed if committed is not None else checkpoint.next_offset
                log.info("restored %s at offset %d (committed %s)", tp, checkpoint.next_offset, committed)
                return Restored(model_set, checkpoint.next_offset, max(replay_until, checkpoint.next_offset),
                                dict(checkpoint.extra))
            log.error("checkpoint of %s holds models %s but the settings declare %s: starting fresh models",
                      tp, sorted(learners), sorted(expected))
        if committed is None:
            return Restored(self._models.fresh_set(), None, 0)
        self._metrics.state_lost.inc()
        if self._settings.on_state_lost == "rebuild":
            log.error("no usable checkpoint for %s although Kafka committed offset %d: rebuilding the models "
                      "from the earliest retained offset (learning only, nothing republished)", tp, committed)
            return Restored(self._models.fresh_set(), -1, committed)
        log.error("no usable checkpoint for %s although Kafka committed offset %d: starting fresh models "
                  "from the committed offset (on_state_lost=fresh)", tp, committed)
        return Restored(self._models.fresh_set(), None, committed)
