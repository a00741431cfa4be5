"""CheckpointStore on a real Redis: round trip, refusals by reason, one MULTI/EXEC per save, delete."""

from __future__ import annotations

import pickle
import time

import pytest
import redis

from services.stack import RedisServer
from shared.state.checkpoints import CheckpointStore, PartitionCheckpoint, SnapshotRejected, library_versions

pytestmark = pytest.mark.integration

KEY = b"integration-key"


def _store(client: redis.Redis, **kwargs: object) -> CheckpointStore:
    return CheckpointStore(client, "sltest", "group-a", KEY, **kwargs)  # type: ignore[arg-type]


def _state(offset: int, tag: bytes = b"a") -> PartitionCheckpoint:
    return PartitionCheckpoint(
        models={"logreg": ("river", b"river-" + tag), "gru": ("torch.gru", b"torch-" + tag * 1000)},
        next_offset=offset,
        extra={"learned": {"logreg": offset, "gru": offset - 1}, "champion": "logreg"},
        blobs={"scoreboard": pickle.dumps({"accuracy": 0.5})},
    )


def _rejected(store: CheckpointStore, topic: str, partition: int) -> str:
    with pytest.raises(SnapshotRejected) as caught:
        store.load(topic, partition)
    return caught.value.reason


def test_round_trip_of_several_partitions(redis_client: redis.Redis) -> None:
    store = _store(redis_client, clock=lambda: 1700000123.5)
    assert store.load("events", 0) is None
    assert store.last_saved_at() is None
    saved_at = store.save({("events", 0): _state(100, b"x"), ("events", 1): _state(200, b"y")})
    assert saved_at == 1700000123.5
    assert store.last_saved_at() == 1700000123.5
    first, second = store.load("events", 0), store.load("events", 1)
    assert first is not None and second is not None
    assert first.models == _state(100, b"x").models and first.next_offset == 100
    assert second.models == _state(200, b"y").models and second.next_offset == 200
    assert second.extra == {"learned": {"logreg": 200, "gru": 199}, "champion": "logreg"}
    assert pickle.loads(second.blobs["scoreboard"]) == {"accuracy": 0.5}
    assert second.created_at == 1700000123.5
    assert second.versions == library_versions()
    assert store.saved_partitions() == {("events", 0): 1700000123.5, ("events", 1): 1700000123.5}


