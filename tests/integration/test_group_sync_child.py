"""A group-scope sync whose snapshot is taken by a forked child (docs/architecture.md, "Periodic checkpoints off the
loop"), over the real Redis: the loop merges, the child snapshots the state as of the sync and writes it with the
sync's deltas only once told that the outputs before it are durable; a dropped one writes nothing and its deltas go
with the next sync."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from prometheus_client import CollectorRegistry

from services.worker.checkpointing import Checkpointer
from shared.datasets import iter_source
from shared.learners.base import Row
from shared.learners.registry import build_learner
from shared.monitoring.metrics import Metrics
from shared.settings import CheckpointSettings, ModelSettings, PreprocessingSettings, SyncSettings
from shared.state.checkpoints import CheckpointStore
from shared.steps.models import ModelSet, ModelStep
from shared.sync.group import GroupSync

pytestmark = pytest.mark.integration

ARF = ModelSettings(name="arf", estimator="river.forest.ARFClassifier", params={"n_models": 3})
KEY = b"k" * 32
TP = ("events", 0)
SAMPLES = list(iter_source("phishing", seed=7, limit=900))


def _worker(
    client: redis.Redis, namespace: str, *, background_min_ms: float = 0.0,
) -> tuple[Checkpointer, ModelStep, GroupSync, Metrics]:
    models = ModelStep([ARF], lambda m: build_learner(m, PreprocessingSettings(), 7), scope="group")
    models.assign(TP)
    metrics = Metrics(CollectorRegistry())
    group = GroupSync(client, namespace, "group", KEY, SyncSettings(), metrics)
    shared = models.shared_set()
    assert shared is not None
    group.adopt(shared, None)
    store = CheckpointStore(client, namespace, "group", KEY)
    # background_min_ms 0 (unless a test says otherwise): every periodic sync after the first goes to a child
    checkpointer = Checkpointer(store, models, CheckpointSettings(background_min_ms=background_min_ms), metrics,
                                group=group)
    return checkpointer, models, group, metrics


def _held(
    client: redis.Redis, namespace: str, *, before_hold: Callable[[], None] | None = None,
) -> tuple[Checkpointer, ModelSet, GroupSync, Metrics]:
    """A worker after its first sync (in the loop: it measures what a snapshot costs) and 200 more examples,
    holding its second sync (in a child, unless ``before_hold`` took the fork away)."""
    checkpointer, models, group, metrics = _worker(client, namespace)
    model_set = models.shared_set()
    assert model_set is not None
    _learn(model_set, 0, 200)
    assert checkpointer.save({TP: 200})
    _learn(model_set, 200, 400)
    if before_hold is not None:
        before_hold()
    checkpointer.hold({TP: 400})
    return checkpointer, model_set, group, metrics


def _held_in_child(client: redis.Redis, namespace: str) -> tuple[Checkpointer, ModelSet, GroupSync, Metrics]:
    held = _held(client, namespace)
    assert held[0]._child is not None and held[0]._held is None, "the snapshot went to a child"
    return held


def _learn(model_set: ModelSet, start: int, stop: int) -> None:
    chunk = SAMPLES[start:stop]
    model_set.learners["arf"].process([Row(dict(s.features)) for s in chunk], [s.label for s in chunk])
    model_set.learned["arf"] = model_set.learned.get("arf", 0) + len(chunk)
    model_set.sources["events:0"] = model_set.sources.get("events:0", 0) + len(chunk)


def _probe(model_set: ModelSet) -> list[object]:
    return [model_set.learners["arf"].predict_one(Row(dict(s.features))) for s in SAMPLES[800:]]


def _ok(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("streamlearn_checkpoints_total", {"outcome": "ok"}) or 0.0


def _published_deltas(client: redis.Redis, namespace: str) -> int:
    return sum(int(client.xlen(key)) for key in client.scan_iter(f"{namespace}*deltas*"))


def test_a_child_writes_the_state_of_the_sync_and_its_deltas_once_told(
    redis_client: redis.Redis, unique_name: Callable[[str], str],
) -> None:
    namespace = unique_name("ns")
    checkpointer, model_set, group, metrics = _held_in_child(redis_client, namespace)
    at_sync = _probe(model_set)
    _learn(model_set, 400, 800)  # the loop goes on learning while the child waits
    assert _probe(model_set) != at_sync
    assert not checkpointer.due(), "no checkpoint is due while one is held"
    assert _published_deltas(redis_client, namespace) == 1 and _ok(metrics) == 1, "nothing written before told"
    assert checkpointer.write_held()
    checkpointer.join()
    assert _ok(metrics) == 2 and checkpointer.healthy
    assert _published_deltas(redis_client, namespace) == 2, "the sync's delta went with its checkpoint"
    assert group._unpublished == []
    restored = checkpointer.restore_group({TP: 400})[TP]
    assert restored.seek_to == 400
    assert _probe(restored.model_set) == at_sync, "the checkpoint is the state at the sync, not at the write"


def test_a_dropped_sync_writes_nothing_and_its_deltas_go_with_the_next(
    redis_client: redis.Redis, unique_name: Callable[[str], str],
) -> None:
    namespace = unique_name("ns")
    checkpointer, model_set, group, metrics = _held_in_child(redis_client, namespace)
    checkpointer.drop_held()  # its outputs will never be durable
    assert checkpointer._child is None, "a drop waits for the child to exit"
    assert _ok(metrics) == 1 and checkpointer.healthy and _published_deltas(redis_client, namespace) == 1
    assert len(group._unpublished) == 1, "the dropped sync's delta is queued"
    _learn(model_set, 400, 600)
    assert checkpointer.save({TP: 600})  # forced: in the loop
    assert _ok(metrics) == 2 and _published_deltas(redis_client, namespace) == 3 and group._unpublished == []


def test_a_forced_checkpoint_never_waits_for_a_held_sync_nobody_told_to_write(
    redis_client: redis.Redis, unique_name: Callable[[str], str],
) -> None:
    namespace = unique_name("ns")
    checkpointer, model_set, group, metrics = _held_in_child(redis_client, namespace)
    _learn(model_set, 400, 500)
    assert checkpointer.save({TP: 500})  # drops the held one, then writes its own with both deltas
    assert _ok(metrics) == 2 and _published_deltas(redis_client, namespace) == 3 and group._unpublished == []
    assert checkpointer.restore_group({TP: 500})[TP].seek_to == 500


def test_without_a_child_the_sync_is_held_in_the_loop(
    redis_client: redis.Redis, unique_name: Callable[[str], str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import services.worker.checkpointing as checkpointing

    def no_fork() -> int:
        raise OSError(12, "Cannot allocate memory")

    namespace = unique_name("ns")
    checkpointer, model_set, _, metrics = _held(
        redis_client, namespace, before_hold=lambda: monkeypatch.setattr(checkpointing.os, "fork", no_fork))
    assert checkpointer._child is None and checkpointer._held is not None, "held by the loop"
    at_sync = _probe(model_set)
    _learn(model_set, 400, 600)
    assert checkpointer.write_held()
    assert _ok(metrics) == 2 and _published_deltas(redis_client, namespace) == 2
    assert _probe(checkpointer.restore_group({TP: 400})[TP].model_set) == at_sync


def test_the_first_sync_after_a_fresh_start_goes_to_a_child_then_its_report_decides(
    redis_client: redis.Redis, unique_name: Callable[[str], str],
) -> None:
    """The assignment's checkpoint measured a forest that had learned nothing: once it has, the first periodic sync
    is snapshotted by a child (its cost is unknown), and the next one follows what the child reported."""
    namespace = unique_name("ns")
    checkpointer, models, _, metrics = _worker(redis_client, namespace, background_min_ms=10_000.0)
    model_set = models.shared_set()
    assert model_set is not None
    assert checkpointer.save({TP: 0})  # at assignment: nothing learned yet, in the loop
    _learn(model_set, 0, 400)
    checkpointer.account(400)
    checkpointer.hold({TP: 400})
    assert checkpointer._child is not None and checkpointer._held is None, "grown since measured: a child"
    assert checkpointer.write_held()
    checkpointer.join()
    assert _ok(metrics) == 2 and checkpointer.last_duration_s < 10.0
    _learn(model_set, 400, 500)
    checkpointer.account(100)  # 1.25 times the events the child's checkpoint held: far under 10 s
    checkpointer.hold({TP: 500})
    assert checkpointer._child is None and checkpointer._held is not None, "measured quick: held by the loop"
    assert checkpointer.write_held()
    assert _ok(metrics) == 3
    assert checkpointer.restore_group({TP: 500})[TP].seek_to == 500
