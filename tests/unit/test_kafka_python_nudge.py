"""kafka-python's nudge: a flush that times out is the expected outcome; anything else is not hidden.

The nudge flushes for at most ``NUDGE_WAIT_S``, so most nudges end in kafka-python's ``KafkaTimeoutError`` while
the records go on being sent. Any other error from the flush is a fault and reaches the loop.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from kafka.errors import KafkaTimeoutError, UnknownError

from shared.kafka.transport import NUDGE_WAIT_S, KafkaPythonProducer


class _Raw:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.timeouts: list[float | None] = []

    def flush(self, timeout: float | None = None) -> None:
        self.timeouts.append(timeout)
        if self.error is not None:
            raise self.error


def test_a_nudge_that_times_out_returns_quietly_after_one_short_flush() -> None:
    raw = _Raw(KafkaTimeoutError("Timeout waiting for future"))
    KafkaPythonProducer(cast(Any, raw)).nudge()
    assert raw.timeouts == [NUDGE_WAIT_S]


def test_a_nudge_whose_flush_fails_otherwise_raises() -> None:
    raw = _Raw(UnknownError("Future not done"))
    with pytest.raises(UnknownError):
        KafkaPythonProducer(cast(Any, raw)).nudge()
