"""Issue 12: ``sync.scope: group`` on the real broker and Redis.

Two worker processes share four partitions; one is SIGKILLed mid-stream and restarted. A read-committed reader
sees exactly one prediction per event, and the group's state, read back as a restore reads it (a partition's
checkpoint plus the deltas the group published since), has learned every labelled event of every partition
exactly once.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis
from kafka import KafkaAdminClient

from services.replayer import replay
from shared.learners.base import MergeMode
from shared.learners.registry import restore_learner
from shared.settings import Settings, load_settings
from shared.state.checkpoints import CheckpointStore
from shared.steps.models import ModelSet
from shared.sync.group import GroupSync, SyncRecord
from tests.integration.helpers import make_settings, read_topic, wait_for
from tests.integration.test_recovery_sigkill import HMAC_KEY, _committed, _start, _write_config

pytestmark = pytest.mark.integration

NB = {"name": "nb", "estimator": "river.naive_bayes.GaussianNB"}
LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}
N_EVENTS = 4_000
#: events/s: the stream takes 10 s, the first syncs (after 600 events a worker) come at about a third of it
RATE = 400.0
PARTITIONS = 4
SEED = 5


def _member(settings: Settings, instance: str) -> Settings:
    data = settings.model_dump(mode="python")
    data["kafka"]["transactional_id"] = f"{settings.kafka.group_id}-{instance}"
    data["redis"]["url"] = settings.redis.url.get_secret_value()
    data["hmac_key"] = HMAC_KEY
    return load_settings(None, **data)


@pytest.mark.parametrize("merge", ["auto", "replay"])
def test_two_workers_on_four_partitions_survive_a_sigkill_and_learn_every_label_once(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], tmp_path: Path, merge: str,
) -> None:
    """``merge``: ``auto`` (naive Bayes merges exactly, logistic regression averages) and ``replay`` (both replay:
    naive Bayes' class counts then count every replayed example)."""
    base = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG, NB], hmac_key=HMAC_KEY,
        kafka={"exactly_once": True, "session_timeout_ms": 6000, "max_poll_records": 200},
        worker={"commit_interval_s": 0.3, "commit_every_events": 400},
        checkpoint={"every_events": 100_000, "every_seconds": 600.0},
        sync={"scope": "group", "every_events": 600, "every_s": 600.0, "merge": merge},
    )
    t = base.kafka.topics
    from shared.kafka.admin import ensure_topics

    ensure_topics(kafka_bootstrap, {t.events: PARTITIONS, t.labels: PARTITIONS, t.predictions: 1,
                                    t.shadow_predictions: 1, t.dead_letters: 1})
    sent: list[int] = []
    # paced, so that the kill finds the workers mid-stream with a checkpoint of every partition already written
    sender = threading.Thread(target=lambda: sent.append(replay(
        "agrawal", bootstrap_servers=kafka_bootstrap, topic=t.events, limit=N_EVENTS, seed=SEED, rate=RATE,
        progress=False).sent))
    configs = {}
    for name in ("a", "b"):
        configs[name] = tmp_path / f"{name}.yaml"
        _write_config(_member(base, name), redis_url, configs[name])
    logs = {name: tmp_path / f"{name}.log" for name in configs}
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    processes = {name: _start(configs[name], logs[name]) for name in configs}
    rng = random.Random(SEED)
    checkpoints = redis.Redis.from_url(redis_url)
    store = CheckpointStore(checkpoints, base.redis.namespace, base.kafka.group_id, HMAC_KEY.encode())
    try:
        wait_for(lambda: all("worker subscribed" in path.read_text() for path in logs.values()), 60,
                 "both workers subscribed")
        sender.start()
        kill_at = rng.randrange(1_200, 2_000)
        # a worker's first sync (its first checkpoint) comes after its first 600 events: the kill waits for every
        # partition's, so that the restarted worker and the survivor always have a group state to restore
        wait_for(lambda: _committed(admin, base) >= kill_at
                 and checkpoints.exists(*(store.key_for(t.events, p) for p in range(PARTITIONS))) == PARTITIONS,
                 90, f"{kill_at} committed and a checkpoint of every partition")
        time.sleep(rng.uniform(0.0, 0.3))
        processes["a"].send_signal(signal.SIGKILL)
        processes["a"].wait(timeout=10)
        killed_at = _committed(admin, base)
        processes["a"] = _start(configs["a"], logs["a"])
        sender.join(timeout=60)
        assert sent == [N_EVENTS]
        wait_for(lambda: _committed(admin, base) == N_EVENTS, 120, f"{N_EVENTS} committed")
        wait_for(lambda: logs["a"].read_text().count("worker subscribed") == 2, 60, "the restarted worker")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(timeout=60)
        admin.close()
        checkpoints.close()
    output = {name: path.read_text() for name, path in logs.items()}
    assert processes["b"].returncode == 0, output["b"][-3000:]
    assert processes["a"].returncode == 0, output["a"][-3000:]

    records = read_topic(kafka_bootstrap, t.predictions, N_EVENTS, timeout_s=90, to_end=True)
    counts = Counter(orjson.loads(r.value)["id"] for r in records)
    expected = {f"agrawal-{SEED}-{i:09d}" for i in range(N_EVENTS)}
    lost = len(expected - set(counts))
    duplicated = sum(c - 1 for c in counts.values() if c > 1)
    restores = sum(text.count("group state restored") for text in output.values())
    print(f"\nkilled at {killed_at} committed; lost={lost} duplicated={duplicated}; group restores={restores}")
    assert lost == 0 and duplicated == 0 and set(counts) == expected
    assert restores >= 1, "the survivor restored the killed worker's partitions from the group state"
    pulls = sum(int(line.split("group sync: ")[1].split()[0]) for text in output.values()
                for line in text.splitlines() if "group sync: " in line)
    print(f"pulls that found the other worker's deltas (the workers' last lives): {pulls}")

    # the group's state as a restore sees it: a partition's checkpoint plus every delta published since
    client = redis.Redis.from_url(redis_url)
    try:
        store = CheckpointStore(client, base.redis.namespace, base.kafka.group_id, HMAC_KEY.encode())
        per_partition = {f"{t.events}:{p}": 0 for p in range(PARTITIONS)}
        for record in read_topic(kafka_bootstrap, t.events, N_EVENTS):
            per_partition[f"{t.events}:{record.partition}"] += 1
        for p in range(PARTITIONS):
            checkpoint = store.load(t.events, p)
            assert checkpoint is not None
            assert checkpoint.next_offset == per_partition[f"{t.events}:{p}"]
            model_set = ModelSet({name: restore_learner(kind, data) for name, (kind, data) in
                                  checkpoint.models.items()}, dict(checkpoint.extra["learned"]),
                                 dict(checkpoint.extra["sources"]))
            sync = GroupSync(client, base.redis.namespace, base.kafka.group_id, HMAC_KEY.encode(), base.sync)
            sync.adopt(model_set, SyncRecord.from_json(checkpoint.extra["sync"]))
            print(f"partition {p}: the group state learned {sorted(model_set.sources.values())}")
            assert model_set.sources == per_partition, "every labelled event learned exactly once"
            replayed = merge == "replay"
            assert model_set.learners["nb"].merge_mode() is (MergeMode.REPLAY if replayed else MergeMode.EXACT)
            assert model_set.learners["logreg"].merge_mode() is (MergeMode.REPLAY if replayed else MergeMode.AVERAGE)
            nb = model_set.learners["nb"].pipeline[-1]
            assert sum(nb.class_counts.values()) == N_EVENTS, "naive Bayes counted every label once"
    finally:
        client.close()
