"""RedisGroupScores on a real Redis: sums add across workers, the rolling window in label buckets stays bounded,
keys expire, and the champion changes only by a compare-and-set."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import redis

from shared.learners.base import Task
from shared.state.group_scores import STATE_TTL_S, RedisGroupScores, ScoreSums

pytestmark = pytest.mark.integration


def sums(n: int, correct: int) -> ScoreSums:
    return ScoreSums(n=n, correct=correct)


def test_two_workers_add_to_one_view(redis_client: redis.Redis, unique_name: Callable[[str], str]) -> None:
    group = unique_name("g")
    one = RedisGroupScores(redis_client, "sltest", group, window=1000)
    two = RedisGroupScores(redis_client, "sltest", group, window=1000)
    first = one.sync(10, {"a": sums(10, 7), "b": sums(10, 9)}, "a")
    assert first.champion == "a" and first.epoch == 0 and first.total_labels == 10
    view = two.sync(30, {"a": sums(30, 15), "b": ScoreSums(n=30, correct=30, loss_sum=1.5, loss_n=30)}, "b")
    assert view.champion == "a", "the first default written stays"
    assert view.total_labels == 40 and view.labels_since_switch == 40
    assert view.rolling["a"].n == 40 and view.rolling["a"].value("accuracy", Task.BINARY) == pytest.approx(22 / 40)
    assert view.rolling["b"].value("accuracy", Task.BINARY) == pytest.approx(39 / 40)
    assert view.rolling["b"].value("log_loss", Task.BINARY) == pytest.approx(0.05)
    other = RedisGroupScores(redis_client, "sltest", unique_name("other"), window=1000).sync(0, {}, "b")
    assert other.champion == "b" and other.rolling == {}, "groups do not share scores"


def test_the_window_keeps_the_last_buckets_and_the_keys_stay_bounded(
    redis_client: redis.Redis, unique_name: Callable[[str], str]
) -> None:
    store = RedisGroupScores(redis_client, "sltest", unique_name("g"), window=100, buckets=10)
    assert store.bucket_size == 10
    for i in range(50):  # 500 labels, 10 per sync: a is right on the first 400, wrong on the last 100
        view = store.sync(10, {"a": sums(10, 10 if i < 40 else 0)}, "a")
    assert view.total_labels == 500
    # sync i wrote bucket i (labels 10 i .. 10 i + 9): the window is buckets 40..49, the last 100 labels
    assert view.rolling["a"].n == 100 and view.rolling["a"].correct == 0
    keys = list(redis_client.scan_iter(match=store.keys.prefix + "*"))
    assert len(keys) <= store.buckets + 1, keys
    assert all(0 < redis_client.ttl(key) <= STATE_TTL_S for key in keys)
    # one large sync jumps past the whole window: nothing older is left behind
    view = store.sync(1000, {"a": sums(1000, 1000)}, "a")
    assert view.rolling["a"].n == 1000 and view.rolling["a"].correct == 1000
    assert len(list(redis_client.scan_iter(match=store.keys.prefix + "*"))) <= store.buckets + 1


def test_switch_is_a_compare_and_set(redis_client: redis.Redis, unique_name: Callable[[str], str]) -> None:
    store = RedisGroupScores(redis_client, "sltest", unique_name("g"), window=100)
    view = store.sync(500, {"a": sums(500, 1)}, "a")
    assert view.labels_since_switch == 500
    assert store.switch("a", view.epoch, "b")
    assert not store.switch("a", view.epoch, "c"), "a second worker deciding from the same view loses"
    after = store.sync(0, {}, "a")
    assert (after.champion, after.epoch, after.switches, after.labels_since_switch) == ("b", 1, 1, 0)
    store.clear()
    assert list(redis_client.scan_iter(match=store.keys.prefix + "*")) == []


def test_concurrent_syncs_lose_nothing(redis_client: redis.Redis, unique_name: Callable[[str], str]) -> None:
    group = unique_name("g")

    def worker() -> None:
        store = RedisGroupScores(redis_client, "sltest", group, window=100_000)
        for _ in range(100):
            store.sync(3, {"a": sums(3, 2)}, "a")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    view = RedisGroupScores(redis_client, "sltest", group, window=100_000).sync(0, {}, "a")
    assert view.total_labels == 1200 and view.rolling["a"].n == 1200 and view.rolling["a"].correct == 800
