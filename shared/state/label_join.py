"""The delayed-label join: predictions wait in Redis for their label, labels that come first wait for the event.

Every call is one Lua script (one round trip, atomic), so a label is joined at most once even when two workers
resolve the same id. All collections are bounded by count and by age. Layout and rules: docs/state.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from shared.learners.base import Features, Target
from shared.state.keys import KeySpace, Position, split_positions

_TRIM_LIMIT = 5_000

_LUA_COMMON = """
local now = tonumber(ARGV[1])
local pending_cutoff = tonumber(ARGV[2])
local early_cutoff = tonumber(ARGV[3])
local joined_expiry = ARGV[4]
local seen_expiry = ARGV[5]
local max_pending = tonumber(ARGV[6])
local max_early = tonumber(ARGV[7])
local max_joined, max_seen = tonumber(ARGV[8]), tonumber(ARGV[10])
local trim_limit = tonumber(ARGV[9])
local pending, pending_at, early, early_at = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local joined, seen, joined_data = KEYS[5], KEYS[6], KEYS[7]

local function live(zset, id, floor)
  local score = redis.call('ZSCORE', zset, id)
  return score and tonumber(score) >= floor
end

local function marker_live(zset, id)
  local score = redis.call('ZSCORE', zset, id)
  return score and tonumber(score) > now
end

local function split(record)
  local at = string.find(record, '\\n', 1, true)
  return string.sub(record, 1, at - 1), string.sub(record, at + 1)
end

local function drop(hash, zset, ids)
  for i = 1, #ids, 500 do
    local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
    redis.call('ZREM', zset, unpack(chunk))
    if hash then redis.call('HDEL', hash, unpack(chunk)) end
  end
  return #ids
end

local function trim_below(hash, zset, bound)
  return drop(hash, zset, redis.call('ZRANGEBYSCORE', zset, '-inf', bound, 'LIMIT', 0, trim_limit))
end

local function evict_oldest(hash, zset, max)
  local excess = redis.call('ZCARD', zset) - max
  if excess <= 0 then return 0 end
  return drop(hash, zset, redis.call('ZRANGE', zset, 0, excess - 1))
end

local function maintain()
  local expired = trim_below(pending, pending_at, '(' .. ARGV[2])
  local evicted = evict_oldest(pending, pending_at, max_pending)
  local orphaned = trim_below(early, early_at, '(' .. ARGV[3]) + evict_oldest(early, early_at, max_early)
  trim_below(joined_data, joined, ARGV[1])
  evict_oldest(joined_data, joined, max_joined)
  trim_below(false, seen, ARGV[1])
  evict_oldest(false, seen, max_seen)
  return {expired, evicted, orphaned}
end

local function record_join(id, label_record, pending_record)
  redis.call('ZADD', joined, joined_expiry, id)
  redis.call('HSET', joined_data, id, ARGV[1] .. '\\n' .. label_record .. '\\n' .. pending_record)
  redis.call('ZADD', seen, seen_expiry, id)
end

local function joined_parts(id)
  local record = redis.call('HGET', joined_data, id)
  if not record then return false end
  local joined_at, after = split(record)
  local label_position, rest = split(after)
  local label, pending_record = split(rest)
  local pending_position, payload = split(pending_record)
  return {label_position, label, pending_position, payload, joined_at}
end

local function hand_out(out, ...)
  for _, value in ipairs({...}) do table.insert(out, value) end
end
"""

_PUT_SCRIPT = _LUA_COMMON + """
local matched, already_joined = {}, {}
local orphaned_now = 0
for i = 11, #ARGV, 3 do
  local id, position, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if marker_live(joined, id) then
    local parts = joined_parts(id)
    if parts and position ~= '' and parts[3] == position then
      hand_out(matched, id, parts[2], parts[1], '1')
    else
      table.insert(already_joined, id)
    end
  elseif live(early_at, id, early_cutoff) and redis.call('HEXISTS', early, id) == 1 then
    local label_record = redis.call('HGET', early, id)
    local label_position, label = split(label_record)
    drop(early, early_at, {id})
    record_join(id, label_record, position .. '\\n' .. payload)
    hand_out(matched, id, label, label_position, '')
  elseif redis.call('HEXISTS', pending, id) == 0 then
    if redis.call('ZSCORE', early_at, id) then
      orphaned_now = orphaned_now + drop(early, early_at, {id})
    end
    redis.call('HSET', pending, id, position .. '\\n' .. payload)
    redis.call('ZADD', pending_at, ARGV[1], id)
    redis.call('ZADD', seen, seen_expiry, id)
  end
