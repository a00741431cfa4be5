"""Delayed labels across a crash (real Kafka + Redis): no label is learned twice, none is lost.

Worker A learns from delayed labels, checkpointing now and then (the label partitions' offsets go into each
checkpoint with the models). Checkpoints then stop, commits go on for a while, then stop too, and A dies without
draining: its last joins are neither in a checkpoint nor (partly) committed. Worker B restores the checkpoints,
re-reads events and labels from the checkpointed offsets and finishes the stream. The models' learned counts in
B's final checkpoints must equal the number of distinct labelled events, and each event gets exactly one
(committed) prediction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from services.replayer import DelayedLabelPlan, ScheduleWindow, delayed_schedule, event_record, label_record
from services.worker import Worker
from shared.datasets import iter_source
from shared.kafka.admin import ensure_topics
from shared.state.checkpoints import CheckpointStore
from shared.steps.models import ModelSet
from shared.sync.group import GroupSync, SyncRecord
from tests.integration.helpers import committed_total, make_settings, read_topic, running_worker, sample_value, wait_for

pytestmark = pytest.mark.integration

LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}
PARTITIONS = 2


def _committed(bootstrap: str, group: str, topic: str) -> int:
    """Committed offsets summed over ``topic``; -1 while the group coordinator is not answering yet."""
    try:
        return committed_total(bootstrap, group, topic)
    except KafkaError:
        return -1


def _crash(worker: Worker) -> None:
    """From now on the worker neither commits nor checkpoints, not even when it stops: a crash, seen from outside."""
    worker.commit = lambda **_: None  # type: ignore[method-assign]

    async def revoked(tps: Any) -> None:
        worker._forget(tps)

    worker.on_revoked = revoked  # type: ignore[method-assign]


def _processed(registry: CollectorRegistry) -> float:
    return sum(sample_value(registry, "streamlearn_events_total", {"outcome": o}) or 0 for o in ("valid", "duplicate"))


def _labels(registry: CollectorRegistry) -> float:
    return sum(sample_value(registry, "streamlearn_labels_total", {"outcome": o}) or 0
               for o in ("joined", "held", "late", "duplicate", "invalid", "misrouted"))


def _skipped(history: list[tuple[str, tuple[str, int], int]]) -> dict[tuple[str, int], int]:
    """Per partition, the offsets B jumped over: after each restore (``start``) B must read on from where it resumed,
    record after record (a record read again is fine; one never read is a join its models never learn)."""
    expected: dict[tuple[str, int], int] = {}
    skipped: dict[tuple[str, int], int] = {}
    for kind, tp, offset in history:
        if kind == "start":
            expected[tp] = offset
            continue
        if tp in expected and offset > expected[tp]:
            skipped[tp] = skipped.get(tp, 0) + offset - expected[tp]
        expected[tp] = max(expected.get(tp, offset + 1), offset + 1)
    return skipped


def _rebalance_twice(bootstrap: str, group_id: str, topics: list[str]) -> None:
    """A second member joins ``group_id``, takes half of the partitions and leaves again without committing
    anything: the worker's partitions are revoked and assigned twice, as when a deployment scales up and back."""
    member = KafkaConsumer(*topics, group_id=group_id, bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + 30
        while not member.assignment():
            assert time.monotonic() < deadline, "the extra member did not join the group"
            member.poll(timeout_ms=50)
    finally:
        member.close()


@pytest.mark.parametrize("scope", ["partition", "group"])
@pytest.mark.parametrize("rebalance", [False, True], ids=["crash", "crash-then-rebalances-during-recovery"])
def test_no_delayed_label_is_learned_twice_or_lost_across_a_crash(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], rebalance: bool, scope: str,
) -> None:
    """With ``rebalance``, B's partitions are revoked and assigned again twice while it re-reads the gap: the
    revoke commits and checkpoints B's models in the middle of the replay, and the next restore starts there."""
    n = 3000
    windows = delayed_schedule(n, DelayedLabelPlan(max_delay=300, window=50, duplicate_labels=0.01), seed=5)
    samples = list(iter_source("phishing", limit=n))
    ids = [f"c-{i:05d}" for i in range(n)]
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG],
        kafka={"max_poll_records": 500, "poll_timeout_ms": 20, "fetch_max_wait_ms": 10, "exactly_once": True,
               "transactional_id": unique_name("tx")},
        checkpoint={"every_events": 400, "every_seconds": 3600},
        worker={"commit_interval_s": 0.05},
        # group scope: syncs only with the checkpoints above (every sync is one)
        sync={"scope": scope, "every_events": 400, "every_s": 3600},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: PARTITIONS, t.labels: PARTITIONS, t.predictions: 1,
                                    t.shadow_predictions: 1, t.dead_letters: 1})
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=0)

    def send(window: ScheduleWindow, part: str) -> int:
        for i in (window.events if part == "events" else window.labels):
            key, value = event_record(samples[i], ids[i], with_label=False, ts=time.time()) if part == "events" \
                else label_record(ids[i].encode(), ids[i], samples[i].label, ts=time.time())
            producer.send(t.events if part == "events" else t.labels, key=key, value=value)
        producer.flush()
        return len(window.events if part == "events" else window.labels)

    # --- worker A: 20 windows with checkpoints, 10 more committed only, 5 more neither; then it dies ---------
    registry_a = CollectorRegistry()
    events_sent = labels_sent = 0
    with running_worker(settings, registry_a) as a:
        for index, window in enumerate(windows[:35]):
            if index == 20:
                assert a.checkpointer is not None
                a.checkpointer.due = lambda: False  # type: ignore[method-assign]
            if index == 30:
                _crash(a)
            events_sent += send(window, "events")
            wait_for(lambda s=events_sent: _processed(registry_a) == s, 30, "events", interval_s=0.01)
            labels_sent += send(window, "labels")
            wait_for(lambda s=labels_sent: _labels(registry_a) == s, 30, "labels", interval_s=0.01)
    learned_by_a = sample_value(registry_a, "streamlearn_learned_total", {"model": "logreg"})

    store = CheckpointStore(redis.Redis.from_url(redis_url), settings.redis.namespace, settings.kafka.group_id,
                            settings.hmac_key.get_secret_value().encode())
    label_offsets = {}
    for p in range(PARTITIONS):
        checkpoint = store.load(t.events, p)
        assert checkpoint is not None
        label_offsets.update(checkpoint.extra["label_offsets"])
    wait_for(lambda: _committed(kafka_bootstrap, settings.kafka.group_id, t.labels) >= 0, 30, "the coordinator")
    committed_labels = _committed(kafka_bootstrap, settings.kafka.group_id, t.labels)
    checkpointed_labels = sum(label_offsets.values())
    assert checkpointed_labels < committed_labels < labels_sent, "labels to replay from the checkpoint and beyond"

    # --- worker B: restores, re-reads the gap, finishes the stream (free-running) -------------------------
    for window in windows[35:]:
        events_sent += send(window, "events")
        labels_sent += send(window, "labels")
    producer.close()
    registry_b = CollectorRegistry()
    # B reads small batches slowly, so that the rebalances land inside its replay of the gap
    settings_b = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"max_poll_records": 20})})
    revoked_while_replaying: list[bool] = []
    history: list[tuple[str, tuple[str, int], int]] = []  # B: where each restore resumed a partition, what it read
    with running_worker(settings_b if rebalance else settings, registry_b) as b:
        process_records, restore_assigned = b.process, b.restore_assigned

        def reading(batch: Any) -> None:
            history.extend(("read", (r.topic, r.partition), r.offset) for r in batch.records)
            process_records(batch)

        def restoring() -> None:
            tps = list(b._to_restore)
            restore_assigned()
            history.extend(("start", tp, b._processed[tp]) for tp in tps if tp in b._processed)

        b.process = reading  # type: ignore[method-assign]
        b.restore_assigned = restoring  # type: ignore[method-assign]
        if rebalance:
            on_revoked = b.on_revoked

            async def revoked(tps: Any) -> None:
                revoked_while_replaying.append(any(
                    b._processed.get(tp, 0) < b._replay_until.get(tp, 0) for tp in tps if tp[0] == t.events))
                await on_revoked(tps)

            b.on_revoked = revoked  # type: ignore[method-assign]
            process = b.process

            def slowly(batch: Any) -> None:
                # the group hears of a new member at B's next heartbeat (3 s): the replay (about 700 records)
                # outlasts it. Per record (0.2 s a poll of 20): the time order releases several partitions' held
                # records in one batch
                time.sleep(0.01 * len(batch.records))
                process(batch)

            b.process = slowly  # type: ignore[method-assign]
            wait_for(lambda: _processed(registry_b) > 0, 30, "B's first batch", interval_s=0.005)
            _rebalance_twice(kafka_bootstrap, settings.kafka.group_id, [t.events, t.labels])
            wait_for(lambda: len(revoked_while_replaying) >= 2, 30, "B's partitions revoked twice")
            b.process = process  # type: ignore[method-assign]
        wait_for(lambda: _committed(kafka_bootstrap, settings.kafka.group_id, t.events) == events_sent
                 and _committed(kafka_bootstrap, settings.kafka.group_id, t.labels) == labels_sent,
                 90, "the whole stream committed")

    labelled = {ids[i] for w in windows for i in w.labels}
    learned = 0
    for p in range(PARTITIONS):
        checkpoint = store.load(t.events, p)
        assert checkpoint is not None
        learned += checkpoint.extra["learned"]["logreg"]
    if scope == "group":  # one state for all partitions: the group's, read back as a restore reads it
        checkpoint = store.load(t.events, 0)
        assert checkpoint is not None
        model_set = ModelSet({}, {}, {str(k): int(v) for k, v in checkpoint.extra["sources"].items()})
        GroupSync(store._client, settings.redis.namespace, settings.kafka.group_id,
                  settings.hmac_key.get_secret_value().encode(), settings.sync).adopt(
            model_set, SyncRecord.from_json(checkpoint.extra["sync"]))
        learned = sum(model_set.sources.values())
    print(f"\nA learned {learned_by_a:.0f} before dying; checkpointed label offsets {checkpointed_labels}, "
          f"committed {committed_labels}, sent {labels_sent}; final models learned {learned} "
          f"for {len(labelled)} labelled events")
    skipped = _skipped(history)
    misrouted = sample_value(registry_b, "streamlearn_labels_total", {"outcome": "misrouted"})
    print(f"B resumed {[h[1:] for h in history if h[0] == 'start']} (partition, offset); offsets it jumped over: "
          f"{skipped}; misrouted labels: {misrouted}")
    if rebalance:
        print(f"revokes during B's run, whether in the middle of its replay: {revoked_while_replaying}")
        assert any(revoked_while_replaying), "the rebalance should have come while B re-read the gap"
    assert misrouted == 0
    assert not skipped, "B read on from where each restore resumed a partition, record after record"
    assert learned == len(labelled), "each labelled event learned exactly once across the crash"

    predictions = read_topic(kafka_bootstrap, t.predictions, n, to_end=True)
    got = [orjson.loads(r.value)["id"] for r in predictions]
    assert len(got) == n and set(got) == set(ids), "one committed prediction per event"
