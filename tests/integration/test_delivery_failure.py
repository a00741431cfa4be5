"""At-least-once: an output the broker refuses stops the worker, and nothing after it is committed or
checkpointed; once the broker takes it, a restart publishes every output.

The refusal: the dead-letter topic is compacted by mistake, and an invalid event without a key goes there
keyless as it came (a compacted topic refuses a record without a key; the producer cannot retry that)."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
import redis
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from services.worker import Worker
from shared.kafka.admin import ensure_topics
from shared.kafka.transport import TransportError
from shared.state.checkpoints import CheckpointStore
from tests.integration.helpers import (
    committed_total,
    make_settings,
    produce,
    read_topic,
    run_until_it_stops,
    running_worker,
    wait_for,
)

pytestmark = pytest.mark.integration

N_EVENTS = 300
N_INVALID = 10


def test_a_refused_output_stops_the_worker_uncommitted_and_a_restart_publishes_it(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], kafka_client: str
) -> None:
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url,
        models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}],
        kafka={"exactly_once": False, "client": kafka_client, "max_poll_records": 100},
        # a checkpoint at every commit: one taken after the refusal would make a restart skip its events
        checkpoint={"every_events": 1, "background_min_ms": 0},
    )
    t = settings.kafka.topics
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(t.dead_letters, 1, 1, topic_configs={"cleanup.policy": "compact"})])
        ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                        t.dead_letters: 1})
        valid: list[tuple[bytes | None, bytes | None]] = [
            (f"e{i}".encode(), orjson.dumps({"id": f"e{i}", "features": {"x": float(i)}, "label": i % 2 == 0}))
            for i in range(N_EVENTS)
        ]
        invalid: list[tuple[bytes | None, bytes | None]] = [(None, b"{not json")] * N_INVALID
        produce(kafka_bootstrap, t.events, valid[:100] + invalid + valid[100:])

        errors = run_until_it_stops(Worker(settings, registry=CollectorRegistry()), max_seconds=60)
        assert len(errors) == 1 and isinstance(errors[0], TransportError), errors
        assert "records failed" in str(errors[0]) and t.dead_letters in str(errors[0]), errors[0]
        # the first refused dead letter is the event at offset 100: nothing from there on is committed
        # or checkpointed (what came before may be: its outputs were delivered)
        committed = committed_total(kafka_bootstrap, settings.kafka.group_id, t.events)
        assert committed <= 100
        client = redis.Redis.from_url(redis_url)
        try:
            store = CheckpointStore(client, settings.redis.namespace, settings.kafka.group_id,
                                    settings.hmac_key.get_secret_value().encode())
            checkpoint = store.load(t.events, 0)
            assert checkpoint is None or checkpoint.next_offset <= 100, checkpoint.next_offset
        finally:
            client.close()

        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t.dead_letters,
                                            configs={"cleanup.policy": "delete"})])
        # the restart runs until it has committed every record, not for a fixed time (a slow group join in a
        # loaded CI run left events 190-299 unpublished after 20 s); it raises on exit if it failed
        with running_worker(settings, registry=CollectorRegistry()):
            wait_for(lambda: committed_total(kafka_bootstrap, settings.kafka.group_id, t.events)
                     >= N_EVENTS + N_INVALID, timeout_s=90, what="the restart to commit every record")
    finally:
        admin.close()
    predictions = read_topic(kafka_bootstrap, t.predictions, N_EVENTS, timeout_s=30, to_end=True)
    # at-least-once: what the first run had delivered is published again (the same predictions), nothing is lost
    assert {orjson.loads(r.value)["id"] for r in predictions} == {f"e{i}" for i in range(N_EVENTS)}
    assert len(read_topic(kafka_bootstrap, t.dead_letters, N_INVALID, timeout_s=10, to_end=True)) >= N_INVALID
    assert committed_total(kafka_bootstrap, settings.kafka.group_id, t.events) == N_EVENTS + N_INVALID
