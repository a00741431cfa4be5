"""A cap on dead-lettering: a bad deploy upstream must stop the worker loudly, not fill the DLQ silently."""

from __future__ import annotations

from collections import deque

from shared.settings import LimitSettings
from shared.steps.batch import Batch


class DeadLetterLimitExceeded(RuntimeError):
    """Too many records in a row, or too large a share of recent records, were invalid."""


class DeadLetterLimitStep:
    """Counts rejections after decoding and raises :class:`DeadLetterLimitExceeded` past the configured limits.

    The batch that crosses a limit is neither published nor committed (the worker stops before either), so a
    restarted worker meets the same records again: the operator has to fix the producer or raise the limit.
    """

    def __init__(self, limits: LimitSettings) -> None:
        self._max_ratio = limits.dead_letter_max_ratio
        self._max_consecutive = limits.dead_letter_max_consecutive
        self._window: deque[bool] = deque(maxlen=limits.dead_letter_window)
        self._invalid_in_window = 0
        self._consecutive = 0

    def process(self, batch: Batch) -> None:
        window = self._window
        for record in batch.records:
            invalid = record.rejection is not None
            if len(window) == window.maxlen and window[0]:
                self._invalid_in_window -= 1
            window.append(invalid)
            self._invalid_in_window += invalid
            self._consecutive = self._consecutive + 1 if invalid else 0
            self._check(record.topic, record.partition, record.offset)

    def _check(self, topic: str, partition: int, offset: int) -> None:
        where = f"at {topic}[{partition}]@{offset}"
        if self._max_consecutive is not None and self._consecutive > self._max_consecutive:
            raise DeadLetterLimitExceeded(
                f"{self._consecutive} invalid records in a row {where} (limits.dead_letter_max_consecutive="
                f"{self._max_consecutive}): stopping instead of dead-lettering the stream; check the producers "
                "and the events topic's schema, or raise the limit"
            )
        window = self._window
        if self._max_ratio is not None and len(window) == window.maxlen:
            ratio = self._invalid_in_window / len(window)
            if ratio > self._max_ratio:
                raise DeadLetterLimitExceeded(
                    f"{ratio:.0%} of the last {len(window)} records were invalid {where} "
                    f"(limits.dead_letter_max_ratio={self._max_ratio}): stopping instead of dead-lettering the "
                    "stream; check the producers and the events topic's schema, or raise the limit"
                )
