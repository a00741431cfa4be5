"""Records of several partitions handed to the steps in record-timestamp order (docs/architecture.md, "Partition
order").

A consumer returns the records of one partition at a time: behind on four partitions, one worker reads a fetch's
worth of partition 0 (thousands of records, spanning much of the stream), then partition 1 from its start again.
One model set learning all of them (group scope) would see the stream several times over, a concept change
forth and back at each partition. :class:`TimeOrder` holds the polled records per partition and releases them
merged by timestamp, each partition's records in offset order, like a Kafka Streams task: while a partition has
nothing held but the broker is known to hold more of it (its lag from the last fetch response), nothing is
released until those records arrive, at most ``max_wait_s``. A partition with no lag never holds the others up:
this waits for records already written, never for records not produced yet.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator

from shared.steps.batch import Record

TP = tuple[str, int]
#: the records the broker holds beyond those delivered (``None``: not known yet)
LagProbe = Callable[[TP], "int | None"]
Clock = Callable[[], float]


class TimeOrder:
    """Per-partition queues of polled records, released merged by record timestamp.

    ``ordered_topics``: the topics whose partitions are merged and waited for (the events topic); records of other
    topics (labels) take part in the merge but never hold it up. ``max_wait_s``: how long a partition known to
    lag may hold the others up before they go on without it (until it delivers again).
    """

    def __init__(self, ordered_topics: Collection[str], max_wait_s: float, *, clock: Clock = time.monotonic) -> None:
        self._ordered = frozenset(ordered_topics)
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._queues: dict[TP, deque[tuple[int, int, Record]]] = {}
        self._arrival = itertools.count()
        #: a lagging partition with nothing held: since when the others wait for it
        self._waiting_since: dict[TP, float] = {}
        #: lagging partitions waited for in vain (``max_wait_s``): not waited for again until they deliver
        self._given_up: set[TP] = set()
        self._size = 0
        #: how many times records were held back for a lagging partition, and for how long in all
        self.waits = 0
        self.waited_s = 0.0
        #: how many waits ended with the partition delivering, and without (``max_wait_s`` passed)
        self.delivered = 0
        self.given_up = 0

    def __len__(self) -> int:
        return self._size

    def add(self, records: Iterable[Record]) -> None:
        """Hold polled records (each partition's in offset order, as polled)."""
        for record in records:
            tp = (record.topic, record.partition)
            queue = self._queues.get(tp)
            if queue is None:
                queue = self._queues[tp] = deque()
            queue.append((record.timestamp_ms, next(self._arrival), record))
            self._size += 1
            self._given_up.discard(tp)
            since = self._waiting_since.pop(tp, None)
            if since is not None:
                self.waited_s += max(0.0, self._clock() - since)
                self.delivered += 1

    def held_in(self, tp: TP) -> int:
        """Records of ``tp`` held."""
        queue = self._queues.get(tp)
        return len(queue) if queue else 0

    def awaited(self, candidates: Iterable[TP], lag: LagProbe) -> set[TP]:
        """Of ``candidates`` (assigned, fetching), the ordered partitions with nothing held that the broker holds
        more of (or whose lag is not known yet), waited for less than ``max_wait_s``."""
        now = self._clock()
        waiting: set[TP] = set()
        for tp in candidates:
            if tp[0] not in self._ordered or self.held_in(tp) or tp in self._given_up:
                continue
            behind = lag(tp)
            if behind is not None and behind <= 0:
                self._waiting_since.pop(tp, None)
                continue
            since = self._waiting_since.get(tp)
            if since is None:
                since = self._waiting_since[tp] = now
                self.waits += 1
            if now - since >= self.max_wait_s:
                self._given_up.add(tp)
                self._waiting_since.pop(tp, None)
                self.given_up += 1
                self.waited_s += now - since
                continue
            waiting.add(tp)
        return waiting

    def _lagging(self, tp: TP, lag: LagProbe) -> bool:
        """Whether the broker holds more of ``tp``, an ordered partition with nothing held (no wait starts)."""
        if tp[0] not in self._ordered or tp in self._given_up:
            return False
        behind = lag(tp)
        return behind is None or behind > 0

    def take(self, limit: int, candidates: Collection[TP], lag: LagProbe) -> list[Record]:
        """Up to ``limit`` held records, oldest timestamp first; none while a partition is awaited, and the merge
        stops where a lagging partition runs out (its next record may be older than the other heads)."""
        if not self._size or self.awaited(candidates, lag):
            return []
        heads = [(queue[0][0], queue[0][1], tp) for tp, queue in self._queues.items() if queue]
        heapq.heapify(heads)
        taken: list[Record] = []
        while heads and len(taken) < limit:
            _, _, tp = heapq.heappop(heads)
            queue = self._queues[tp]
            taken.append(queue.popleft()[2])
            if queue:
                heapq.heappush(heads, (queue[0][0], queue[0][1], tp))
            elif tp in candidates and self._lagging(tp, lag):
                break
        self._size -= len(taken)
        return taken

    def forget(self, tps: Iterable[TP]) -> None:
        """Drop the held records of revoked partitions (the next owner reads them again)."""
        for tp in tps:
            queue = self._queues.pop(tp, None)
            if queue:
                self._size -= len(queue)
            self._waiting_since.pop(tp, None)
            self._given_up.discard(tp)

    def wait_left_s(self) -> float | None:
        """Seconds until the longest wait in progress gives up (``None``: nothing is awaited)."""
        if not self._waiting_since:
            return None
        return max(0.0, self.max_wait_s - (self._clock() - min(self._waiting_since.values())))

    def __iter__(self) -> Iterator[Record]:
        """The held records in the order they would be released if nothing were awaited."""
        merged = heapq.merge(*(list(queue) for queue in self._queues.values()), key=lambda item: item[:2])
        return (record for _, _, record in merged)
