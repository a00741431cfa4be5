"""DedupWindow on a real Redis: within and across batches, window expiry, the size bound, replayed records."""

from __future__ import annotations

import time

import pytest
import redis

from services.stack import free_ports
from shared.state.dedup import DedupWindow

pytestmark = pytest.mark.integration


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_duplicates_within_and_across_batches(redis_client: redis.Redis) -> None:
    dedup = DedupWindow(redis_client, "sltest", "g", window_s=60, max_entries=1000)
    assert dedup.check_and_add(["a", "b", "a", "c", "b"]) == [True, True, False, True, False]
    assert dedup.check_and_add(["c", "d", "a"]) == [False, True, False]
    assert dedup.check_and_add([]) == []
    assert dedup.size() == 4


def test_groups_have_separate_windows(redis_client: redis.Redis) -> None:
    DedupWindow(redis_client, "sltest", "g1", window_s=60, max_entries=10).check_and_add(["a"])
    assert DedupWindow(redis_client, "sltest", "g2", window_s=60, max_entries=10).check_and_add(["a"]) == [True]


def test_an_id_is_new_again_after_the_window(redis_client: redis.Redis) -> None:
    dedup = DedupWindow(redis_client, "sltest", "g", window_s=0.3, max_entries=100)
    assert dedup.check_and_add(["x", "y"]) == [True, True]
    assert dedup.check_and_add(["x"]) == [False]
    time.sleep(0.4)
    assert dedup.check_and_add(["x"]) == [True]
    assert dedup.size() == 1, "y expired and was dropped"


def test_the_window_runs_from_the_first_sighting(redis_client: redis.Redis) -> None:
    clock = ManualClock()
    dedup = DedupWindow(redis_client, "sltest", "g", window_s=10, max_entries=100, clock=clock)
    dedup.check_and_add(["x"])
    clock.now += 6
    assert dedup.check_and_add(["x"]) == [False]
    clock.now += 6
    assert dedup.check_and_add(["x"]) == [True], "a repeat does not extend the window"


def test_the_window_holds_at_most_max_entries(redis_client: redis.Redis) -> None:
    clock = ManualClock()
    dedup = DedupWindow(redis_client, "sltest", "g", window_s=3600, max_entries=100, clock=clock)
    for batch in range(20):
        clock.now += 1
        assert all(dedup.check_and_add([f"id-{batch}-{i}" for i in range(50)]))
        assert dedup.size() <= 100
    assert dedup.size() == 100
    assert dedup.check_and_add(["id-19-0", "id-18-49"]) == [False, False], "the newest ids are kept"
    assert dedup.check_and_add(["id-0-0"]) == [True], "the oldest were dropped to stay within the bound"


def test_a_replayed_record_is_not_its_own_duplicate(redis_client: redis.Redis) -> None:
    dedup = DedupWindow(redis_client, "sltest", "g", window_s=60, max_entries=100)
    first = [("events", 0, 10), ("events", 0, 11), ("events", 0, 12)]
    assert dedup.check_and_add(["a", "b", "a"], first) == [True, True, False]
    replay = dedup.check_and_add(["a", "b", "a"], first)
    assert replay == [True, True, False], "same records read again after a crash: same answers"
    assert dedup.check_and_add(["a"], [("events", 1, 10)]) == [False], "same id, another record: duplicate"
    with pytest.raises(ValueError):
        dedup.check_and_add(["a", "b"], first)


def test_the_script_is_loaded_again_after_a_flush(redis_client: redis.Redis) -> None:
    dedup = DedupWindow(redis_client, "sltest", "g", window_s=60, max_entries=100)
    assert dedup.check_and_add(["a"]) == [True]
    redis_client.script_flush()
    assert dedup.check_and_add(["a", "b"]) == [False, True], "NOSCRIPT answered by loading the script again"
    assert redis_client.script_exists(dedup._sha) == [True]


def test_a_dropped_connection_is_opened_again(redis_client: redis.Redis) -> None:
    dedup = DedupWindow(redis_client, "sltest", "g", window_s=60, max_entries=100)
    assert dedup.check_and_add(["a"], [("events", 0, 1)]) == [True]
    assert redis_client.client_kill_filter(_type="normal", skipme=True) >= 1
    assert dedup.check_and_add(["b", "a"], [("events", 0, 2), ("events", 0, 1)]) == [True, True]
    assert dedup.check_and_add(["a"], [("events", 0, 3)]) == [False], "the window kept its ids"
    dedup.close()
    assert dedup.check_and_add(["c"]) == [True]


def test_an_unreachable_server_raises() -> None:
    unreachable = redis.Redis(port=free_ports(1)[0], socket_connect_timeout=0.5)
    dedup = DedupWindow(unreachable, "sltest", "g", window_s=60, max_entries=100)
    with pytest.raises(redis.ConnectionError):
        dedup.check_and_add(["a"])
