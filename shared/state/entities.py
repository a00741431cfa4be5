"""Per-entity rolling aggregates (count, mean/min/max of chosen fields, time since the last event) in Redis.

Each event gets the aggregates of its entity AS OF BEFORE the event (so a label can never leak into its own
features), then updates them. A batch is one Lua script: one round trip, applied in order, atomic. With record
positions, events at or below the offset already applied for their partition are replays: they are answered from
the stored history without changing it. Layout, bounds and replay rules: docs/state.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from shared.learners.base import FeatureValue
from shared.state.keys import KeySpace, Position, split_positions

_UPDATE_AND_GET = """
local lru, seq_key, applied_key = KEYS[1], KEYS[2], KEYS[3]
local prefix = ARGV[1]
local k = tonumber(ARGV[2])
local last_n = tonumber(ARGV[3])
local last_seconds = tonumber(ARGV[4])
local max_history = tonumber(ARGV[5])
local max_entities = tonumber(ARGV[6])
local stride = 4 + k

local states, touched, touched_order, applied, applied_dirty = {}, {}, {}, {}, {}

local function fmt(x) return string.format('%.17g', x) end

local function load(key)
  local s = states[key]
  if s == nil then
    local raw = redis.call('GET', prefix .. key)
    if raw then s = cmsgpack.unpack(raw) else s = false end
    states[key] = s
  end
  return s
end

local function applied_offset(src)
  local a = applied[src]
  if a == nil then
    local raw = redis.call('HGET', applied_key, src)
    a = raw and tonumber(raw) or -1
    applied[src] = a
  end
  return a
end

local function row(entries, upto, ts, count_total, prev_ts)
  local first = 1
  if last_n > 0 then first = math.max(1, upto - last_n + 1) end
  first = math.max(first, upto - max_history + 1)
  local count, sums, mins, maxs, ns = 0, {}, {}, {}, {}
  for j = first, upto do
    local e = entries[j]
    if last_seconds < 0 or e[1] >= ts - last_seconds then
      count = count + 1
      for f = 1, k do
        local v = e[5 + f]
        if v then
          sums[f] = (sums[f] or 0) + v
          ns[f] = (ns[f] or 0) + 1
          if mins[f] == nil or v < mins[f] then mins[f] = v end
          if maxs[f] == nil or v > maxs[f] then maxs[f] = v end
        end
      end
    end
  end
  local out = {fmt(count), fmt(count_total), prev_ts and fmt(math.max(0, ts - prev_ts)) or ''}
  for f = 1, k do
    if ns[f] then
      table.insert(out, fmt(sums[f] / ns[f]))
      table.insert(out, fmt(mins[f]))
      table.insert(out, fmt(maxs[f]))
    else
      table.insert(out, '')
      table.insert(out, '')
      table.insert(out, '')
    end
  end
  return out
end

