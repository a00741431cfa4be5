"""The ``replay`` merge: a learner's delta is the labelled examples it learned since the last sync.

In ``sync.scope: group`` a learner in replay mode records every example it learns from its own partitions (the
cleaned features, the entity key and the target, JSON-encoded at once: nothing of the caller's is kept). At a
sync the recorded examples are its delta (one JSON document; each distinct list of feature names is stored once),
and the other members' deltas are learned, in stream order, with the recording paused, so nothing is published
twice. Every member thus learns the whole stream: its own examples at once, the others' within one sync interval
(docs/models.md, "Merging across workers").

The buffer is bounded: at most ``max_examples`` examples wait for the next sync; beyond that an example is still
learned locally but not recorded, and counted in :attr:`ReplayLog.dropped` (a sync that keeps failing). It is
held compressed: every :data:`BLOCK_BYTES` of JSON are deflated (zlib level 1: about half the bytes of numeric
features, a sixth of Phishing's, for 0.3 to 3 µs an example), so that the buffer beside a small model stays small.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from shared.learners.base import Row, Target

#: what a replay delta starts with (the version of its layout; :func:`examples` reads every version listed)
FORMAT = 2
READABLE_FORMATS = (1, 2)
#: feature names are strings (the cleaned features of a decoded JSON event): a name of another type fails loudly
#: rather than coming back as a string, a different feature
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
#: at most this many distinct feature-name lists per sync interval are kept once; examples with other names are
#: recorded with their names (sparse features: bounded memory)
MAX_SCHEMAS = 64
#: the recorded JSON is deflated in blocks of about this many bytes (the open block stays plain)
BLOCK_BYTES = 4096


class ReplayLog:
    """The examples a learner learned since its last sync, encoded, at most ``max_examples`` of them.

    One JSON array, deflated block by block: each example is ``[key, target, schema, [values]]``, its feature
    names stored once per distinct list of names (the *schemas*), or ``[key, target, {name: value}]`` beyond
    :data:`MAX_SCHEMAS`.
    """

    __slots__ = ("_blocks", "_buffer", "_count", "_schema_bytes", "_schemas", "dropped", "max_examples", "muted",
                 "paused")

    def __init__(self, max_examples: int) -> None:
        if max_examples < 1:
            raise ValueError(f"max_examples must be at least 1, got {max_examples}")
        self.max_examples = max_examples
        self._blocks: list[bytes] = []
        self._buffer = bytearray()
        self._count = 0
        self._schemas: dict[tuple[str, ...], int] = {}
        self._schema_bytes = 0
        #: examples learned but not recorded because the buffer was full (never reset: a running total)
        self.dropped = 0
        #: while merging the other members' examples: they are learned, never recorded
        self.paused = False
        #: while this member is alone in its group (it holds every partition): nobody would read them
        self.muted = False

    def __len__(self) -> int:
        return self._count

    def record(self, row: Row, target: Target | None) -> None:
        """Remember one learned example (a no-op while paused or muted; counted as dropped when full)."""
        if self.paused or self.muted:
            return
        if self._count >= self.max_examples:
            self.dropped += 1
            return
        features = row.features
        names = tuple(features)
        schema = self._schemas.get(names)
        if schema is None and len(self._schemas) < MAX_SCHEMAS:
            schema = self._schemas[names] = len(self._schemas)
            self._schema_bytes += sys.getsizeof(names) + sum(len(name) + 8 for name in names)
        if schema is None:
            item = orjson.dumps([row.key, target, features], option=_DUMPS_OPTIONS)
        else:
            item = orjson.dumps([row.key, target, schema, list(features.values())], option=_DUMPS_OPTIONS)
        if self._count:
            self._buffer += b","
        self._buffer += item
        self._count += 1
        if len(self._buffer) >= BLOCK_BYTES:
            self._blocks.append(zlib.compress(self._buffer, 1))
            self._buffer = bytearray()

    def delta(self) -> bytes:
        """The recorded examples as one JSON document (what :meth:`Learner.sync_delta` returns)."""
        schemas = orjson.dumps(list(self._schemas))
        body = b"".join([*(zlib.decompress(block) for block in self._blocks), self._buffer])
        return b'{"replay":%d,"schemas":%s,"examples":[%s]}' % (FORMAT, schemas, body)

    def clear(self) -> None:
        """Forget the recorded examples (they were published with a sync)."""
        self._blocks = []
        self._buffer = bytearray()
        self._count = 0
        self._schemas = {}
        self._schema_bytes = 0

    def memory_bytes(self) -> int:
        """The deflated blocks, the open block (with what it over-allocates) and the feature names kept once."""
        return (sys.getsizeof(self._blocks) + sum(sys.getsizeof(block) for block in self._blocks)
                + sys.getsizeof(self._buffer) + sys.getsizeof(self._schemas) + self._schema_bytes)


def examples(delta: bytes) -> Iterator[tuple[Row, Target | None]]:
    """The examples of a replay delta, in the order they were learned."""
    payload: Any = orjson.loads(delta)
    if not isinstance(payload, dict) or payload.get("replay") not in READABLE_FORMATS:
        raise ValueError("not a replay delta")
    schemas = payload.get("schemas", [])
    for item in payload["examples"]:
        if len(item) == 4:
            key, target, schema, values = item
            features = dict(zip(schemas[schema], values, strict=True))
        else:
            key, target, features = item
            features = dict(features)
        yield Row(features, None if key is None else str(key)), target


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
