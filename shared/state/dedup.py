"""The dedup window: was this event id already seen in the last ``window_s`` seconds?

One Lua script per batch (one round trip, atomic; the ids go as one JSON argument and the answer comes back as
one string, so the client encodes two values, not two per record). The window calls the script by its SHA on a
connection of its own: redis-py's pool and retry wrapper cost a third of the client's time per call
(docs/benchmarks.md); a script missing after a Redis restart is loaded again. Ids live in a sorted set scored by
first-seen time, trimmed by age and capped at ``max_entries`` (oldest dropped first). When the caller passes each
record's position, the origin of every id is kept too, so a record read again after a crash is not mistaken for
a duplicate of itself. Layout and rules: docs/state.md.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

import orjson
import redis
from redis.connection import ConnectionInterface

from shared.state.keys import KeySpace, Position, split_positions

_TRIM_LIMIT = 5_000
#: the script answers one character per id: ``1`` first seen (or a replayed record), ``0`` a duplicate
_FIRST = ord("1")

_CHECK_AND_ADD = """
local order, origin = KEYS[1], KEYS[2]
local now, cutoff = ARGV[1], tonumber(ARGV[2])
local max_entries, trim_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local step = tonumber(ARGV[5])
local items = cjson.decode(ARGV[6])
local CHUNK = 500

local function drop(ids)
  for i = 1, #ids, CHUNK do
    local chunk = {unpack(ids, i, math.min(i + CHUNK - 1, #ids))}
    redis.call('ZREM', order, unpack(chunk))
    redis.call('HDEL', origin, unpack(chunk))
  end
end

local ids = {}
for i = 1, #items, step do ids[#ids + 1] = items[i] end
local scores = {}
for i = 1, #ids, CHUNK do
  local got = redis.call('ZMSCORE', order, unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
  for j = 1, #got do scores[i + j - 1] = got[j] end
end

-- The same answers as checking and adding one id at a time: an id added earlier in this batch is in the
-- window (scored now), with the origin it was added with; the additions are written once, at the end.
local added, added_origin = {}, {}
local new_ids, new_origins = {}, {}
local first = {}
for k = 1, #ids do
  local id = ids[k]
  local source = step == 2 and items[2 * k] or false
  if added[id] then
    first[k] = (step == 2 and added_origin[id] == source) and '1' or '0'
  else
    local score = scores[k]
    if score and tonumber(score) >= cutoff then
      first[k] = (step == 2 and redis.call('HGET', origin, id) == source) and '1' or '0'
    else
      added[id] = true
      added_origin[id] = source
      new_ids[#new_ids + 1] = id
      new_origins[#new_origins + 1] = source
      first[k] = '1'
    end
  end
end

for i = 1, #new_ids, CHUNK do
  local zadd, hset = {}, {}
  for j = i, math.min(i + CHUNK - 1, #new_ids) do
    zadd[#zadd + 1] = now
    zadd[#zadd + 1] = new_ids[j]
    hset[#hset + 1] = new_ids[j]
    hset[#hset + 1] = new_origins[j]
  end
  redis.call('ZADD', order, unpack(zadd))
  if step == 2 then
    redis.call('HSET', origin, unpack(hset))
  else
    redis.call('HDEL', origin, unpack(new_ids, i, math.min(i + CHUNK - 1, #new_ids)))
  end
end

drop(redis.call('ZRANGEBYSCORE', order, '-inf', '(' .. ARGV[2], 'LIMIT', 0, trim_limit))
local excess = redis.call('ZCARD', order) - max_entries
if excess > 0 then drop(redis.call('ZRANGE', order, 0, excess - 1)) end
return table.concat(first)
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
        self._sha = hashlib.sha1(_CHECK_AND_ADD.encode()).hexdigest()
        self._connection: ConnectionInterface | None = None

    def check_and_add(self, ids: Sequence[str], positions: Sequence[Position] | None = None) -> list[bool]:
        """For each id in order: ``True`` the first time it is seen within the window, else ``False``.

        A repeat inside ``ids`` is a duplicate too. With ``positions`` (``(topic, partition, offset)`` of each
        record), an id seen again at the same position is a replayed record, not a duplicate: ``True`` again.
        """
        if not ids:
            return []
        sources = split_positions(positions, len(ids))
        now = self._clock()
        if sources is None:
            items: list[str] = list(ids)
        else:
            items = []
            for event_id, (source, offset) in zip(ids, sources, strict=True):
                items += (event_id, f"{source}:{offset}")
        args: list[str | int | bytes] = [repr(now), repr(now - self.window_s), self.max_entries, _TRIM_LIMIT,
                                         1 if sources is None else 2, orjson.dumps(items)]
        flags = self._evalsha(args)
        if isinstance(flags, str):
            flags = flags.encode("ascii")
        return [flag == _FIRST for flag in flags]

    def _evalsha(self, args: list[str | int | bytes]) -> bytes | str:
        """The script's answer, on this window's connection.

        A dropped connection (a restarted server, an idle timeout) is opened again and the call sent once more, as
        redis-py's retry would: with positions the repeat gives the same answers (the ids' origins match); an error
        on the new connection is raised. The script's own errors are raised.
        """
        try:
            return self._send(args)
        except redis.ConnectionError:
            return self._send(args)

    def _send(self, args: list[str | int | bytes]) -> bytes | str:
        connection = self._connection
        if connection is None:
            connection = self._client.connection_pool.make_connection()
            self._connection = connection
        command = ("EVALSHA", self._sha, len(self._key_list), *self._key_list, *args)
        try:
            try:
                connection.send_command(*command)
                return connection.read_response()
            except redis.exceptions.NoScriptError:  # a restarted or flushed server: load it, once
                connection.send_command("SCRIPT", "LOAD", _CHECK_AND_ADD)
                connection.read_response()
                connection.send_command(*command)
                return connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            connection.disconnect()
            raise

    def close(self) -> None:
        """Close the window's connection (the next call opens a new one)."""
        if self._connection is not None:
            self._connection.disconnect()
            self._connection = None

    def size(self) -> int:
        """Ids in the window (one ZCARD; may include a few expired ones not dropped yet)."""
        return int(self._client.zcard(self._key_list[0]))
