"""Issue 4, acceptance 4a and the state-lost policies, at the worker level on real Kafka and Redis.

A worker runs over a first part of the stream and drains (final checkpoint). Then its checkpoint is tampered with,
or Redis loses it, while Kafka keeps the committed offsets; a new worker refuses the snapshot (or finds none),
says so in the log and in metrics, and follows ``checkpoint.on_state_lost``. Exactly-once mode throughout: no
prediction is published twice.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import orjson
import pytest
import redis
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from services.replayer import replay
from services.replayer.replay import event_record
from shared.datasets import Sample, iter_source
from shared.kafka.admin import ensure_topics
from shared.learners.base import Learner, Row
from shared.learners.registry import build_learner, restore_learner
from shared.settings import ModelSettings, Settings
from shared.state.checkpoints import CheckpointStore, PartitionCheckpoint
from tests.integration.helpers import (
    committed_total,
    make_settings,
    produce,
    read_topic,
    running_worker,
    sample_value,
    wait_for,
)
from tests.keys import TEST_HMAC_KEY

pytestmark = pytest.mark.integration

LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}
HMAC_KEY = TEST_HMAC_KEY
FIRST, SECOND = 1000, 500
SEED = 5


def _settings(kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], policy: str) -> Settings:
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG], hmac_key=HMAC_KEY,
        kafka={"exactly_once": True, "session_timeout_ms": 6000},
        checkpoint={"on_state_lost": policy},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    return settings


def _store(redis_url: str, settings: Settings) -> tuple[redis.Redis, CheckpointStore]:
    client = redis.Redis.from_url(redis_url)
    return client, CheckpointStore(client, settings.redis.namespace, settings.kafka.group_id, HMAC_KEY.encode())


def _committed(bootstrap: str, settings: Settings) -> int:
    try:
        return committed_total(bootstrap, settings.kafka.group_id, settings.kafka.topics.events)
    except KafkaError:  # the group's coordinator is not there yet
        return -1


def _run_until_committed(kafka_bootstrap: str, settings: Settings, n: int) -> CollectorRegistry:
    registry = CollectorRegistry()
    with running_worker(settings, registry):
        wait_for(lambda: _committed(kafka_bootstrap, settings) == n, 90, f"{n} committed offsets")
    return registry


def _first_part_then_second(
    kafka_bootstrap: str, redis_url: str, settings: Settings, damage: Callable[[redis.Redis, CheckpointStore], None]
) -> tuple[CollectorRegistry, PartitionCheckpoint]:
    topic = settings.kafka.topics.events
    replay("agrawal", bootstrap_servers=kafka_bootstrap, topic=topic, limit=FIRST, seed=SEED, progress=False)
    _run_until_committed(kafka_bootstrap, settings, FIRST)
    client, store = _store(redis_url, settings)
    try:
        saved = store.load(topic, 0)
        assert saved is not None and saved.next_offset == FIRST, "the drained worker checkpointed everything"
        damage(client, store)
        # the rest of the stream: ids continue after the first part
        samples = list(iter_source("agrawal", seed=SEED, limit=FIRST + SECOND))[FIRST:]
        producer_items: list[tuple[bytes | None, bytes | None]] = [
            event_record(s, f"agrawal-{SEED}-{FIRST + i:09d}", with_label=True, ts=0.0) for i, s in enumerate(samples)
        ]
        produce(kafka_bootstrap, topic, producer_items)
        registry = _run_until_committed(kafka_bootstrap, settings, FIRST + SECOND)
        final = store.load(topic, 0)
    finally:
        client.close()
    assert final is not None and final.next_offset == FIRST + SECOND
    return registry, final


def _exactly_once(kafka_bootstrap: str, settings: Settings) -> None:
    records = read_topic(kafka_bootstrap, settings.kafka.topics.predictions, FIRST + SECOND)
    counts = Counter(orjson.loads(r.value)["id"] for r in records)
    assert set(counts) == {f"agrawal-{SEED}-{i:09d}" for i in range(FIRST + SECOND)}
    assert max(counts.values()) == 1, "nothing republished by the rebuild or the restart"


def _reference(n: int) -> tuple[list[Sample], Learner]:
    samples = list(iter_source("agrawal", seed=SEED, limit=n + 200))
    learner = build_learner(ModelSettings(**LOGREG), Settings().preprocessing, Settings().worker.seed)
    learner.learn_many([Row(s.features, s.key) for s in samples[:n]], [s.label for s in samples[:n]])
    return samples[n:], learner


def test_a_tampered_snapshot_is_refused_and_the_models_are_rebuilt(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(kafka_bootstrap, redis_url, unique_name, "rebuild")

    def tamper(client: redis.Redis, store: CheckpointStore) -> None:
        key = store.key_for(settings.kafka.topics.events, 0)
        blob = bytearray(client.get(key))  # type: ignore[arg-type]
        blob[-10] ^= 0x01  # one bit of the model bytes
        client.set(key, bytes(blob))

    caplog.set_level(logging.INFO, logger="streamlearn")
    registry, final = _first_part_then_second(kafka_bootstrap, redis_url, settings, tamper)
    # refused at every assignment until a new checkpoint replaces it: a rebalance during the rebuild (before the
    # rebuilt models have an offset to be checkpointed at) reads the tampered snapshot, and refuses it, again
    rejected = sample_value(registry, "streamlearn_snapshots_rejected_total", {"reason": "tampered"})
    assert rejected is not None and rejected >= 1
    assert sample_value(registry, "streamlearn_state_lost_total") == rejected
    refused = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "refused" in r.getMessage()]
    assert refused and "tampered" in refused[0] and "on_state_lost=rebuild" in refused[0], refused
    # rebuilt from the earliest offset: the final model learned every event once, as an uninterrupted run did
    assert final.extra["learned"] == {"logreg": FIRST + SECOND}
    probe, reference = _reference(FIRST + SECOND)
    kind, data = final.models["logreg"]
    model = restore_learner(kind, data)
    rows = [Row(s.features, s.key) for s in probe]
    assert model.predict_many(rows) == reference.predict_many(rows)
    _exactly_once(kafka_bootstrap, settings)


def test_redis_that_comes_back_empty_is_reported_and_fresh_models_start(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(kafka_bootstrap, redis_url, unique_name, "fresh")

    def lose_everything(client: redis.Redis, store: CheckpointStore) -> None:
        keys = list(client.scan_iter(match=f"{settings.redis.namespace}:*"))
        assert keys
        client.delete(*keys)

    caplog.set_level(logging.INFO, logger="streamlearn")
    registry, final = _first_part_then_second(kafka_bootstrap, redis_url, settings, lose_everything)
    assert sample_value(registry, "streamlearn_state_lost_total") == 1
    assert (sample_value(registry, "streamlearn_snapshots_rejected_total", {"reason": "tampered"}) or 0) == 0
    lost = [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and "no usable checkpoint" in r.getMessage()]
    assert lost and f"committed offset {FIRST}" in lost[0] and "on_state_lost=fresh" in lost[0], lost
    # fresh models from the committed offset: only the second part was learned
    assert final.extra["learned"] == {"logreg": SECOND}
    _exactly_once(kafka_bootstrap, settings)
