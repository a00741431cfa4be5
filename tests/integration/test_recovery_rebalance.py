"""A second worker joins mid-stream: the first commits its transaction and checkpoints on revoke, the second
restores the partition it gets from that checkpoint. Exactly-once predictions; every event learned once.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from services.replayer import replay
from services.replayer.replay import event_record
from shared.datasets import iter_source
from shared.kafka.admin import ensure_topics
from shared.learners.base import Row
from shared.learners.registry import build_learner, restore_learner
from shared.settings import ModelSettings, Settings, load_settings
from shared.state.checkpoints import CheckpointStore
from shared.steps.models import ModelSet
from shared.sync.group import GroupSync, SyncRecord
from tests.integration.helpers import (
    events_committed,
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
FIRST, SECOND = 1500, 1500


def _with_transactional_id(settings: Settings, instance: str) -> Settings:
    data = settings.model_dump(mode="python")
    data["kafka"]["transactional_id"] = instance
    data["redis"]["url"] = settings.redis.url.get_secret_value()
    data["hmac_key"] = HMAC_KEY
    return load_settings(None, **data)


@pytest.mark.parametrize("scope", ["partition", "group"])
def test_a_joining_worker_takes_over_a_partition_from_the_revoke_checkpoint(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], kafka_client: str, scope: str,
) -> None:
    """Partition scope: each partition's checkpointed models equal a reference learned on that partition alone.
    Group scope: the group state, read back as a restore reads it, learned every event of each partition once."""
    base = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG], hmac_key=HMAC_KEY,
        kafka={"exactly_once": True, "session_timeout_ms": 6000, "client": kafka_client},
        # no periodic checkpoint during the test: what the second worker restores comes from the revoke
        checkpoint={"every_events": 1_000_000, "every_seconds": 3600.0},
        sync={"scope": scope, "every_events": 1_000_000, "every_s": 3600.0},
    )
    t = base.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 2, t.labels: 2, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    first, second = _with_transactional_id(base, "a"), _with_transactional_id(base, "b")
    replay("agrawal", bootstrap_servers=kafka_bootstrap, topic=t.events, limit=FIRST, seed=9, progress=False)
    registry_a, registry_b = CollectorRegistry(), CollectorRegistry()
    with running_worker(first, registry_a):
        wait_for(lambda: events_committed(kafka_bootstrap, base) == FIRST, 90, "the first part committed")
        with running_worker(second, registry_b):
            wait_for(lambda: (sample_value(registry_b, "streamlearn_ready") or 0) == 1, 60, "the second worker")
            _produce_second_part(kafka_bootstrap, t.events)
            wait_for(lambda: events_committed(kafka_bootstrap, base) == FIRST + SECOND, 90, "everything committed")
            processed_b = sample_value(registry_b, "streamlearn_events_total", {"outcome": "valid"}) or 0
            state_lost_b = sample_value(registry_b, "streamlearn_state_lost_total")
    assert processed_b > 0, "the second worker got a partition"
    assert state_lost_b == 0, "it found the checkpoint the first worker wrote on revoke"

    events = read_topic(kafka_bootstrap, t.events, FIRST + SECOND)
    predictions = read_topic(kafka_bootstrap, t.predictions, FIRST + SECOND)
    counts = Counter(orjson.loads(r.value)["id"] for r in predictions)
    ids = {orjson.loads(r.value)["id"] for r in events}
    lost, duplicated = len(ids - set(counts)), sum(c - 1 for c in counts.values() if c > 1)
    print(f"\nrebalance: second worker processed {processed_b:.0f} events; lost={lost} duplicated={duplicated}")
    assert len(ids) == FIRST + SECOND and lost == 0 and duplicated == 0

    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in sorted(events, key=lambda r: (r.partition, r.offset)):
        by_partition[record.partition].append(orjson.loads(record.value))
    client = redis.Redis.from_url(redis_url)
    try:
        store = CheckpointStore(client, base.redis.namespace, base.kafka.group_id, HMAC_KEY.encode())
        for partition, stream in by_partition.items():
            checkpoint = store.load(t.events, partition)
            assert checkpoint is not None and checkpoint.next_offset == len(stream)
            if scope == "group":
                model_set = ModelSet({}, {}, {str(k): int(v) for k, v in checkpoint.extra["sources"].items()})
                GroupSync(client, base.redis.namespace, base.kafka.group_id, HMAC_KEY.encode(), base.sync).adopt(
                    model_set, SyncRecord.from_json(checkpoint.extra["sync"]))
                assert model_set.sources == {f"{t.events}:{p}": len(s) for p, s in by_partition.items()}, \
                    "each event learned exactly once by the group"
                continue
            assert checkpoint.extra["learned"] == {"logreg": len(stream)}, "each event learned exactly once"
            reference = build_learner(ModelSettings(**LOGREG), base.preprocessing, base.worker.seed)
            reference.learn_many([Row(e["features"]) for e in stream], [e["label"] for e in stream])
            kind, data = checkpoint.models["logreg"]
            restored = restore_learner(kind, data)
            probe = [Row(e["features"]) for e in by_partition[1 - partition][:200]]
            assert restored.predict_many(probe) == reference.predict_many(probe)
    finally:
        client.close()


def _produce_second_part(bootstrap: str, topic: str) -> None:
    samples = list(iter_source("agrawal", seed=9, limit=FIRST + SECOND))[FIRST:]
    produce(bootstrap, topic, [
        event_record(s, f"agrawal-9-{FIRST + i:09d}", with_label=True, ts=0.0) for i, s in enumerate(samples)
    ])
