"""Per-entity features: rolling aggregates of the event's ``key`` from Redis, added to the cleaned features.

Runs after ``clean`` and before ``models``. Each event gets its entity's aggregates as of before the event
(:class:`~shared.state.entities.EntityStore`), so its own label can never leak into its features. Positions are
passed, so a record read again after a crash gets the same answer and is applied once (docs/state.md).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import redis

from shared.monitoring.metrics import Metrics
from shared.settings import EntitySettings
from shared.state.entities import EntityEvent, EntityFeatureSpec, EntityStore
from shared.state.keys import Position
from shared.steps.batch import Batch, Record

log = logging.getLogger("streamlearn.entities")


def entity_spec(settings: EntitySettings) -> EntityFeatureSpec:
    """The store's specification from the ``entities`` settings."""
    return EntityFeatureSpec(
        fields=tuple(settings.fields), last_n=settings.last_n, last_seconds=settings.last_seconds,
        max_entities=settings.max_entities, max_history=settings.max_history, prefix=settings.prefix,
    )


def event_time(record: Record) -> float:
    """The event's ``ts``, else the Kafka record timestamp (seconds)."""
    if record.event is not None and record.event.ts is not None:
        return record.event.ts
    return record.timestamp_ms / 1000.0


class EntityFeaturesStep:
    """Adds ``<prefix>*`` aggregates to ``record.features`` of every valid event that has a ``key``.

    A feature of the event with the same name is overwritten (the prefix should not clash with input names).
    When Redis fails the batch goes on without entity features (logged, ``streamlearn_redis_up`` 0).
    """

    def __init__(
        self, store: EntityStore, metrics: Metrics, *, gauge_interval_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._metrics = metrics
        self._gauge_interval_s = gauge_interval_s
        self._monotonic = monotonic
        self._last_gauge = -float("inf")

    def process(self, batch: Batch) -> None:
        records = [r for r in batch.records if r.is_valid and r.event is not None and r.event.key is not None]
        if not records:
            return
        events: list[EntityEvent] = []
        positions: list[Position] = []
        for record in records:
            assert record.event is not None
            # the cleaned features (PII dropped or hashed), even when cleaning left none
            features = record.features if record.features is not None else record.event.features
            events.append((record.event.key, event_time(record), features))
            positions.append((record.topic, record.partition, record.offset))
        evicted_before = self.store.evicted_total
        try:
            aggregates = self.store.update_and_get(events, positions)
        except redis.RedisError as exc:
            self._metrics.redis_up.set(0)
            log.warning("entity features unavailable (%s): %d events go on without them", exc, len(records))
            return
        if self.store.evicted_total > evicted_before:
            self._metrics.entity_evictions.inc(self.store.evicted_total - evicted_before)
        for record, values in zip(records, aggregates, strict=True):
            if values:
                features = dict(record.features) if record.features is not None else {}
                features.update(values)
                record.features = features
        now = self._monotonic()
        if now - self._last_gauge >= self._gauge_interval_s:
            self._last_gauge = now
            with contextlib.suppress(redis.RedisError):
                self._metrics.entity_keys.set(self.store.size())
