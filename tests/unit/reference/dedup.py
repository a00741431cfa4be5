# Reference copy of shared/state/dedup.py before the batched rewrite (commit a1093f2), for equality tests.
"""The dedup window: was this event id already seen in the last ``window_s`` seconds?

One Lua script per batch (one round trip, atomic). Ids live in a sorted set scored by first-seen time, trimmed by
age and capped at ``max_entries`` (oldest dropped first). When the caller passes each record's position, the
origin of every id is kept too, so a record read again after a crash is not mistaken for a duplicate of itself.
Layout and rules: docs/state.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import redis

from shared.state.keys import KeySpace, Position, split_positions

_TRIM_LIMIT = 5_000

_CHECK_AND_ADD = """
local order, origin = KEYS[1], KEYS[2]
local now, cutoff = ARGV[1], tonumber(ARGV[2])
local max_entries, trim_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local step = tonumber(ARGV[5])

local function drop(ids)
  for i = 1, #ids, 500 do
    local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
    redis.call('ZREM', order, unpack(chunk))
    redis.call('HDEL', origin, unpack(chunk))
  end
end

local first = {}
for i = 6, #ARGV, step do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', order, id)
  if score and tonumber(score) >= cutoff then
    if step == 2 and redis.call('HGET', origin, id) == ARGV[i + 1] then
      table.insert(first, 1)
    else
      table.insert(first, 0)
    end
  else
    redis.call('ZADD', order, now, id)
    if step == 2 then redis.call('HSET', origin, id, ARGV[i + 1]) else redis.call('HDEL', origin, id) end
    table.insert(first, 1)
  end
end

drop(redis.call('ZRANGEBYSCORE', order, '-inf', '(' .. ARGV[2], 'LIMIT', 0, trim_limit))
local excess = redis.call('ZCARD', order) - max_entries
if excess > 0 then drop(redis.call('ZRANGE', order, 0, excess - 1)) end
return first
"""


class DedupWindow:
    """Event ids of one consumer group seen in the last ``window_s`` seconds, at most ``max_entries`` of them.

    The window starts at an id's first sighting (a repeat does not extend it).
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        group: str,
        window_s: float,
        max_entries: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._client = client
        keys = KeySpace(namespace, group, "dedup")
        self._key_list = [keys.key("seen_at"), keys.key("origin")]
        self.window_s = window_s
        self.max_entries = max_entries
        self._clock = clock
        self._script = client.register_script(_CHECK_AND_ADD)

    def check_and_add(self, ids: Sequence[str], positions: Sequence[Position] | None = None) -> list[bool]:
        """For each id in order: ``True`` the first time it is seen within the window, else ``False``.

        A repeat inside ``ids`` is a duplicate too. With ``positions`` (``(topic, partition, offset)`` of each
        record), an id seen again at the same position is a replayed record, not a duplicate: ``True`` again.
        """
        if not ids:
            return []
        sources = split_positions(positions, len(ids))
        now = self._clock()
        args: list[str | int] = [repr(now), repr(now - self.window_s), self.max_entries, _TRIM_LIMIT,
                                 1 if sources is None else 2]
        if sources is None:
            args.extend(ids)
        else:
            for event_id, (source, offset) in zip(ids, sources, strict=True):
                args += [event_id, f"{source}:{offset}"]
        flags = self._script(keys=self._key_list, args=args)
        return [bool(flag) for flag in flags]

    def size(self) -> int:
        """Ids in the window (one ZCARD; may include a few expired ones not dropped yet)."""
        return int(self._client.zcard(self._key_list[0]))