end
local counts = maintain()
return {matched, already_joined, counts[1], counts[2], counts[3] + orphaned_now}
"""

_RESOLVE_SCRIPT = _LUA_COMMON + """
local joined_out, duplicates, late, held = {}, {}, {}, {}
local orphaned_now = 0
for i = 11, #ARGV, 3 do
  local id, position, label = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local label_record = position .. '\\n' .. label
  local pending_score = redis.call('ZSCORE', pending_at, id)
  if marker_live(joined, id) then
    local parts = joined_parts(id)
    if parts and position ~= '' and parts[1] == position then
      hand_out(joined_out, id, parts[4], '1')
    else
      table.insert(duplicates, id)
    end
  elseif pending_score and tonumber(pending_score) >= pending_cutoff and redis.call('HEXISTS', pending, id) == 1 then
    local pending_record = redis.call('HGET', pending, id)
    local _, payload = split(pending_record)
    drop(pending, pending_at, {id})
    record_join(id, label_record, pending_record)
    hand_out(joined_out, id, payload, '')
  elseif pending_score then
    drop(pending, pending_at, {id})
    table.insert(late, id)
  elseif marker_live(seen, id) then
    table.insert(late, id)
  elseif live(early_at, id, early_cutoff) then
    table.insert(duplicates, id)
  else
    if redis.call('ZSCORE', early_at, id) then
      orphaned_now = orphaned_now + 1
    end
    redis.call('HSET', early, id, label_record)
    redis.call('ZADD', early_at, ARGV[1], id)
    table.insert(held, id)
  end
end
local counts = maintain()
return {joined_out, duplicates, late, held, counts[1], counts[2], counts[3] + orphaned_now}
"""


@dataclass(frozen=True, slots=True)
class PendingPrediction:
    """What the worker knew when it predicted an event whose label is still to come."""

    event_id: str
    topic: str
    partition: int
    offset: int
    #: the features the models saw (learning must use the same ones)
    features: Features
    key: str | None
    event_ts: float | None
    #: small, JSON-ready outputs per model (prediction, probabilities, score)
    outputs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps([self.event_id, self.topic, self.partition, self.offset, self.features, self.key,
                             self.event_ts, self.outputs])

    @classmethod
    def from_json(cls, data: bytes) -> PendingPrediction:
        event_id, topic, partition, offset, features, key, event_ts, outputs = orjson.loads(data)
        return cls(event_id, topic, partition, offset, features, key, event_ts, outputs)


@dataclass(frozen=True, slots=True)
class JoinedLabel:
    """A prediction and its label. The event's position is in ``pending``; which reader learns it: docs/state.md."""

    pending: PendingPrediction
    label: Target
    label_ts: float | None
    #: where the label record was read (``None`` when it was resolved without positions)
    label_position: Position | None = None
    #: a join made before, handed out again to a record read again (its outcome was counted then)
    again: bool = False


@dataclass(frozen=True, slots=True)
class PutResult:
    """The outcome of :meth:`LabelJoin.put_pending`."""

    #: predictions whose label was already held: joined now, not stored
    joined: list[JoinedLabel]
    #: event ids whose label was joined before (a re-sent event): not stored again
    already_joined: list[str]
    #: pending predictions dropped to keep within ``max_entries`` (their label will count as late)
    evicted: int
    #: pending predictions dropped because they waited longer than ``ttl_s``
    expired: int
    #: held labels dropped unmatched (older than ``early_label_ttl_s`` or over the bound): orphans
    orphaned: int


@dataclass(frozen=True, slots=True)
class JoinResult:
    """The outcome of :meth:`LabelJoin.resolve_labels`; every label lands in exactly one list."""

    joined: list[JoinedLabel]
    #: labels with no prediction yet: held for ``early_label_ttl_s``
    held: list[str]
    #: labels for an event already joined, or a second label held for the same event
    duplicates: list[str]
    #: labels whose prediction was seen but expired or was evicted before the label came
    late: list[str]
    evicted: int
    expired: int
    orphaned: int


@dataclass(frozen=True, slots=True)
class JoinSizes:
    """Entries in the join's bounded collections (expired ones go at the next put or resolve)."""

    pending: int
    held: int


def _label_payload(label: Target, label_ts: float | None) -> bytes:
    return orjson.dumps([label, label_ts])


def _label_from_payload(data: bytes) -> tuple[Target, float | None]:
    label, label_ts = orjson.loads(data)
    return label, label_ts