local rows = {}
local n_events = (#ARGV - 6) / stride
for i = 1, n_events do
  local base = 6 + (i - 1) * stride
  local key, ts, src, off = ARGV[base + 1], tonumber(ARGV[base + 2]), ARGV[base + 3], tonumber(ARGV[base + 4])
  local s = load(key)
  if src ~= '' and off <= applied_offset(src) then
    local found = nil
    if s then
      for j = #s[2], 1, -1 do
        local e = s[2][j]
        if e[2] == src and e[3] == off then found = j break end
      end
    end
    rows[i] = {}
    if found then
      local e, prior = s[2][found], found - 1
      local exact = prior == e[4] - 1
        or (last_n > 0 and prior >= math.min(last_n, max_history))
        or (last_seconds >= 0 and prior > 0 and s[2][1][1] < ts - last_seconds)
      if exact then rows[i] = row(s[2], prior, ts, e[4] - 1, e[5]) end
    end
  else
    if not s then
      s = {0, {}}
      states[key] = s
    end
    local entries = s[2]
    local prev_ts = false
    if #entries > 0 then prev_ts = entries[#entries][1] end
    rows[i] = row(entries, #entries, ts, s[1], prev_ts)
    s[1] = s[1] + 1
    local entry = {ts, src, off, s[1], prev_ts}
    for f = 1, k do
      local v = ARGV[base + 4 + f]
      if v == '' then entry[5 + f] = false else entry[5 + f] = tonumber(v) end
    end
    table.insert(entries, entry)
    if touched[key] == nil then table.insert(touched_order, key) end
    touched[key] = i
    if src ~= '' then
      applied[src] = off
      applied_dirty[src] = true
    end
  end
end

local seq = redis.call('INCRBY', seq_key, n_events) - n_events
for _, key in ipairs(touched_order) do
  local s = states[key]
  local entries = s[2]
  if #entries > max_history then
    local kept = {}
    for j = #entries - max_history + 1, #entries do table.insert(kept, entries[j]) end
    s[2] = kept
  end
  redis.call('SET', prefix .. key, cmsgpack.pack(s))
  redis.call('ZADD', lru, seq + touched[key], key)
end
for src, _ in pairs(applied_dirty) do
  redis.call('HSET', applied_key, src, applied[src])
end

local evicted = 0
local excess = redis.call('ZCARD', lru) - max_entities
if excess > 0 then
  local victims = redis.call('ZRANGE', lru, 0, excess - 1)
  for _, victim in ipairs(victims) do
    redis.call('ZREM', lru, victim)
    redis.call('DEL', prefix .. victim)
  end
  evicted = #victims
end
return {rows, evicted}
"""


@dataclass(frozen=True, slots=True)
class EntityFeatureSpec:
    """Which per-entity aggregates to compute and how much to keep.

    The window is the entity's last ``last_n`` events, and/or those of the last ``last_seconds`` seconds
    (before the current event's ``ts``); at least one must be set. ``max_history`` events are kept per entity
    (default ``2 * last_n``, or 1000 for a time window alone); ``max_entities`` entities at most, the least
    recently updated evicted first.
    """

    fields: tuple[str, ...]
    last_n: int | None = None
    last_seconds: float | None = None
    max_entities: int = 100_000
    max_history: int | None = None
    #: prefix of every feature name this store produces
    prefix: str = "entity_"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        if self.last_n is None and self.last_seconds is None:
            raise ValueError("set last_n, last_seconds or both")
        if self.last_n is not None and self.last_n < 1:
            raise ValueError("last_n must be at least 1")
        if self.last_seconds is not None and not self.last_seconds > 0:
            raise ValueError("last_seconds must be positive")
        if self.max_entities < 1:
            raise ValueError("max_entities must be at least 1")
        if len(set(self.fields)) != len(self.fields):
            raise ValueError("fields must be unique")
        if self.max_history is not None and self.max_history < (self.last_n or 1):
            raise ValueError("max_history must be at least last_n")

    @property
    def history_limit(self) -> int:
        """Events kept per entity."""
        if self.max_history is not None:
            return self.max_history
        return 2 * self.last_n if self.last_n is not None else 1000

    def feature_names(self) -> list[str]:
        """Every feature name :meth:`EntityStore.update_and_get` may return, in a fixed order."""
        names = [f"{self.prefix}count", f"{self.prefix}count_total", f"{self.prefix}seconds_since_last"]
        for name in self.fields:
            names += [f"{self.prefix}{name}_mean", f"{self.prefix}{name}_min", f"{self.prefix}{name}_max"]
        return names


#: one event for :meth:`EntityStore.update_and_get`: entity key (``None``: no entity), timestamp, features
EntityEvent = tuple[str | None, float, Mapping[str, FeatureValue]]


def _number(value: FeatureValue) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    number = float(value)
    return repr(number) if math.isfinite(number) else ""


class EntityStore:
    """Per-entity aggregates of one consumer group under ``<namespace>:<group>:entity:``."""

    def __init__(self, client: redis.Redis, namespace: str, group: str, spec: EntityFeatureSpec) -> None:
        self._client = client
        self.spec = spec
        keys = KeySpace(namespace, group, "entity")
        self._state_prefix = keys.key("e", "")
        self._key_list = [keys.key("lru"), keys.key("seq"), keys.key("applied")]
        self._names = spec.feature_names()
        self._script = client.register_script(_UPDATE_AND_GET)
        self.evicted_total = 0

    def update_and_get(
        self, batch: Sequence[EntityEvent], positions: Sequence[Position] | None = None
    ) -> list[dict[str, float]]:
        """For each event in order: its entity's aggregates before it, then apply it (one round trip).

        Features that are undefined (no earlier event, no numeric value in the window) are left out. Events
        without a key get ``{}``. With ``positions`` (``(topic, partition, offset)`` per event), an event at or
        below the offset already applied for its partition is a replay: it is answered from the stored history
        (``{}`` when that history is gone) and applied no second time.
        """
        sources = split_positions(positions, len(batch))
        spec = self.spec
        args: list[str | int] = [
            self._state_prefix, len(spec.fields), spec.last_n or 0,
            repr(float(spec.last_seconds)) if spec.last_seconds is not None else "-1",
            spec.history_limit, spec.max_entities,
        ]
        keyed: list[int] = []
        for index, (key, ts, features) in enumerate(batch):
            if key is None:
                continue
            keyed.append(index)
            source, offset = sources[index] if sources is not None else ("", -1)
            args += [key, repr(float(ts)), source, offset]
            args += [_number(features.get(name)) for name in spec.fields]
        results: list[dict[str, float]] = [{} for _ in batch]
        if not keyed:
            return results
        rows, evicted = self._script(keys=self._key_list, args=args)
        self.evicted_total += int(evicted)
        for index, row in zip(keyed, rows, strict=True):
            results[index] = {name: float(value) for name, value in zip(self._names, row, strict=False) if value}
        return results

    def size(self) -> int:
        """Entities stored (one ZCARD)."""
        return int(self._client.zcard(self._key_list[0]))

    def forget_source(self, topic: str, partition: int) -> None:
        """Drop the applied offset of one partition (needed only if its topic was deleted and created again)."""
        self._client.hdel(self._key_list[2], f"{topic}:{partition}")
