"""Rotating the checkpoint key under a running group of two workers loses no model.

Two rolling restarts (docs/security.md): first every worker learns the new key as a verify-only key, then every
worker signs with the new key and keeps the old one to verify. Through both, each restarted worker restores the
checkpoints the others wrote, whichever key signed them: ``streamlearn_state_lost_total`` and
``streamlearn_snapshots_rejected_total`` stay 0, each partition's checkpoint counts every event learned once, and
the last checkpoints verify with the new key alone and not with the old one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import pytest
import redis
from prometheus_client import CollectorRegistry

from services.replayer import replay
from shared.kafka.admin import ensure_topics
from shared.learners.registry import restore_learner
from shared.settings import Settings, load_settings
from shared.signing_keys import generate_key
from shared.state.checkpoints import CheckpointStore, SnapshotRejected
from shared.steps.models import ModelSet
from shared.sync.group import GroupSync, SyncRecord
from tests.integration.helpers import (
    events_committed,
    make_settings,
    read_topic,
    running_worker,
    sample_value,
    wait_for,
)

pytestmark = pytest.mark.integration

LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}
BATCH = 300


def _instance(base: Settings, name: str, signing: str, verifying: list[str]) -> Settings:
    data = base.model_dump(mode="python")
    data["kafka"]["transactional_id"] = name
    data["redis"]["url"] = base.redis.url.get_secret_value()
    data["hmac_key"] = signing
    data["hmac_verify_keys"] = verifying
    return load_settings(None, **data)


def test_a_key_rotates_under_a_running_group_without_losing_a_model(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAMLEARN_HMAC_KEY")  # each stage below sets its own keys
    old, new = generate_key(), generate_key()
    base = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG], hmac_key=old,
        kafka={"session_timeout_ms": 6000}, checkpoint={"every_events": 100, "every_seconds": 1.0},
    )
    t = base.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 2, t.labels: 2, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    registries: list[CollectorRegistry] = []
    running: dict[str, ExitStack] = {}
    sent = 0

    def start(name: str, signing: str, verifying: list[str]) -> None:
        registry = CollectorRegistry()
        registries.append(registry)
        stack = ExitStack()
        stack.enter_context(running_worker(_instance(base, name, signing, verifying), registry))
        running[name] = stack
        wait_for(lambda: (sample_value(registry, "streamlearn_ready") or 0) == 1, 60, f"worker {name} ready")

    def restart(name: str, signing: str, verifying: list[str]) -> None:
        running.pop(name).close()  # drains: commits and checkpoints what it had, signed with its key
        start(name, signing, verifying)

    def send_and_wait(seed: int) -> None:
        nonlocal sent
        replay("agrawal", bootstrap_servers=kafka_bootstrap, topic=t.events, limit=BATCH, seed=seed,
               progress=False)
        sent += BATCH
        wait_for(lambda: events_committed(kafka_bootstrap, base) == sent, 90, f"{sent} events committed")

    try:
        start("a", old, [])
        start("b", old, [])
        send_and_wait(1)
        restart("a", old, [new])  # stage 1: the new key verifies everywhere before anyone signs with it
        restart("b", old, [new])
        send_and_wait(2)
        restart("a", new, [old])  # stage 2: sign with the new key, keep the old one to verify
        send_and_wait(3)  # b still signs with the old key; a reads what b wrote and the other way round
        restart("b", new, [old])
        send_and_wait(4)
    finally:
        for stack in running.values():
            stack.close()

    def total(name: str, labels: dict[str, str] | None = None) -> float:
        return sum(sample_value(r, name, labels) or 0 for r in registries)

    assert total("streamlearn_events_total", {"outcome": "valid"}) >= sent
    assert total("streamlearn_state_lost_total") == 0, "a model was lost during the rotation"
    rejected = {reason: total("streamlearn_snapshots_rejected_total", {"reason": reason})
                for reason in ("unsigned", "tampered", "incompatible", "corrupt")}
    assert sum(rejected.values()) == 0, rejected

    per_partition = {0: 0, 1: 0}
    for record in read_topic(kafka_bootstrap, t.events, sent):
        per_partition[record.partition] += 1
    client = redis.Redis.from_url(redis_url)
    try:
        with_new = CheckpointStore(client, base.redis.namespace, base.kafka.group_id, new.encode())
        with_old = CheckpointStore(client, base.redis.namespace, base.kafka.group_id, old.encode())
        for partition, events in per_partition.items():
            checkpoint = with_new.load(t.events, partition)
            assert checkpoint is not None, f"partition {partition} has no checkpoint signed with the new key"
            assert checkpoint.next_offset == events
            # the group's one state (sync.scope: group) as a restore sees it: the checkpoint plus the deltas the
            # other worker published since, verified with either key; every event learned once, from its partition
            model_set = ModelSet({name: restore_learner(kind, data) for name, (kind, data) in
                                  checkpoint.models.items()}, dict(checkpoint.extra["learned"]),
                                 dict(checkpoint.extra["sources"]))
            GroupSync(client, base.redis.namespace, base.kafka.group_id, (new.encode(), old.encode()),
                      base.sync).adopt(model_set, SyncRecord.from_json(checkpoint.extra["sync"]))
            assert model_set.sources == {f"{t.events}:{p}": n for p, n in per_partition.items()}, \
                "every event learned once, from its own partition"
            with pytest.raises(SnapshotRejected, match="signature"):
                with_old.load(t.events, partition)
    finally:
        client.close()
    print(f"\nrotation: {sent} events over 4 restarts; state lost 0; rejected {rejected}; per partition "
          f"{per_partition}")
