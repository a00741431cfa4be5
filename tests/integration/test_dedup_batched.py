"""The dedup script (ids as one JSON argument, additions written once per batch) against the per-id script it
replaced (``tests/unit/reference/dedup.py``), on a real Redis: the same answers and the same Redis state after
every batch, over a seeded stream of several thousand ids with repeats, replays, expiry and the size bound."""

from __future__ import annotations

import random

import pytest
import redis

from shared.state.dedup import DedupWindow
from tests.unit.reference.dedup import DedupWindow as ReferenceDedupWindow

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _state(client: redis.Redis, group: str) -> tuple[list, dict]:
    return (client.zrange(f"sltest:{group}:dedup:seen_at", 0, -1, withscores=True),
            client.hgetall(f"sltest:{group}:dedup:origin"))


@pytest.mark.parametrize("with_positions", [True, False])
@pytest.mark.parametrize("max_entries", [50, 100_000])
def test_batched_script_equals_per_id_script(redis_client: redis.Redis, with_positions: bool,
                                             max_entries: int) -> None:
    clock = Clock()
    new = DedupWindow(redis_client, "sltest", "new", window_s=30, max_entries=max_entries, clock=clock)
    old = ReferenceDedupWindow(redis_client, "sltest", "old", window_s=30, max_entries=max_entries, clock=clock)
    rng = random.Random(f"{with_positions}-{max_entries}")
    odd = ["", "é", "a b", "\\u0000", "\x00x", '"q"', "1", "1e3", "null", "ñ" * 200, "[1]"]
    offset = 0
    seen: list[tuple[str, tuple[str, int, int]]] = []
    for _ in range(40):
        ids: list[str] = []
        positions: list[tuple[str, int, int]] = []
        for _ in range(rng.choice([1, 5, 200, 600])):
            roll = rng.random()
            if roll < 0.1 and seen:  # a replayed record: same id, same position
                event_id, position = rng.choice(seen)
            else:
                event_id = rng.choice(odd) if roll < 0.15 else f"e{rng.randrange(3000)}"
                position = ("events", rng.randrange(2), offset)
                offset += 1
                seen.append((event_id, position))
            ids.append(event_id)
            positions.append(position)
        clock.now += rng.choice([0.0, 1.0, 10.0, 40.0])
        answer = new.check_and_add(ids, positions if with_positions else None)
        expected = old.check_and_add(ids, positions if with_positions else None)
        assert answer == expected
        assert _state(redis_client, "new") == _state(redis_client, "old")
        assert new.size() == old.size()
