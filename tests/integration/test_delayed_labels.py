"""Issue 4, delayed labels on the real broker and Redis: offline equivalence, exactly-once learning, bounded join.

Acceptance 1 drives the worker window by window (a window's events, then the labels that became due in it) so
that the order in which the worker predicts and learns is fixed by the schedule, not by how Kafka interleaves two
topics in a poll. The same schedule then runs offline through the same River pipeline, one per partition.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest
import redis
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry
from river import metrics

from services.replayer import DelayedLabelPlan, delayed_schedule, event_record, label_record, replay
from shared.datasets import iter_source
from shared.kafka.admin import ensure_topics
from shared.learners.registry import build_river_pipeline
from shared.settings import Settings
from shared.state.label_join import LabelJoin
from tests.integration.helpers import (
    committed_total,
    make_settings,
    read_topic,
    running_worker,
    sample_value,
    wait_for,
)

pytestmark = pytest.mark.integration

LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}
PARTITIONS = 2


def _committed(bootstrap: str, group: str, topic: str) -> int:
    """Committed offsets summed over ``topic``; -1 while the group coordinator is not answering yet."""
    try:
        return committed_total(bootstrap, group, topic)
    except KafkaError:
        return -1


def _create_topics(bootstrap: str, settings: Settings, partitions: int) -> None:
    t = settings.kafka.topics
    ensure_topics(bootstrap, {t.events: partitions, t.labels: partitions, t.predictions: 1,
                              t.shadow_predictions: 1, t.dead_letters: 1})


def _count(registry: CollectorRegistry, name: str, label: str, values: tuple[str, ...]) -> float:
    return sum(sample_value(registry, name, {label: v}) or 0.0 for v in values)


def _label_total(registry: CollectorRegistry) -> float:
    # every label record lands in exactly one of these when it is read (held ones join or orphan later)
    return _count(registry, "streamlearn_labels_total", "outcome",
                  ("joined", "held", "late", "duplicate", "invalid", "misrouted"))


def test_delayed_labels_accuracy_equals_offline_and_each_label_is_learned_once(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    n = 5000
    plan = DelayedLabelPlan(min_delay=1, max_delay=500, window=50, unlabelled=0.02, duplicated=0.01,
                         duplicate_labels=0.01)
    windows = delayed_schedule(n, plan, seed=11)
    samples = list(iter_source("phishing", limit=n))
    ids = [f"ev-{i:05d}" for i in range(n)]
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG],
        kafka={"max_poll_records": 500, "poll_timeout_ms": 20, "fetch_max_wait_ms": 10},
        labels={"ttl_s": 3600, "max_entries": 20_000},
        worker={"commit_interval_s": 0.5},
        # the oracle is one River pipeline per partition: with one model for the group, the order in which the
        # worker reads labels across partitions (not known to the test) would decide the exact weights
        sync={"scope": "partition"},
    )
    topics = settings.kafka.topics
    _create_topics(kafka_bootstrap, settings, PARTITIONS)

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=0)
    partition_of: dict[str, int] = {}
    label_partitions: set[tuple[str, int, int]] = set()
    registry = CollectorRegistry()
    events_sent = labels_sent = 0
    started = time.monotonic()
    with running_worker(settings, registry):
        for window in windows:
            futures = []
            for i in window.events:
                key, value = event_record(samples[i], ids[i], with_label=False, ts=time.time())
                futures.append((i, producer.send(topics.events, key=key, value=value)))
            producer.flush()
            for i, future in futures:
                partition_of.setdefault(ids[i], future.get(timeout=10).partition)
            events_sent += len(window.events)
            wait_for(lambda sent=events_sent: _count(registry, "streamlearn_events_total", "outcome",
                                                     ("valid", "duplicate")) == sent,
                     30, f"{events_sent} events processed", interval_s=0.01)
            futures = []
            for i in window.labels:
                key, value = label_record(ids[i].encode(), ids[i], samples[i].label, ts=time.time())
                futures.append((i, producer.send(topics.labels, key=key, value=value)))
            producer.flush()
            for i, future in futures:
                label_partitions.add((ids[i], partition_of[ids[i]], future.get(timeout=10).partition))
            labels_sent += len(window.labels)
            wait_for(lambda sent=labels_sent: _label_total(registry) == sent, 30, f"{labels_sent} labels read",
                     interval_s=0.01)
        wait_for(lambda: _committed(kafka_bootstrap, settings.kafka.group_id, topics.labels) == labels_sent,
                 30, "the label offsets to be committed")
    producer.close()
    elapsed = time.monotonic() - started

    # co-partitioning: a label produced with its event's key lands on its event's partition number
    assert all(event_p == label_p for _, event_p, label_p in label_partitions)
    assert len(set(partition_of.values())) == PARTITIONS

    # --- the same schedule offline: one River pipeline per partition, learning in label-arrival order ---------
    pipelines = {p: build_river_pipeline(LOGREG["estimator"], {}, settings.preprocessing, settings.worker.seed)
                 for p in range(PARTITIONS)}
    accuracy = metrics.Accuracy()
    predicted: dict[str, object] = {}
    joined: set[str] = set()
    duplicate_events = duplicate_labels = 0
    for window in windows:
        for i in window.events:
            if ids[i] in predicted:
                duplicate_events += 1
                continue
            predicted[ids[i]] = pipelines[partition_of[ids[i]]].predict_one(samples[i].features)
        for i in window.labels:
            if ids[i] in joined:
                duplicate_labels += 1
                continue
            joined.add(ids[i])
            accuracy.update(samples[i].label, predicted[ids[i]])
            pipelines[partition_of[ids[i]]].learn_one(samples[i].features, samples[i].label)

    labelled = {ids[i] for w in windows for i in w.labels}
    assert 0.97 * n < len(labelled) < 0.99 * n, "about 2% never labelled"
    assert 30 <= duplicate_events <= 80 and duplicate_labels >= 20

    gauge = sample_value(registry, "streamlearn_model_metric",
                         {"model": "logreg", "metric": "accuracy", "window": "cumulative"})
    print(f"\nworker accuracy {gauge:.6f}, offline accuracy {accuracy.get():.6f} on {len(joined)} joined labels; "
          f"{duplicate_events} duplicate events, {duplicate_labels} duplicate labels; {elapsed:.1f} s")
    assert gauge is not None and abs(gauge - accuracy.get()) <= 1e-12
    assert accuracy.get() > 0.75, "the models did learn from the delayed labels"

    # each labelled event learned exactly once; every outcome counted
    assert sample_value(registry, "streamlearn_learned_total", {"model": "logreg"}) == len(labelled)
    assert sample_value(registry, "streamlearn_labels_total", {"outcome": "joined"}) == len(labelled)
    assert sample_value(registry, "streamlearn_labels_total", {"outcome": "duplicate"}) == duplicate_labels
    for outcome in ("held", "late", "orphan", "invalid", "misrouted"):
        assert sample_value(registry, "streamlearn_labels_total", {"outcome": outcome}) == 0, outcome
    assert sample_value(registry, "streamlearn_events_total", {"outcome": "duplicate"}) == duplicate_events
    assert sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == n
    assert sample_value(registry, "streamlearn_predictions_total", {"model": "logreg"}) == n

    # one prediction per distinct event, equal to the offline prediction made at the same point of the schedule
    records = read_topic(kafka_bootstrap, topics.predictions, n)
    payloads = [orjson.loads(r.value) for r in records]
    assert len(payloads) == n and len({p["id"] for p in payloads}) == n
    assert all(p["prediction"] == predicted[p["id"]] for p in payloads)
    # the join holds only the never-labelled events now
    join = LabelJoin(_redis(redis_url), settings.redis.namespace, settings.kafka.group_id, 3600, 20_000, 30)
    assert join.size() == n - len(labelled)


def test_join_buffer_stays_within_its_bound_under_a_flood_of_unlabelled_events(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    n, bound = 4000, 500
    settings = make_settings(kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG],
                             labels={"ttl_s": 3600, "max_entries": bound})
    _create_topics(kafka_bootstrap, settings, 1)
    registry = CollectorRegistry()
    client = _redis(redis_url)
    join = LabelJoin(client, settings.redis.namespace, settings.kafka.group_id, 3600, bound, 30)
    sizes: list[int] = []
    with running_worker(settings, registry) as worker:
        stats = replay("phishing", bootstrap_servers=kafka_bootstrap, topic=settings.kafka.topics.events,
                       limit=n, seed=3, labels="none", progress=False)
        assert stats.sent == n

        def done() -> bool:
            sizes.append(join.size())
            return sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == n

        wait_for(done, 90, f"{n} unlabelled events")
        assert worker.delayed_labels is not None
        worker.delayed_labels.export_size()
    keys = f"{settings.redis.namespace}:{settings.kafka.group_id}:join:"
    print(f"\njoin sizes seen during the flood: max {max(sizes)}, final {join.size()}; "
          f"evictions {sample_value(registry, 'streamlearn_label_join_evictions_total')}")
    assert max(sizes) <= bound
    assert join.size() == bound and client.hlen(keys + "pending") == bound
    assert client.zcard(keys + "seen") <= 4 * bound
    assert sample_value(registry, "streamlearn_label_join_entries") == bound
    assert sample_value(registry, "streamlearn_label_join_evictions_total") == n - bound


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def test_replayer_delayed_mode_with_a_free_running_worker(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    """Events and labels interleaved however Kafka delivers them: still each labelled event learned once, and the
    accuracy the worker reports is the accuracy of the predictions it published on the labels it received."""
    n = 1500
    settings = make_settings(kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG])
    topics = settings.kafka.topics
    _create_topics(kafka_bootstrap, settings, PARTITIONS)
    plan = DelayedLabelPlan(max_delay=200, window=20, duplicate_labels=0.02)
    registry = CollectorRegistry()
    with running_worker(settings, registry):
        stats = replay("phishing", bootstrap_servers=kafka_bootstrap, topic=topics.events, limit=n, seed=9,
                       labels="delayed", labels_topic=topics.labels, delayed=plan, id_prefix="fr", progress=False)
        windows = delayed_schedule(n, plan, seed=9)
        assert stats.sent == sum(len(w.events) for w in windows)
        assert stats.labels == sum(len(w.labels) for w in windows)
        wait_for(lambda: _committed(kafka_bootstrap, settings.kafka.group_id, topics.labels) == stats.labels
                 and _committed(kafka_bootstrap, settings.kafka.group_id, topics.events) == stats.sent,
                 90, "events and labels committed")
    samples = list(iter_source("phishing", limit=n, seed=9))
    labelled = {i for w in windows for i in w.labels}
    assert sample_value(registry, "streamlearn_learned_total", {"model": "logreg"}) == len(labelled)
    assert sample_value(registry, "streamlearn_labels_total", {"outcome": "joined"}) == len(labelled)
    assert (sample_value(registry, "streamlearn_labels_total", {"outcome": "duplicate"})
            == stats.labels - len(labelled))
    predictions = {orjson.loads(r.value)["id"]: orjson.loads(r.value)["prediction"]
                   for r in read_topic(kafka_bootstrap, topics.predictions, n)}
    assert len(predictions) == n
    accuracy = metrics.Accuracy()
    for i in sorted(labelled):
        accuracy.update(samples[i].label, predictions[f"fr-{i:09d}"])
    gauge = sample_value(registry, "streamlearn_model_metric",
                         {"model": "logreg", "metric": "accuracy", "window": "cumulative"})
    assert gauge is not None and abs(gauge - accuracy.get()) <= 1e-12
