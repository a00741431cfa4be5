"""Backpressure: time-bounded chunks, partitions paused while a backlog is held, resumed after, no sleeping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from shared.steps.backpressure import Backpressure, Parts
from shared.steps.batch import Batch, Record

TP = tuple[str, int]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RecordingConsumer:
    """Only the pause/resume bookkeeping of a consumer (the real one is exercised by the integration tests)."""

    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = set(assigned)
        self._paused: set[TP] = set()
        self.calls: list[tuple[str, tuple[TP, ...]]] = []

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def paused(self) -> set[TP]:
        return set(self._paused)

    def pause(self, tps: Sequence[TP]) -> None:
        self.calls.append(("pause", tuple(tps)))
        self._paused |= set(tps)

    def resume(self, tps: Sequence[TP]) -> None:
        self.calls.append(("resume", tuple(tps)))
        self._paused -= set(tps)


@dataclass
class Gauge:
    value: float = -1.0

    def set(self, value: float) -> None:
        self.value = value


def _batch(partition: int, offsets: range, topic: str = "events") -> Batch:
    records = [Record(topic, partition, o, None, b"{}", 0) for o in offsets]
    return Batch(records=records, polled_at=123.0)


def test_default_budget_is_a_tenth_of_the_poll_interval_capped_at_one_second() -> None:
    assert Backpressure(10_000).budget_s == pytest.approx(1.0)
    assert Backpressure(300_000).budget_s == pytest.approx(1.0)
    assert Backpressure(5_000).budget_s == pytest.approx(0.5)
    with pytest.raises(ValueError, match="budget_s"):
        Backpressure(10_000, budget_s=0.0)


def test_slow_processing_is_split_into_chunks_within_the_budget() -> None:
    clock = FakeClock()
    bp = Backpressure(300_000, budget_s=0.5, clock=clock)
    bp.submit(_batch(0, range(100)))
    seen: list[list[int]] = []

    def slow(batch: Batch) -> None:  # 0.1 s a record
        seen.append([r.offset for r in batch.records])
        clock.now += 0.1 * len(batch.records)
        assert batch.polled_at == 123.0

    assert bp.process_next(slow) == 16, "the first chunk is small: the cost is not known yet"
    assert bp.seconds_per_record == pytest.approx(0.1)
    assert bp.process_next(slow) == 5, "0.5 s budget / 0.1 s a record"
    while bp.backlog:
        before = clock.now
        bp.process_next(slow)
        assert clock.now - before <= 0.5 + 1e-9
    assert [o for chunk in seen for o in chunk] == list(range(100)), "every record once, in order"
    assert bp.process_next(slow) == 0


def test_a_single_record_is_processed_even_when_it_exceeds_the_budget() -> None:
    clock = FakeClock()
    bp = Backpressure(300_000, budget_s=0.01, clock=clock)
    bp.submit(_batch(0, range(18)))

    def very_slow(batch: Batch) -> None:
        clock.now += 1.0 * len(batch.records)

    assert bp.process_next(very_slow) == 16
    assert bp.process_next(very_slow) == 1
    assert bp.process_next(very_slow) == 1
    assert bp.process_next(very_slow) == 0


def test_a_call_s_budget_shortens_the_chunk_but_never_lengthens_it() -> None:
    clock = FakeClock()
    bp = Backpressure(300_000, budget_s=0.5, clock=clock)
    bp.submit(_batch(0, range(100)))

    def slow(batch: Batch) -> None:  # 1/128 s a record (exact in binary)
        clock.now += len(batch.records) / 128

    assert bp.process_next(slow, 0.0625) == 16, "the first chunk measures the cost, whatever the budget"
    assert bp.process_next(slow, 0.0625) == 8, "0.0625 s / (1/128 s a record)"
    assert bp.process_next(slow, 0.0) == 1, "a budget already spent still takes one record"
    assert bp.process_next(slow, 10.0) == 64, "the constructor's 0.5 s bounds a longer one"
    assert bp.process_next(slow, None) == 11, "the rest"


def test_fast_processing_takes_whole_batches() -> None:
    clock = FakeClock()
    bp = Backpressure(300_000, budget_s=1.0, clock=clock)
    bp.submit(_batch(0, range(16)))
    bp.process_next(lambda b: setattr(clock, "now", clock.now + 0.0001 * len(b.records)))
    bp.submit(_batch(0, range(16, 516)))
    assert bp.process_next(lambda b: None) == 500


def test_partitions_are_paused_while_a_backlog_is_held_and_resumed_after() -> None:
    clock = FakeClock()
    gauge = Gauge()
    tp0, tp1, restoring = (("events", p) for p in (0, 1, 2))
    consumer = RecordingConsumer({tp0, tp1, restoring})
    consumer.pause([restoring])  # paused by someone else (a partition being restored): left alone
    consumer.calls.clear()
    bp = Backpressure(300_000, budget_s=0.2, clock=clock, paused_gauge=gauge)
    bp.submit(_batch(0, range(50)))

    def slow(batch: Batch) -> None:
        clock.now += 0.1 * len(batch.records)

    bp.process_next(slow)
    bp.apply(consumer)
    assert consumer.paused() == {tp0, tp1, restoring}
    assert consumer.calls == [("pause", (tp0, tp1))]
    assert bp.paused == 2 and gauge.value == 2
    bp.apply(consumer)
    assert len(consumer.calls) == 1, "already paused: not paused again"

    while bp.backlog:
        bp.process_next(slow)
    bp.apply(consumer)
    assert consumer.calls[-1] == ("resume", (tp0, tp1))
    assert consumer.paused() == {restoring}, "a partition paused by someone else stays paused"
    assert bp.paused == 0 and gauge.value == 0


def test_forget_drops_the_records_of_revoked_partitions() -> None:
    clock = FakeClock()
    bp = Backpressure(300_000, budget_s=1.0, clock=clock)
    bp.submit(_batch(0, range(5)))
    bp.submit(_batch(1, range(5)))
    tp0, tp1 = ("events", 0), ("events", 1)
    consumer = RecordingConsumer({tp0, tp1})
    bp.apply(consumer)
    assert bp.paused == 2
    bp.forget([("events", 0)])
    assert [(r.partition, r.offset) for r in bp.held()] == [(1, o) for o in range(5)]
    consumer.assigned = {tp1}
    processed: list[int] = []
    while bp.backlog:
        bp.process_next(lambda b: processed.extend(r.partition for r in b.records))
    bp.apply(consumer)
    assert processed == [1] * 5
    assert consumer.calls[-1] == ("resume", (tp1,)), "a revoked partition is not resumed"


class TimedStep:
    """A step that records the offsets of each batch it sees and advances the clock by a cost per record."""

    def __init__(self, clock: FakeClock, seconds_per_record: float) -> None:
        self.clock, self.cost = clock, seconds_per_record
        self.seen: list[list[int]] = []

    def process(self, batch: Batch) -> None:
        self.seen.append([r.offset for r in batch.records])
        self.clock.now += self.cost * len(batch.records)
        assert batch.polled_at == 123.0


def test_parts_run_a_large_batch_in_time_bounded_parts_in_order_after_the_first_batch() -> None:
    clock = FakeClock()
    parts = Parts(0.005, min_part=8, max_parts=5, clock=clock)
    model, publish = TimedStep(clock, 0.0001), TimedStep(clock, 0.0)  # 0.1 ms a record: 50 records in 5 ms
    assert parts.run(_batch(0, range(200)), [model, publish]) == 1, "nothing measured yet: the batch goes whole"
    assert parts.seconds_per_record == pytest.approx(0.0001)
    assert parts.run(_batch(0, range(200, 400)), [model, publish]) == 4
    assert parts.run(_batch(0, range(400, 900)), [model, publish]) == 5, "at most max_parts"
    assert [len(offsets) for offsets in model.seen] == [200, 50, 50, 50, 50, 100, 100, 100, 100, 100]
    assert publish.seen == model.seen, "every step sees each part before the next part starts"
    assert [o for offsets in model.seen for o in offsets] == list(range(900)), "every record once, in order"
    assert parts.split_batches == 2
    assert parts.run(_batch(0, range(900, 1400)), [model, publish], whole=True) == 1
    assert parts.split_batches == 2


def test_parts_leave_small_batches_whole_and_keep_a_minimum_size() -> None:
    clock = FakeClock()
    parts = Parts(0.005, min_part=32, max_parts=10, clock=clock)
    slow = TimedStep(clock, 0.001)  # 1 ms a record: 5 records would fit the budget, the minimum is 32
    parts.run(_batch(0, range(10)), [slow])
    assert parts.run(_batch(0, range(10, 40)), [slow]) == 1, "a batch smaller than a part goes whole"
    assert parts.run(_batch(0, range(40, 140)), [slow]) == 4
    assert [len(offsets) for offsets in slow.seen] == [10, 30, 32, 32, 32, 4]
    empty = TimedStep(clock, 0.001)
    assert parts.run(_batch(0, range(0)), [empty]) == 1 and empty.seen == [[]], "an empty batch still runs once"
    with pytest.raises(ValueError, match="budget_s"):
        Parts(0.0)