def test_a_new_save_replaces_the_old_one(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    store.save({("events", 0): _state(10)})
    store.save({("events", 0): _state(20, b"z")})
    loaded = store.load("events", 0)
    assert loaded is not None and loaded.next_offset == 20 and loaded.models == _state(20, b"z").models


def test_groups_do_not_see_each_other(redis_client: redis.Redis) -> None:
    _store(redis_client).save({("events", 0): _state(10)})
    other = CheckpointStore(redis_client, "sltest", "group-b", KEY)
    assert other.load("events", 0) is None


def test_tampered_payload_is_refused(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    store.save({("events", 0): _state(10)})
    blob = bytearray(redis_client.get(store.key_for("events", 0)))  # type: ignore[arg-type]
    blob[-1] ^= 0xFF
    redis_client.set(store.key_for("events", 0), bytes(blob))
    assert _rejected(store, "events", 0) == "tampered"


def test_tampered_header_is_refused(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    store.save({("events", 0): _state(10)})
    blob: bytes = redis_client.get(store.key_for("events", 0))  # type: ignore[assignment]
    edited = blob.replace(b'"next_offset":10', b'"next_offset":90')
    assert edited != blob
    redis_client.set(store.key_for("events", 0), edited)
    assert _rejected(store, "events", 0) == "tampered"


def test_checkpoint_copied_to_another_partition_is_refused(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    store.save({("events", 0): _state(10)})
    redis_client.copy(store.key_for("events", 0), store.key_for("events", 1))
    assert _rejected(store, "events", 1) == "tampered"


def test_unsigned_blob_is_refused(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    redis_client.set(store.key_for("events", 0), pickle.dumps({"logreg": b"weights"}))
    assert _rejected(store, "events", 0) == "unsigned"


def test_wrong_key_is_refused(redis_client: redis.Redis) -> None:
    _store(redis_client).save({("events", 0): _state(10)})
    other_key = CheckpointStore(redis_client, "sltest", "group-a", b"another-key")
    assert _rejected(other_key, "events", 0) == "tampered"


def test_incompatible_library_version_is_refused(redis_client: redis.Redis) -> None:
    running = library_versions()
    old = _store(redis_client, versions={**running, "river": "0.1.0"})
    old.save({("events", 0): _state(10)})
    assert _rejected(_store(redis_client), "events", 0) == "incompatible"


def test_truncated_blob_is_corrupt(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    store.save({("events", 0): _state(10)})
    blob: bytes = redis_client.get(store.key_for("events", 0))  # type: ignore[assignment]
    redis_client.set(store.key_for("events", 0), blob[:20])
    assert _rejected(store, "events", 0) == "corrupt"


def test_a_failing_save_writes_no_partition(redis_client: redis.Redis) -> None:
    store = _store(redis_client, clock=lambda: 1000.0)
    store.save({("events", 0): _state(10), ("events", 1): _state(11)})
    invalid = PartitionCheckpoint(models={}, next_offset=99, extra={"not_json": object()})
    with pytest.raises(ValueError):
        store.save({("events", 0): _state(50), ("events", 1): invalid})
    first, second = store.load("events", 0), store.load("events", 1)
    assert first is not None and first.next_offset == 10, "the valid partition of the failed save was not written"
    assert second is not None and second.next_offset == 11
    assert store.last_saved_at() == 1000.0


def test_a_save_is_one_transaction(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    partitions = {("events", p): _state(p + 1) for p in range(3)}
    with redis_client.monitor() as monitor:
        store.save(partitions)
        commands: list[str] = []
        while not commands or commands[-1] != "EXEC":
            commands.append(monitor.next_command()["command"].split(" ")[0].upper())
    assert commands.count("MULTI") == 1 and commands.count("EXEC") == 1
    start = commands.index("MULTI")
    inside, before = commands[start + 1:-1], commands[:start]
    assert inside.count("SET") == len(partitions) + 1, "every partition and the save time inside one MULTI/EXEC"
    assert inside.count("HSET") == len(partitions)
    assert not {"SET", "HSET"} & set(before), f"writes before MULTI: {before}"


def test_delete_removes_one_partition(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    store.save({("events", 0): _state(10), ("events", 1): _state(11)})
    store.delete("events", 0)
    assert store.load("events", 0) is None
    assert store.load("events", 1) is not None
    assert set(store.saved_partitions()) == {("events", 1)}


def test_a_checkpoint_survives_a_redis_crash(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """Append-only persistence (deploy/redis/redis-local.conf): a checkpoint older than 1 s survives SIGKILL."""
    assert redis_client.config_get("appendonly") == {"appendonly": "yes"}
    assert redis_client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    store = _store(redis_client)
    store.save({("events", 0): _state(42, b"d")})
    time.sleep(1.5)  # appendfsync everysec
    assert redis_server.kill()
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        loaded = _store(client).load("events", 0)
    finally:
        client.close()
    assert loaded is not None and loaded.next_offset == 42 and loaded.models == _state(42, b"d").models


def test_a_background_checkpoint_written_by_a_forked_child_restores(redis_client: redis.Redis) -> None:
    """``checkpoint.background``: the child writes through the parent's Redis client (redis-py reconnects after a
    fork), and the restored ARF predicts like the forest at the fork; the parent's connection still works."""
    from prometheus_client import CollectorRegistry

    from services.worker.checkpointing import Checkpointer
    from shared.datasets import iter_source
    from shared.learners.base import Row
    from shared.learners.registry import build_learner
    from shared.monitoring.metrics import Metrics
    from shared.settings import CheckpointSettings, ModelSettings, PreprocessingSettings
    from shared.steps.models import ModelStep

    arf = ModelSettings(name="arf", estimator="river.forest.ARFClassifier", params={"n_models": 3})
    models = ModelStep([arf], lambda m: build_learner(m, PreprocessingSettings(), 7))
    tp = ("events", 0)
    models.assign(tp)
    samples = list(iter_source("phishing", seed=7, limit=1500))
    learner = models.sets[tp].learners["arf"]
    learner.learn_many([Row(s.features) for s in samples[:1000]], [s.label for s in samples[:1000]])
    probe = [Row(s.features) for s in samples[1000:1100]]
    at_fork = [learner.predict_one(row) for row in probe]
    metrics = Metrics(CollectorRegistry())
    checkpointer = Checkpointer(_store(redis_client), models, CheckpointSettings(background_min_ms=0.0), metrics)
    assert checkpointer.save({tp: 1000}, background=True)
    learner.learn_many([Row(s.features) for s in samples[1100:]], [s.label for s in samples[1100:]])
    checkpointer.join()
    assert metrics.registry.get_sample_value("streamlearn_checkpoints_total", {"outcome": "ok"}) == 1
    restored = checkpointer.restore(tp, committed=1000)
    assert restored.seek_to == 1000
    assert [restored.model_set.learners["arf"].predict_one(row) for row in probe] == at_fork
    assert redis_client.ping()
