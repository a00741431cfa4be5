"""The replay merge through :class:`GroupSync` over the real Redis (no Kafka): every member learns every example
of the group exactly once, a restore merges what was published since its cursor, members in another merge mode
are skipped, and a full replay buffer is counted."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import redis
from prometheus_client import CollectorRegistry

from shared.learners.base import Learner, MergeMode, Row
from shared.learners.registry import build_learner, restore_learner
from shared.monitoring.metrics import Metrics
from shared.settings import ModelSettings, PreprocessingSettings, SyncSettings
from shared.steps.models import ModelSet
from shared.sync.group import GroupSync, SyncRecord

pytestmark = pytest.mark.integration

NB = ModelSettings(name="nb", estimator="river.naive_bayes.GaussianNB", task="binary")
KEY = b"k" * 32


def _examples(count: int, seed: int) -> list[tuple[Row, bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        x = rng.gauss(0.0, 1.0)
        out.append((Row({"x": x, "y": rng.random()}), x > 0))
    return out


def _member(client: redis.Redis, namespace: str, settings: SyncSettings,
            metrics: Metrics | None = None) -> tuple[GroupSync, ModelSet]:
    model_set = ModelSet({"nb": build_learner(NB, PreprocessingSettings(), 1)})
    sync = GroupSync(client, namespace, "group", KEY, settings, metrics)
    sync.adopt(model_set, None)
    return sync, model_set


def _learn(model_set: ModelSet, examples: list[tuple[Row, bool]], source: str) -> None:
    learner = model_set.learners["nb"]
    learner.process([row for row, _ in examples], [label for _, label in examples])
    model_set.learned["nb"] = model_set.learned.get("nb", 0) + len(examples)
    model_set.sources[source] = model_set.sources.get(source, 0) + len(examples)


def _sync(client: redis.Redis, sync: GroupSync, model_set: ModelSet) -> None:
    outcome = sync.sync(model_set)
    pipe = client.pipeline(transaction=True)
    outcome.publish(pipe)
    pipe.execute()
    sync.published(outcome)


def _counted(learner: Learner) -> float:
    return float(sum(learner.pipeline[-1].class_counts.values()))  # type: ignore[attr-defined]


def test_replaying_members_learn_every_example_of_the_group_once(
    redis_client: redis.Redis, unique_name: Callable[[str], str],
) -> None:
    namespace = unique_name("ns")
    settings = SyncSettings(merge="replay")
    (a, set_a), (b, set_b) = _member(redis_client, namespace, settings), _member(redis_client, namespace, settings)
    assert set_a.learners["nb"].merge_mode() is MergeMode.REPLAY
    for round_ in range(3):
        _learn(set_a, _examples(50, 10 + round_), "events:0")
        _sync(redis_client, a, set_a)
        _learn(set_b, _examples(30, 20 + round_), "events:1")
        _sync(redis_client, b, set_b)
    _sync(redis_client, a, set_a)
    for model_set in (set_a, set_b):
        assert model_set.sources == {"events:0": 150, "events:1": 90}
        assert _counted(model_set.learners["nb"]) == 240, "every example learned once, own or replayed"
    # a restore of a's state with its sync record merges nothing twice (a's own last delta is after its cursor)
    restored = ModelSet({"nb": restore_learner("river", set_a.learners["nb"].snapshot())}, dict(set_a.learned),
                        dict(set_a.sources))
    GroupSync(redis_client, namespace, "group", KEY, settings).adopt(restored, SyncRecord.from_json(a.record.to_json()))
    assert _counted(restored.learners["nb"]) == 240 and restored.sources == set_a.sources
    # and a fresh member (no state) merges everything published, once
    _, fresh_set = _member(redis_client, namespace, settings)
    assert _counted(fresh_set.learners["nb"]) == 240
    assert fresh_set.sources == {"events:0": 150, "events:1": 90}


def test_a_member_in_another_mode_skips_the_deltas_it_cannot_read(
    redis_client: redis.Redis, unique_name: Callable[[str], str],
) -> None:
    namespace = unique_name("ns")
    a, set_a = _member(redis_client, namespace, SyncSettings(merge="replay"))
    b, set_b = _member(redis_client, namespace, SyncSettings(merge="native"))
    assert set_b.learners["nb"].merge_mode() is MergeMode.EXACT
    _learn(set_a, _examples(40, 1), "events:0")
    _sync(redis_client, a, set_a)
    _learn(set_b, _examples(25, 2), "events:1")
    _sync(redis_client, b, set_b)
    _sync(redis_client, a, set_a)
    assert _counted(set_b.learners["nb"]) == 25, "the replay delta was not misread as statistics"
    assert _counted(set_a.learners["nb"]) == 40, "the statistics delta was not misread as examples"


def test_a_full_replay_buffer_is_counted(redis_client: redis.Redis, unique_name: Callable[[str], str]) -> None:
    metrics = Metrics(CollectorRegistry())
    sync, model_set = _member(redis_client, unique_name("ns"), SyncSettings(merge="replay", replay_max_examples=10),
                              metrics)
    _learn(model_set, _examples(25, 3), "events:0")
    _sync(redis_client, sync, model_set)
    assert metrics.sync_replay_dropped._value.get() == 15
    _learn(model_set, _examples(4, 4), "events:0")
    _sync(redis_client, sync, model_set)
    assert metrics.sync_replay_dropped._value.get() == 15


def test_a_pull_learns_the_others_examples_before_the_next_sync_and_only_once(
    redis_client: redis.Redis, unique_name: Callable[[str], str],
) -> None:
    namespace = unique_name("ns")
    settings = SyncSettings(merge="replay")
    metrics = Metrics(CollectorRegistry())
    a, set_a = _member(redis_client, namespace, settings)
    b, set_b = _member(redis_client, namespace, settings, metrics)
    _learn(set_a, _examples(50, 1), "events:0")
    _sync(redis_client, a, set_a)
    _learn(set_b, _examples(30, 2), "events:1")
    before_pull = (set_b.learners["nb"].snapshot(), dict(set_b.learned), dict(set_b.sources), b.record.to_json())
    assert b.pull(set_b) == 1
    assert _counted(set_b.learners["nb"]) == 80, "a's 50 examples learned before b's next sync"
    assert set_b.sources == {"events:0": 50, "events:1": 30}
    assert metrics.sync_pulls._value.get() == 1
    assert b.pull(set_b) == 0 and _counted(set_b.learners["nb"]) == 80, "nothing new: nothing learned again"
    _sync(redis_client, b, set_b)
    _sync(redis_client, a, set_a)
    assert _counted(set_b.learners["nb"]) == 80 and _counted(set_a.learners["nb"]) == 80
    assert set_a.sources == set_b.sources == {"events:0": 50, "events:1": 30}, "each source counted once"
    # b's state checkpointed before the pull merges a's delta again on restore: it is not in that state
    snapshot, learned, sources, record = before_pull
    restored = ModelSet({"nb": restore_learner("river", snapshot)}, learned, sources)
    GroupSync(redis_client, namespace, "group", KEY, settings).adopt(restored, SyncRecord.from_json(record))
    assert _counted(restored.learners["nb"]) == 80 and restored.sources == {"events:0": 50, "events:1": 30}


def test_a_pull_keeps_native_deltas_for_the_next_sync(
    redis_client: redis.Redis, unique_name: Callable[[str], str],
) -> None:
    namespace = unique_name("ns")
    settings = SyncSettings(merge="native")
    a, set_a = _member(redis_client, namespace, settings)
    b, set_b = _member(redis_client, namespace, settings)
    assert set_b.learners["nb"].merge_mode() is MergeMode.EXACT
    _learn(set_a, _examples(40, 3), "events:0")
    _sync(redis_client, a, set_a)
    _learn(set_b, _examples(25, 4), "events:1")
    assert b.pull(set_b) == 1
    assert _counted(set_b.learners["nb"]) == 25, "statistics are merged by the sync, against its own delta"
    _sync(redis_client, b, set_b)
    _sync(redis_client, a, set_a)
    assert _counted(set_b.learners["nb"]) == 65 and _counted(set_a.learners["nb"]) == 65
    assert set_a.sources == set_b.sources == {"events:0": 40, "events:1": 25}
    _, fresh_set = _member(redis_client, namespace, settings)
    assert _counted(fresh_set.learners["nb"]) == 65, "every delta in the stream exactly once"


def test_a_young_state_syncs_after_as_many_examples_as_it_holds(
    redis_client: redis.Redis, unique_name: Callable[[str], str],
) -> None:
    """``sync.warmup_examples``: the first syncs come at 50, then after as many examples as the state held (every
    member's), until it holds ``warmup_examples``; events without labels never make a sync due early."""
    namespace = unique_name("ns")
    settings = SyncSettings(merge="replay", warmup_examples=400)
    (a, set_a), (b, set_b) = _member(redis_client, namespace, settings), _member(redis_client, namespace, settings)
    assert not a.warmup_due(set_a), "nothing learned"
    _learn(set_a, _examples(49, 1), "events:0")
    assert not a.warmup_due(set_a)
    _learn(set_a, _examples(1, 2), "events:0")
    assert a.warmup_due(set_a), "the first sync after 50 examples"
    _sync(redis_client, a, set_a)
    _learn(set_b, _examples(60, 3), "events:1")
    _sync(redis_client, b, set_b)
    _sync(redis_client, a, set_a)  # a's state now holds both members' 110 examples
    _learn(set_a, _examples(109, 4), "events:0")
    assert not a.warmup_due(set_a)
    _learn(set_a, _examples(1, 5), "events:0")
    assert a.warmup_due(set_a), "as many as the state held at the last sync"
    _sync(redis_client, a, set_a)  # 220 held
    _learn(set_a, _examples(220, 6), "events:0")
    _sync(redis_client, a, set_a)  # 440 held: past the warm-up
    _learn(set_a, _examples(1000, 7), "events:0")
    assert not a.warmup_due(set_a), "after the warm-up only sync.every_events and every_s count"
    c, set_c = _member(redis_client, namespace, SyncSettings(merge="replay", warmup_examples=400))
    assert sum(set_c.sources.values()) == 440
    _learn(set_c, _examples(60, 8), "events:2")
    assert not c.warmup_due(set_c), "a member joining a grown group does not warm up again"
