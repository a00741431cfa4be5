"""Dedup: an event id already seen within the window is marked ``duplicate`` (not predicted, not learned).

One Redis round trip per batch (:class:`~shared.state.dedup.DedupWindow`). Each record's position is passed,
so a record read again after a crash is matched to its own first sighting and processed again, while a true
duplicate (same id, another record) stays a duplicate. ``ScoreStep`` counts duplicates in
``streamlearn_events_total{outcome="duplicate"}``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import redis

from shared.monitoring.metrics import Metrics
from shared.state.dedup import DedupWindow
from shared.state.keys import Position
from shared.steps.batch import Batch

log = logging.getLogger("streamlearn.dedup")


class DedupStep:
    """Marks repeats of an event id within the dedup window as duplicates.

    When Redis fails the step lets the batch through (fail open: predicting twice is better than predicting
    nothing), sets ``streamlearn_redis_up`` to 0 and logs; the next batch tries again.
    """

    def __init__(
        self, window: DedupWindow, metrics: Metrics, *, gauge_interval_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self._metrics = metrics
        self._gauge_interval_s = gauge_interval_s
        self._monotonic = monotonic
        self._last_gauge = -float("inf")

    def process(self, batch: Batch) -> None:
        records = [r for r in batch.records if r.is_valid and r.event is not None]
        if not records:
            return
        ids = [r.event.id for r in records if r.event is not None]
        positions: list[Position] = [(r.topic, r.partition, r.offset) for r in records]
        try:
            first = self.window.check_and_add(ids, positions)
        except redis.RedisError as exc:
            self._metrics.redis_up.set(0)
            log.warning("dedup unavailable (%s): %d events let through unchecked", exc, len(records))
            return
        for record, is_first in zip(records, first, strict=True):
            if not is_first:
                record.duplicate = True
        now = self._monotonic()
        if now - self._last_gauge >= self._gauge_interval_s:
            self._last_gauge = now
            with contextlib.suppress(redis.RedisError):
                self._metrics.dedup_entries.set(self.window.size())
