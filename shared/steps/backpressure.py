"""Backpressure for the poll loop: process a polled batch in time-bounded chunks, and pause the partitions
while a backlog is held, so that slow training never keeps the loop from calling ``poll()`` within
``max.poll.interval.ms``. Nothing here sleeps.

The loop hands each polled batch to :meth:`Backpressure.submit` and calls :meth:`Backpressure.process_next`
once per iteration. ``process_next`` runs the oldest held records through the worker's ``process`` function,
as many as the measured cost per record lets fit in the time budget (at least one). While records are still
held, :meth:`Backpressure.apply` pauses the consumer's assigned partitions (only those it was not asked to
pause by someone else) and the loop keeps polling with no wait: the group sees a live member, no new records
arrive, and the held ones are processed next. When the backlog is empty the paused partitions are resumed.
Chunks are prefixes of the batch, so every committed offset still follows processed records only.

With a :class:`~shared.steps.ordering.TimeOrder` (``worker.partition_order: time``) the held records
are released merged by timestamp across partitions instead, each partition's in offset order (chunks are then
prefixes of each partition's records), and a partition is paused only while it holds ``hold_per_partition``
records or more: the partitions it waits for keep fetching.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from shared.steps.batch import Batch, Record, Step
from shared.steps.ordering import TimeOrder

TP = tuple[str, int]
Clock = Callable[[], float]

#: the share of ``max.poll.interval.ms`` one chunk may take, and the upper bound of a chunk's time
BUDGET_FRACTION = 0.1
MAX_BUDGET_S = 1.0
#: weight of the newest measurement in the running cost per record
SMOOTHING = 0.3


class PausableConsumer(Protocol):
    """The part of :class:`~shared.kafka.transport.EventConsumer` that backpressure uses."""

    def assignment(self) -> set[TP]: ...
    def paused(self) -> set[TP]: ...
    def pause(self, tps: Sequence[TP]) -> None: ...
    def resume(self, tps: Sequence[TP]) -> None: ...
    def lag(self, tp: TP) -> int | None: ...


class GaugeLike(Protocol):
    """A Prometheus gauge without labels."""

    def set(self, value: float) -> None: ...


class Backpressure:
    """Holds the records polled but not yet processed, and decides how many to process per loop iteration.

    ``budget_s`` bounds the time of one :meth:`process_next` call (from the measured cost per record; a
    single record is always processed, however slow). ``max_poll_interval_ms`` gives the default budget:
    a tenth of it, at most one second.
    """

    def __init__(
        self,
        max_poll_interval_ms: int,
        *,
        budget_s: float | None = None,
        clock: Clock = time.perf_counter,
        paused_gauge: GaugeLike | None = None,
        order: TimeOrder | None = None,
        hold_per_partition: int = 500,
    ) -> None:
        default = min(MAX_BUDGET_S, BUDGET_FRACTION * max_poll_interval_ms / 1000.0)
        self.budget_s = default if budget_s is None else budget_s
        if self.budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s}")
        self._clock = clock
        self._gauge = paused_gauge
        self._held: deque[Record] = deque()
        self._polled_at = 0.0
        #: running estimate of the seconds one record costs (None until measured)
        self.seconds_per_record: float | None = None
        #: partitions this object paused (and will resume)
        self._paused: set[TP] = set()
        #: time order: the held records, per partition; ``None``: one queue in the order polled
        self.order = order
        self._hold_per_partition = max(1, hold_per_partition)
        self._consumer: PausableConsumer | None = None

    def attach(self, consumer: PausableConsumer) -> None:
        """The consumer whose assignment, pauses and lag the time order consults."""
        self._consumer = consumer

    @property
    def backlog(self) -> int:
        """Records polled and not processed yet."""
        return len(self.order) if self.order is not None else len(self._held)

    def ready(self) -> bool:
        """Whether :meth:`process_next` has records to release now (not only records waiting for a partition)."""
        if self.order is None:
            return bool(self._held)
        return bool(self.order) and not self.order.awaited(self._candidates(), self._lag)

    def wait_left_s(self) -> float | None:
        """Time order: seconds until a partition waited for is given up (``None``: none is)."""
        return None if self.order is None else self.order.wait_left_s()

    def _candidates(self) -> set[TP]:
        """The partitions the time order may wait for: assigned, and not paused by someone else."""
        consumer = self._consumer
        if consumer is None:
            return set()
        return consumer.assignment() - (consumer.paused() - self._paused)

    def _lag(self, tp: TP) -> int | None:
        return None if self._consumer is None else self._consumer.lag(tp)

    @property
    def paused(self) -> int:
        """Partitions currently paused by backpressure."""
        return len(self._paused)

    def submit(self, batch: Batch) -> None:
        """Hold a polled batch's records (after any still held) until they are processed."""
        if self.order is not None:
            self.order.add(batch.records)
        else:
            self._held.extend(batch.records)
        self._polled_at = batch.polled_at

    def chunk_size(self, budget_s: float | None = None) -> int:
        """How many held records the next :meth:`process_next` takes (at most), in ``budget_s`` (default: the
        budget given at construction; never more than it)."""
        held = self.backlog
        if not held:
            return 0
        if self.seconds_per_record is None or self.seconds_per_record <= 0:
            # first chunk: measure on a small one rather than risk a whole slow batch
            return min(held, 16)
        budget = self.budget_s if budget_s is None else min(self.budget_s, budget_s)
        return max(1, min(held, int(budget / self.seconds_per_record)))

    def process_next(self, process: Callable[[Batch], None], budget_s: float | None = None) -> int:
        """Run the next chunk of held records through ``process``, taking at most ``budget_s`` by the measured cost
        per record (default and upper bound: the constructor's budget); return how many it took (0: none held)."""
        size = self.chunk_size(budget_s)
        if size == 0:
            return 0
        if self.order is not None:
            records = self.order.take(size, self._candidates(), self._lag)
            if not records:
                return 0
            size = len(records)
        else:
            records = [self._held.popleft() for _ in range(size)]
        started = self._clock()
        process(Batch(records=records, polled_at=self._polled_at))
        per_record = max(0.0, self._clock() - started) / size
        previous = self.seconds_per_record
        self.seconds_per_record = (
            per_record if previous is None else SMOOTHING * per_record + (1.0 - SMOOTHING) * previous
        )
        return size

    def apply(self, consumer: PausableConsumer) -> None:
        """Pause the assigned partitions while a backlog is held; resume the ones paused here once it is gone.

        Time order: pause a partition while it holds ``hold_per_partition`` records or more, resume it below half."""
        if self.order is not None:
            self._apply_per_partition(consumer, self.order)
        elif self._held:
            assigned = set(consumer.assignment())
            already = set(consumer.paused())
            self._paused &= assigned
            to_pause = assigned - already - self._paused
            if to_pause:
                consumer.pause(sorted(to_pause))
                self._paused |= to_pause
        elif self._paused:
            to_resume = self._paused & set(consumer.assignment())
            if to_resume:
                consumer.resume(sorted(to_resume))
            self._paused.clear()
        if self._gauge is not None:
            self._gauge.set(len(self._paused))

    def _apply_per_partition(self, consumer: PausableConsumer, order: TimeOrder) -> None:
        assigned = set(consumer.assignment())
        already = set(consumer.paused())
        self._paused &= assigned
        to_pause = [tp for tp in assigned - already - self._paused if order.held_in(tp) >= self._hold_per_partition]
        to_resume = [tp for tp in self._paused if order.held_in(tp) < max(1, self._hold_per_partition // 2)]
        if to_pause:
            consumer.pause(sorted(to_pause))
            self._paused.update(to_pause)
        if to_resume:
            consumer.resume(sorted(to_resume))
            self._paused.difference_update(to_resume)
        if self._gauge is not None:
            self._gauge.set(len(self._paused))

    def forget(self, tps: Iterable[TP]) -> None:
        """Drop the held records of revoked or lost partitions (the next owner reads them again)."""
        gone = set(tps)
        if not gone:
            return
        if self.order is not None:
            self.order.forget(gone)
        self._held = deque(r for r in self._held if (r.topic, r.partition) not in gone)
        self._paused = {tp for tp in self._paused if tp not in gone}

    def held(self) -> Sequence[Record]:
        """The records held, oldest first (for tests and diagnostics)."""
        return list(self.order) if self.order is not None else list(self._held)




#: the steps from the model step on take about this long per part of a batch (by their measured cost per record)
PART_BUDGET_S = 0.005
#: ... but a part has at least this many records, and a batch is cut in at most ``MAX_PARTS``: each part pays the
#: steps' fixed costs once (the scoreboards, the drift monitors, a torch model's forward pass)
MIN_PART = 32
MAX_PARTS = 4


class Parts:
    """Runs the steps from the model step on over a batch in parts of about ``budget_s`` each (at least
    ``min_part`` records, at most ``max_parts`` parts), in the batch's order, so that a large batch (the backlog
    after a stall of the broker or the loop) publishes its first predictions before its last ones are computed:
    its oldest records then wait for one part, not for the whole batch. The steps before the model step run once
    over the whole batch (their Redis round trips shared by all of it); a batch smaller than a part goes whole, and
    the first batch too (nothing measured yet).
    """

    def __init__(self, budget_s: float = PART_BUDGET_S, *, min_part: int = MIN_PART, max_parts: int = MAX_PARTS,
                 clock: Clock = time.perf_counter) -> None:
        if budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        self.budget_s = budget_s
        self.min_part = max(1, min_part)
        self.max_parts = max(1, max_parts)
        self._clock = clock
        #: running estimate of the seconds the steps take per record (None until measured)
        self.seconds_per_record: float | None = None
        #: batches run in more than one part so far
        self.split_batches = 0

    def part_size(self, records: int) -> int:
        """Records per part of a batch of ``records`` (all of them while nothing is measured yet)."""
        if not self.seconds_per_record:
            return records
        return max(self.min_part, -(-records // self.max_parts), int(self.budget_s / self.seconds_per_record))

    def run(self, batch: Batch, steps: Sequence[Step], *, whole: bool = False) -> int:
        """Run ``steps`` over ``batch`` part by part (``whole``: in one part); return the number of parts."""
        records = batch.records
        size = len(records) if whole else self.part_size(len(records))
        parts = 0
        for start in range(0, max(1, len(records)), max(1, size)):
            part = batch if size >= len(records) else Batch(records[start:start + size], batch.polled_at)
            started = self._clock()
            for step in steps:
                step.process(part)
            if part.records:
                per_record = max(0.0, self._clock() - started) / len(part.records)
                previous = self.seconds_per_record
                self.seconds_per_record = (
                    per_record if previous is None else SMOOTHING * per_record + (1.0 - SMOOTHING) * previous
                )
            parts += 1
        self.split_batches += parts > 1
        return parts
