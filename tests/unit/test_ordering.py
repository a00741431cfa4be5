"""Time order: the records of several partitions released merged by timestamp, waiting (boundedly) for a
partition the broker holds more of, never for one it does not."""

from __future__ import annotations

from collections.abc import Sequence

from shared.steps.backpressure import Backpressure
from shared.steps.batch import Batch, Record
from shared.steps.ordering import TimeOrder

TP = tuple[str, int]
EVENTS = "events"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Lags:
    """The broker's records beyond those delivered, per partition (``None``: not known yet)."""

    def __init__(self, **lags: int | None) -> None:
        self.lags: dict[TP, int | None] = {(EVENTS, int(p[1:])): v for p, v in lags.items()}

    def __call__(self, tp: TP) -> int | None:
        return self.lags.get(tp, 0)


def _records(partition: int, timestamps: Sequence[int], topic: str = EVENTS, first_offset: int = 0) -> list[Record]:
    return [Record(topic, partition, first_offset + i, None, b"{}", ts) for i, ts in enumerate(timestamps)]


def _ids(records: Sequence[Record]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records]


ALL = {(EVENTS, 0), (EVENTS, 1)}


def test_records_of_two_partitions_come_out_merged_by_timestamp_each_partition_in_offset_order() -> None:
    order = TimeOrder([EVENTS], max_wait_s=0.1, clock=FakeClock())
    order.add(_records(0, [10, 30, 50]))
    order.add(_records(1, [20, 40, 60]))
    taken = order.take(100, ALL, Lags(p0=0, p1=0))
    assert [r.timestamp_ms for r in taken] == [10, 20, 30, 40, 50, 60]
    assert _ids(taken) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert len(order) == 0


def test_equal_timestamps_keep_the_order_polled() -> None:
    order = TimeOrder([EVENTS], max_wait_s=0.1, clock=FakeClock())
    order.add(_records(1, [5, 5]))
    order.add(_records(0, [5]))
    assert _ids(order.take(10, ALL, Lags())) == [(1, 0), (1, 1), (0, 0)]


def test_nothing_is_released_while_a_lagging_partition_has_nothing_held_until_it_delivers() -> None:
    clock = FakeClock()
    order = TimeOrder([EVENTS], max_wait_s=0.2, clock=clock)
    lags = Lags(p0=0, p1=500)
    order.add(_records(0, [100, 200]))
    assert order.take(10, ALL, lags) == []
    assert order.awaited(ALL, lags) == {(EVENTS, 1)}
    clock.now = 0.05
    assert abs((order.wait_left_s() or 0.0) - 0.15) < 1e-9
    order.add(_records(1, [50, 150]))
    taken = order.take(10, ALL, Lags(p0=0, p1=498))
    assert [r.timestamp_ms for r in taken] == [50, 100, 150]  # partition 1 ran out: 200 waits for its next
    assert order.waits == 1 and abs(order.waited_s - 0.05) < 1e-9 and order.given_up == 0


def test_a_partition_with_no_lag_never_holds_the_others_up() -> None:
    order = TimeOrder([EVENTS], max_wait_s=10.0, clock=FakeClock())
    order.add(_records(0, [1, 2, 3]))
    assert _ids(order.take(10, ALL, Lags(p0=0, p1=0))) == [(0, 0), (0, 1), (0, 2)]
    assert order.waits == 0


def test_a_partition_whose_lag_is_not_known_yet_is_waited_for() -> None:
    order = TimeOrder([EVENTS], max_wait_s=1.0, clock=FakeClock())
    order.add(_records(0, [1]))
    assert order.take(10, ALL, Lags(p0=0, p1=None)) == []


def test_the_wait_is_given_up_after_max_wait_and_not_repeated_until_the_partition_delivers() -> None:
    clock = FakeClock()
    order = TimeOrder([EVENTS], max_wait_s=0.2, clock=clock)
    lags = Lags(p0=0, p1=500)
    order.add(_records(0, [1, 2]))
    assert order.take(10, ALL, lags) == []
    clock.now = 0.2
    assert _ids(order.take(10, ALL, lags)) == [(0, 0), (0, 1)]
    assert order.given_up == 1
    order.add(_records(0, [3], first_offset=2))
    assert _ids(order.take(10, ALL, lags)) == [(0, 2)]  # still given up: no new wait
    order.add(_records(1, [4]))
    order.add(_records(0, [5], first_offset=3))
    # partition 1 delivered: it is waited for again once it runs out with the broker holding more
    assert _ids(order.take(10, ALL, lags)) == [(1, 0)]
    assert order.take(10, ALL, lags) == []
    assert order.waits == 2


