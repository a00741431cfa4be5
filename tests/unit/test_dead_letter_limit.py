"""The dead-letter cap: a ratio over a sliding window, and a run of consecutive invalid records."""

from __future__ import annotations

import pytest

from shared.settings import LimitSettings
from shared.steps.batch import Batch, Record, Rejection
from shared.steps.dead_letters import DeadLetterLimitExceeded, DeadLetterLimitStep


def _batch(pattern: str, start: int = 0) -> Batch:
    records = []
    for i, char in enumerate(pattern):
        record = Record(topic="events", partition=0, offset=start + i, key=None, value=b"", timestamp_ms=0)
        if char == "x":
            record.rejection = Rejection("schema", "bad")
        records.append(record)
    return Batch(records=records, polled_at=0.0)


def test_ratio_at_the_limit_passes_and_above_it_stops() -> None:
    step = DeadLetterLimitStep(LimitSettings(dead_letter_max_ratio=0.5, dead_letter_window=10))
    step.process(_batch("x.x.x.x.x." * 5))  # exactly 50% in every full window
    with pytest.raises(DeadLetterLimitExceeded, match=r"60% of the last 10 records.*events\[0\]@51"):
        step.process(_batch("xx", start=50))


def test_window_slides_so_old_bad_records_are_forgotten() -> None:
    step = DeadLetterLimitStep(LimitSettings(dead_letter_max_ratio=0.5, dead_letter_window=10))
    step.process(_batch("xxxxx" + "." * 100))
    step.process(_batch("xxxxx....."))  # the first five bad ones slid out long ago


def test_not_judged_before_the_window_is_full() -> None:
    step = DeadLetterLimitStep(LimitSettings(dead_letter_max_ratio=0.5, dead_letter_window=10))
    step.process(_batch("xxxxxxxxx"))  # 9 of 9 bad, but the window holds 10
    with pytest.raises(DeadLetterLimitExceeded):
        step.process(_batch("x"))


def test_consecutive_limit() -> None:
    step = DeadLetterLimitStep(LimitSettings(dead_letter_max_ratio=None, dead_letter_max_consecutive=3))
    step.process(_batch("xxx.xxx.xxx."))
    with pytest.raises(DeadLetterLimitExceeded, match="4 invalid records in a row"):
        step.process(_batch("xxxx"))


def test_no_limits_never_stops() -> None:
    step = DeadLetterLimitStep(LimitSettings(dead_letter_max_ratio=None, dead_letter_max_consecutive=None))
    step.process(_batch("x" * 5000))
