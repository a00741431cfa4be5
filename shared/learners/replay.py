"""The ``replay`` merge: a learner's delta is the labelled examples it learned since the last sync.

In ``sync.scope: group`` a learner in replay mode records every example it learns from its own partitions (the
cleaned features, the entity key and the target, JSON-encoded at once: nothing of the caller's is kept). At a
sync the recorded examples are its delta, and the other members' deltas are learned, in stream order, with the
recording paused, so nothing is published twice. Every member thus learns the whole stream: its own examples at
once, the others' within one sync interval (docs/models.md, "Merging across workers").

The buffer is bounded: at most ``max_examples`` examples wait for the next sync; beyond that an example is still
learned locally but not recorded, and counted in :attr:`ReplayLog.dropped` (a sync that keeps failing).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from shared.learners.base import Row, Target

#: what a replay delta starts with (the version of its layout)
FORMAT = 1
#: feature names are strings (the cleaned features of a decoded JSON event): a name of another type fails loudly
#: rather than coming back as a string, a different feature
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class ReplayLog:
    """The examples a learner learned since its last sync, encoded, at most ``max_examples`` of them."""

    __slots__ = ("_bytes", "_items", "dropped", "max_examples", "paused")

    def __init__(self, max_examples: int) -> None:
        if max_examples < 1:
            raise ValueError(f"max_examples must be at least 1, got {max_examples}")
        self.max_examples = max_examples
        self._items: list[bytes] = []
        self._bytes = 0
        #: examples learned but not recorded because the buffer was full (never reset: a running total)
        self.dropped = 0
        #: while merging the other members' examples: they are learned, never recorded
        self.paused = False

    def __len__(self) -> int:
        return len(self._items)

    def record(self, row: Row, target: Target | None) -> None:
        """Remember one learned example (a no-op while paused; counted as dropped when full)."""
        if self.paused:
            return
        if len(self._items) >= self.max_examples:
            self.dropped += 1
            return
        item = orjson.dumps([row.key, target, row.features], option=_DUMPS_OPTIONS)
        self._items.append(item)
        self._bytes += len(item)

    def delta(self) -> bytes:
        """The recorded examples as one JSON document (what :meth:`Learner.sync_delta` returns)."""
        return b'{"replay":%d,"examples":[%s]}' % (FORMAT, b",".join(self._items))

    def clear(self) -> None:
        """Forget the recorded examples (they were published with a sync)."""
        self._items = []
        self._bytes = 0

    def memory_bytes(self) -> int:
        """The encoded examples plus the list that holds them (about 33 bytes of object header each)."""
        return self._bytes + 56 + len(self._items) * (8 + 33)


def examples(delta: bytes) -> Iterator[tuple[Row, Target | None]]:
    """The examples of a replay delta, in the order they were learned."""
    payload: Any = orjson.loads(delta)
    if not isinstance(payload, dict) or payload.get("replay") != FORMAT:
        raise ValueError("not a replay delta")
    for key, target, features in payload["examples"]:
        yield Row(dict(features), None if key is None else str(key)), target


def learn_replayed(learner: Any, log: ReplayLog, others: Sequence[tuple[bytes, int]]) -> int:
    """Learn the examples of the other members' deltas (in order) with recording paused; how many were learned."""
    learned = 0
    log.paused = True
    try:
        for delta, _ in others:
            rows: list[Row] = []
            targets: list[Target | None] = []
            for row, target in examples(delta):
                rows.append(row)
                targets.append(target)
            if rows:
                learner.learn_many(rows, targets)
                learned += len(rows)
    finally:
        log.paused = False
    return learned