def test_partitions_not_candidates_and_other_topics_are_never_waited_for() -> None:
    order = TimeOrder([EVENTS], max_wait_s=1.0, clock=FakeClock())
    order.add(_records(0, [3]))
    order.add(_records(0, [1, 2], topic="labels"))
    lags = Lags(p0=0, p1=100)
    # partition 1 paused by someone else (not a candidate), the labels partition lags: neither holds anything up
    taken = order.take(10, {(EVENTS, 0), ("labels", 0)}, lambda tp: 100 if tp[0] == "labels" else lags(tp))
    assert [(r.topic, r.timestamp_ms) for r in taken] == [("labels", 1), ("labels", 2), (EVENTS, 3)]


def test_take_respects_the_limit_and_iteration_shows_the_release_order() -> None:
    order = TimeOrder([EVENTS], max_wait_s=1.0, clock=FakeClock())
    order.add(_records(0, [1, 3, 5]))
    order.add(_records(1, [2, 4]))
    assert [r.timestamp_ms for r in order] == [1, 2, 3, 4, 5]
    assert [r.timestamp_ms for r in order.take(2, ALL, Lags())] == [1, 2]
    assert len(order) == 3 and order.held_in((EVENTS, 0)) == 2 and order.held_in((EVENTS, 1)) == 1


def test_forget_drops_a_revoked_partitions_records_and_its_wait() -> None:
    order = TimeOrder([EVENTS], max_wait_s=1.0, clock=FakeClock())
    order.add(_records(0, [1, 2]))
    order.add(_records(1, [3]))
    order.forget([(EVENTS, 1)])
    assert len(order) == 2 and order.held_in((EVENTS, 1)) == 0
    assert _ids(order.take(10, {(EVENTS, 0)}, Lags(p0=0))) == [(0, 0), (0, 1)]


class LaggingConsumer:
    """Pause/resume bookkeeping and per-partition lag of a consumer (the real ones: integration tests)."""

    def __init__(self, assigned: set[TP], lags: Lags) -> None:
        self.assigned = set(assigned)
        self.lags = lags
        self._paused: set[TP] = set()

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def paused(self) -> set[TP]:
        return set(self._paused)

    def pause(self, tps: Sequence[TP]) -> None:
        self._paused |= set(tps)

    def resume(self, tps: Sequence[TP]) -> None:
        self._paused -= set(tps)

    def lag(self, tp: TP) -> int | None:
        return self.lags(tp)


def test_backpressure_in_time_order_pauses_only_the_partitions_holding_too_much_and_resumes_below_half() -> None:
    clock = FakeClock()
    consumer = LaggingConsumer(ALL, Lags(p0=1000, p1=1000))
    pressure = Backpressure(300_000, budget_s=1.0, clock=clock, order=TimeOrder([EVENTS], 0.2, clock=clock),
                            hold_per_partition=4)
    pressure.attach(consumer)
    pressure.submit(Batch(_records(0, [1, 2, 3, 4, 5]), polled_at=0.0))
    assert not pressure.ready()  # partition 1 lags and has nothing held
    pressure.apply(consumer)
    assert consumer.paused() == {(EVENTS, 0)} and pressure.paused == 1  # partition 1 keeps fetching
    pressure.submit(Batch(_records(1, [2, 6]), polled_at=0.0))
    assert pressure.ready()
    processed: list[Record] = []
    # the first chunk takes up to 16: the merge stops where partition 0 runs out (the broker holds more of it)
    assert pressure.process_next(lambda batch: processed.extend(batch.records)) == 6
    assert _ids(processed) == [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (0, 4)]
    assert pressure.held() == _records(1, [6], first_offset=1)
    pressure.apply(consumer)
    assert consumer.paused() == set()  # nothing held in partition 0: below half the limit
    assert not pressure.ready()  # partition 0 is awaited again


def test_backpressure_in_arrival_order_is_unchanged_without_a_time_order() -> None:
    consumer = LaggingConsumer(ALL, Lags(p0=1000, p1=1000))
    pressure = Backpressure(300_000, budget_s=1.0, clock=FakeClock())
    pressure.submit(Batch(_records(1, [9, 8]) + _records(0, [1]), polled_at=0.0))
    assert pressure.ready()
    processed: list[Record] = []
    pressure.process_next(lambda batch: processed.extend(batch.records))
    assert _ids(processed) == [(1, 0), (1, 1), (0, 0)]
    pressure.apply(consumer)
    assert consumer.paused() == set()