def _position(value: bytes | str) -> Position | None:
    """``topic:partition:offset`` (topic names have no colon) as a position; ``None`` for an empty string."""
    if not value:
        return None
    topic, partition, offset = _text(value).rsplit(":", 2)
    return topic, int(partition), int(offset)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LabelJoin:
    """Pending predictions and early labels of one consumer group under ``<namespace>:<group>:join:``.

    ``ttl_s``: how long a prediction waits for its label. ``early_label_ttl_s``: how long a label waits for its
    event. ``max_entries`` bounds the pending predictions (oldest evicted first); ``max_held`` (default
    ``max_entries``) the held labels. A joined record (``joined_marker_ttl_s``, default ``ttl_s``; at most
    ``max_joined``, default ``max_entries``) flags duplicate labels and keeps the join for records read again; a seen
    marker (``late_marker_ttl_s``, default ``4 * ttl_s``; at most ``max_seen``, default ``4 * max_entries``)
    tells a late label (its prediction was dropped) from one that is merely early.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        group: str,
        ttl_s: float,
        max_entries: int,
        early_label_ttl_s: float,
        *,
        max_held: int | None = None,
        joined_marker_ttl_s: float | None = None,
        late_marker_ttl_s: float | None = None,
        max_joined: int | None = None,
        max_seen: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0 or early_label_ttl_s <= 0:
            raise ValueError("ttl_s and early_label_ttl_s must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._client = client
        self._keys = KeySpace(namespace, group, "join")
        self.ttl_s = ttl_s
        self.early_label_ttl_s = early_label_ttl_s
        self.max_entries = max_entries
        self.max_held = max_held if max_held is not None else max_entries
        self.joined_marker_ttl_s = joined_marker_ttl_s if joined_marker_ttl_s is not None else ttl_s
        self.late_marker_ttl_s = late_marker_ttl_s if late_marker_ttl_s is not None else 4 * ttl_s
        self.max_joined = max_joined if max_joined is not None else max_entries
        self.max_seen = max_seen if max_seen is not None else 4 * max_entries
        if min(self.max_held, self.max_joined, self.max_seen) < 1:
            raise ValueError("max_held, max_joined and max_seen must be at least 1")
        self._clock = clock
        self._key_list = [self._keys.key(name) for name in
                          ("pending", "pending_at", "held", "held_at", "joined", "seen", "joined_data")]
        self._put = client.register_script(_PUT_SCRIPT)
        self._resolve = client.register_script(_RESOLVE_SCRIPT)

    def _header(self) -> list[str | int | bytes]:
        now = self._clock()
        return [
            repr(now), repr(now - self.ttl_s), repr(now - self.early_label_ttl_s),
            repr(now + self.joined_marker_ttl_s), repr(now + self.late_marker_ttl_s),
            self.max_entries, self.max_held, self.max_joined, _TRIM_LIMIT, self.max_seen,
        ]

    def put_pending(self, items: Sequence[PendingPrediction]) -> PutResult:
        """Store predictions awaiting their label (one round trip); join those whose label is already held.

        An id already pending keeps its first entry. An event record put again after it was joined (same
        topic, partition and offset) gets the same join back, with ``again`` set, every time while the joined
        record lives (``joined_marker_ttl_s``, ``max_joined``).
        """
        if not items:
            return PutResult([], [], 0, 0, 0)
        by_id = {item.event_id: item for item in items}
        args = self._header()
        for item in items:
            args += [item.event_id, f"{item.topic}:{item.partition}:{item.offset}", item.to_json()]
        matched, already_joined, expired, evicted, orphaned = self._put(keys=self._key_list, args=args)
        joined = []
        for i in range(0, len(matched), 4):
            label, label_ts = _label_from_payload(matched[i + 1])
            joined.append(JoinedLabel(by_id[_text(matched[i])], label, label_ts, _position(matched[i + 2]),
                                      bool(matched[i + 3])))
        return PutResult(joined, [_text(x) for x in already_joined], int(evicted), int(expired), int(orphaned))

    def resolve_labels(
        self, labels: Sequence[tuple[str, Target, float | None]], positions: Sequence[Position] | None = None
    ) -> JoinResult:
        """Join labels ``(event_id, label, label_ts)`` with their predictions, in order (one round trip).

        With ``positions`` (``(topic, partition, offset)`` of each label record), a label record read again
        after a crash gets the same join back, with ``again`` set, instead of a duplicate (while the joined record
        lives, as in :meth:`put_pending`).
        """
        if not labels:
            return JoinResult([], [], [], [], 0, 0, 0)
        sources = split_positions(positions, len(labels))
        label_of: dict[str, tuple[Target, float | None]] = {}
        position_of: dict[str, Position] = {}
        args = self._header()
        for index, (event_id, label, label_ts) in enumerate(labels):
            label_of.setdefault(event_id, (label, label_ts))
            if positions is not None:
                position_of.setdefault(event_id, positions[index])
            position = "" if sources is None else f"{sources[index][0]}:{sources[index][1]}"
            args += [event_id, position, _label_payload(label, label_ts)]
        joined_flat, duplicates, late, held, expired, evicted, orphaned = self._resolve(
            keys=self._key_list, args=args)
        joined = []
        for i in range(0, len(joined_flat), 3):
            event_id = _text(joined_flat[i])
            label, label_ts = label_of[event_id]
            joined.append(JoinedLabel(PendingPrediction.from_json(joined_flat[i + 1]), label, label_ts,
                                      position_of.get(event_id), bool(joined_flat[i + 2])))
        return JoinResult(
            joined, [_text(x) for x in held], [_text(x) for x in duplicates], [_text(x) for x in late],
            int(evicted), int(expired), int(orphaned),
        )

    def size(self) -> int:
        """Pending predictions stored (one ZCARD; may include a few expired ones not dropped yet)."""
        return int(self._client.zcard(self._key_list[1]))

    def sizes(self) -> JoinSizes:
        """Pending predictions and held labels (two ZCARDs in one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.zcard(self._key_list[1])
        pipe.zcard(self._key_list[3])
        pending, held = pipe.execute()
        return JoinSizes(int(pending), int(held))
