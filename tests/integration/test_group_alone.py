"""A group-scope worker that holds every partition of the events topic has nobody to sync with: it checkpoints at
the checkpoint cadence, not every ``sync.every_events``, and records no replay examples; a second worker makes
both sync at the sync cadence again (real broker, real Redis, each client)."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from shared.kafka.admin import ensure_topics
from tests.integration.helpers import (
    committed_total,
    make_settings,
    produce,
    running_worker,
    sample_value,
    wait_for,
)

N_EVENTS = 1200


def _events(start: int, n: int) -> list[tuple[bytes | None, bytes | None]]:
    return [(f"e{i}".encode(), orjson.dumps({"id": f"e{i}", "features": {"x": float(i % 7)}, "label": i % 2 == 0}))
            for i in range(start, start + n)]


def _committed(bootstrap: str, group_id: str, topic: str) -> int:
    """The group's committed total, 0 while the broker's group coordinator is still starting."""
    try:
        return committed_total(bootstrap, group_id, topic)
    except KafkaError:
        return 0


def test_a_worker_holding_every_partition_syncs_at_the_checkpoint_cadence(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], kafka_client: str,
) -> None:
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url,
        models=[{"name": "tree", "estimator": "river.tree.HoeffdingTreeClassifier"}],  # replays by default
        kafka={"exactly_once": False, "client": kafka_client, "max_poll_records": 50},
        sync={"scope": "group", "every_events": 50, "every_s": 3600.0, "warmup_examples": 0},
        # no duty-cycle deferral: the syncs follow the cadences alone, within this short run
        checkpoint={"every_events": 1_000_000, "every_seconds": 3600.0, "max_time_fraction": 1.0},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 2, t.labels: 2, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    produce(kafka_bootstrap, t.events, _events(0, N_EVENTS))
    registry = CollectorRegistry()
    with running_worker(settings, registry=registry) as worker:
        wait_for(lambda: _committed(kafka_bootstrap, settings.kafka.group_id, t.events) >= N_EVENTS,
                 timeout_s=60, what="one worker to commit every event")
        # the worker's own view (its consumer answers other threads late while its loop polls: librdkafka)
        assert sorted(tp for tp in worker.model_step.sets if tp[0] == t.events) == [(t.events, 0), (t.events, 1)]
        group = worker.checkpointer.group if worker.checkpointer is not None else None
        assert group is not None and group.alone
        learner = next(iter(worker.model_step.shared_set().learners.values()))  # type: ignore[union-attr]
        assert learner._replay is not None and len(learner._replay) == 0, "nothing recorded for nobody"
        alone_syncs = sample_value(registry, "streamlearn_syncs_total", {"outcome": "ok"}) or 0.0
        # the partitions' first checkpoints only (every 50 events would be 24 syncs)
        assert alone_syncs <= 3, alone_syncs

        second_registry = CollectorRegistry()
        with running_worker(settings, registry=second_registry) as second:
            wait_for(lambda: second.model_step.sets != {} and worker.model_step.sets != {}
                     and len(second.model_step.sets) + len(worker.model_step.sets) == 2,
                     timeout_s=60, what="the two workers to share the partitions")
            assert worker.checkpointer is not None and worker.checkpointer.group is not None
            assert second.checkpointer is not None and second.checkpointer.group is not None
            assert not worker.checkpointer.group.alone and not second.checkpointer.group.alone
            before = (sample_value(registry, "streamlearn_syncs_total", {"outcome": "ok"}) or 0.0) + \
                (sample_value(second_registry, "streamlearn_syncs_total", {"outcome": "ok"}) or 0.0)
            produce(kafka_bootstrap, t.events, _events(N_EVENTS, N_EVENTS))
            wait_for(lambda: _committed(kafka_bootstrap, settings.kafka.group_id, t.events) >= 2 * N_EVENTS,
                     timeout_s=60, what="two workers to commit every event")
            after = (sample_value(registry, "streamlearn_syncs_total", {"outcome": "ok"}) or 0.0) + \
                (sample_value(second_registry, "streamlearn_syncs_total", {"outcome": "ok"}) or 0.0)
            # 1,200 events over two workers syncing every 50: about 24 syncs, bounded by the commit cadence
            assert after - before >= 6, (before, after)
