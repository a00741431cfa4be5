"""Issue 12, acceptance 4: ``sync.scope: group`` survives three SIGKILLs on the real broker and Redis.

Two groups of two worker processes read the same 20,000 SEA events (inline labels, 4 partitions) as they arrive,
exactly-once, logistic regression: one group undisturbed, the other with a seeded-random worker SIGKILLed at three
seeded-random points of the stream and restarted each time. For a read-committed reader each group publishes
exactly one prediction per event; each group's state, read back as a restore reads it (a partition's checkpoint
plus the deltas the group published since), has learned every labelled event exactly once; and the accuracy of the
killed group's published predictions is within 1.0 point of the undisturbed group's.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaAdminClient

from services.replayer import replay
from shared.datasets import iter_source
from shared.kafka.admin import ensure_topics
from shared.learners.registry import restore_learner
from shared.settings import Settings, load_settings
from shared.state.checkpoints import CheckpointStore
from shared.steps.models import ModelSet
from shared.sync.group import GroupSync, SyncRecord
from tests.integration.helpers import make_settings, read_topic, wait_for
from tests.integration.test_recovery_sigkill import ASSIGNED, HMAC_KEY, _committed, _start, _write_config

pytestmark = pytest.mark.integration

LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}
#: SEA (a linear concept): logistic regression reaches ~0.99 on it, far above the majority class (~0.68), so the
#: accuracy of the published predictions says whether the group's model learned
SOURCE = "sea"
N_EVENTS = 20_000
PARTITIONS = 4
SEED = 12
KILL_SEED = 20261204
KILLS = 3
#: events/s of the stream while the workers run (25 s for the stream: time for three kills and restarts)
PRODUCE_RATE = 800.0
#: issue 12: the killed group's accuracy within this many points of the undisturbed group's
ACCURACY_POINTS = 1.0


@dataclass
class Member:
    """One worker of a group: its config, its log (every run appends) and its current run."""

    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    #: where the current run's output begins in the log
    since: int = 0

    def start(self) -> None:
        self.since = self.log.stat().st_size if self.log.exists() else 0
        self.process = _start(self.config, self.log)
        self.starts += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def run_output(self) -> str:
        """What the current run has logged."""
        with self.log.open("rb") as handle:
            handle.seek(self.since)
            return handle.read().decode(errors="replace")

    def restored(self) -> bool:
        """Whether the current run has restored its partitions and resumed them."""
        return ASSIGNED in self.run_output()

    def running(self) -> bool:
        """Whether the current run has subscribed (its SIGTERM handler is installed)."""
        return "worker subscribed" in self.run_output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _group_settings(base: Settings, *, events: str, labels: str, instance: str | None = None) -> Settings:
    """``base`` reading the shared ``events`` topic; with ``instance``, as one member (its own transactional id)."""
    data = base.model_dump(mode="python")
    data["kafka"]["topics"]["events"] = events
    data["kafka"]["topics"]["labels"] = labels
    if instance is not None:
        data["kafka"]["transactional_id"] = f"{base.kafka.group_id}-{instance}"
    data["redis"]["url"] = base.redis.url.get_secret_value()
    data["hmac_key"] = HMAC_KEY
    return load_settings(None, **data)


def _produce(bootstrap: str, topic: str, sent: list[int]) -> None:
    """Send the stream at :data:`PRODUCE_RATE` events/s; how many were sent goes to ``sent``."""
    stats = replay(SOURCE, bootstrap_servers=bootstrap, topic=topic, limit=N_EVENTS, seed=SEED, rate=PRODUCE_RATE,
                   progress=False)
    sent.append(stats.sent)


def _all_committed(admin: KafkaAdminClient, settings: Settings) -> bool:
    return _committed(admin, settings) == N_EVENTS


def _start_group(settings: Settings, tmp_path: Path, label: str) -> dict[str, Member]:
    members = {}
    for name in ("a", "b"):
        config, log = tmp_path / f"{label}-{name}.yaml", tmp_path / f"{label}-{name}.log"
        _write_config(_group_settings(settings, events=settings.kafka.topics.events,
                                      labels=settings.kafka.topics.labels, instance=name),
                      settings.redis.url.get_secret_value(), config)
        members[name] = Member(config, log)
        members[name].start()
    return members


def _published(bootstrap: str, settings: Settings, expected: list[str]) -> tuple[dict[str, object], int, int]:
    """The predictions a read-committed reader sees (by event id), and how many events were lost and duplicated."""
    records = read_topic(bootstrap, settings.kafka.topics.predictions, N_EVENTS, timeout_s=90, to_end=True)
    payloads = [orjson.loads(r.value) for r in records]
    counts = Counter(p["id"] for p in payloads)
    known = set(expected)
    lost = sum(1 for i in expected if i not in counts)
    duplicated = sum(c - 1 for c in counts.values() if c > 1) + sum(1 for i in counts if i not in known)
    return {p["id"]: p["prediction"] for p in payloads}, lost, duplicated


def _learned_per_partition(redis_url: str, settings: Settings) -> list[dict[str, int]]:
    """For each partition, the examples per source partition of the group's state as restoring that partition
    would see it: its checkpoint, plus every delta the group published since."""
    client = redis.Redis.from_url(redis_url)
    try:
        store = CheckpointStore(client, settings.redis.namespace, settings.kafka.group_id, HMAC_KEY.encode())
        seen = []
        for partition in range(PARTITIONS):
            checkpoint = store.load(settings.kafka.topics.events, partition)
            assert checkpoint is not None, f"partition {partition} has no checkpoint"
            model_set = ModelSet({name: restore_learner(kind, data) for name, (kind, data) in
                                  checkpoint.models.items()}, dict(checkpoint.extra["learned"]),
                                 dict(checkpoint.extra["sources"]))
            sync = GroupSync(client, settings.redis.namespace, settings.kafka.group_id, HMAC_KEY.encode(),
                             settings.sync)
            sync.adopt(model_set, SyncRecord.from_json(checkpoint.extra["sync"]))
            seen.append(dict(model_set.sources))
        return seen
    finally:
        client.close()


def test_three_sigkills_of_a_group_member_lose_nothing_learn_every_label_once_and_keep_the_accuracy(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], tmp_path: Path,
) -> None:
    started = time.monotonic()
    common: dict[str, Any] = {
        "models": [LOGREG], "hmac_key": HMAC_KEY,
        "kafka": {"exactly_once": True, "session_timeout_ms": 6000, "max_poll_records": 500},
        "worker": {"commit_interval_s": 0.5, "commit_every_events": 1500},
        # every sync is a checkpoint; by events only, so that a kill usually lands between two syncs and the
        # restarted worker replays a gap learn-only
        "checkpoint": {"every_events": 100_000, "every_seconds": 600.0},
        "sync": {"scope": "group", "every_events": 1500, "every_s": 600.0},
    }
    steady = make_settings(kafka_bootstrap, unique_name, redis_url=redis_url, **common)
    t = steady.kafka.topics
    killed = _group_settings(make_settings(kafka_bootstrap, unique_name, redis_url=redis_url, **common),
                             events=t.events, labels=t.labels)
    k = killed.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: PARTITIONS, t.labels: PARTITIONS, t.predictions: 1,
                                    t.shadow_predictions: 1, t.dead_letters: 1, k.predictions: 1,
                                    k.shadow_predictions: 1, k.dead_letters: 1})
    groups = {"steady": _start_group(steady, tmp_path, "steady"), "killed": _start_group(killed, tmp_path, "killed")}
    settings_of = {"steady": steady, "killed": killed}
    # the events arrive while both groups run (at PRODUCE_RATE), so that every kill lands inside the stream
    sent: list[int] = []
    producer = threading.Thread(target=_produce, args=(kafka_bootstrap, t.events, sent), name="producer",
                                daemon=True)
    producer.start()
    rng = random.Random(KILL_SEED)
    kill_points = sorted(rng.sample(range(3_000, N_EVENTS - 3_000), KILLS))
    victims = [rng.choice("ab") for _ in kill_points]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    killed_at: list[int] = []
    try:
        restarted_at = 0
        for point, victim in zip(kill_points, victims, strict=True):
            member = groups["killed"][victim]
            # at the point (or past the last restart when the group got there already), and only once the victim's
            # current run has restored its partitions: never a kill before a restore
            target = min(max(point, restarted_at + 1), N_EVENTS)
            deadline = time.monotonic() + 60
            while _committed(admin, killed) < target or not member.restored():
                for name, other in groups["killed"].items():
                    assert other.alive(), f"worker {name} exited: {other.output()[-3000:]}"
                assert time.monotonic() < deadline, f"no progress to {target}: {member.output()[-3000:]}"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.4))  # anywhere inside the next transaction
            assert member.process is not None
            member.process.send_signal(signal.SIGKILL)
            member.process.wait(timeout=10)
            killed_at.append(_committed(admin, killed))
            restarted_at = killed_at[-1]
            member.start()
        producer.join(timeout=N_EVENTS / PRODUCE_RATE + 60)
        assert sent == [N_EVENTS], f"the producer sent {sent}"
        for label, settings in settings_of.items():
            wait_for(partial(_all_committed, admin, settings), 120, f"{label}: {N_EVENTS} committed")
        # every current run must be up (its SIGTERM handler installed) before it is asked to drain
        for label, members in groups.items():
            for name, member in members.items():
                wait_for(member.running, 60, f"{label} worker {name}, run {member.starts}, to start")
    finally:
        for members in groups.values():
            for member in members.values():
                if member.alive():
                    assert member.process is not None
                    member.process.send_signal(signal.SIGTERM)
        for members in groups.values():
            for member in members.values():
                assert member.process is not None
                try:
                    member.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    member.process.kill()
                    member.process.wait(timeout=10)
        admin.close()
    processed = time.monotonic()
    for label, members in groups.items():
        for name, member in members.items():
            assert member.process is not None and member.process.returncode == 0, \
                f"{label} worker {name}: {member.output()[-3000:]}"
    restores = sum(m.output().count("group state restored") for m in groups["killed"].values())

    samples = list(iter_source(SOURCE, seed=SEED, limit=N_EVENTS))
    expected = [f"{SOURCE}-{SEED}-{i:09d}" for i in range(N_EVENTS)]
    label_of = dict(zip(expected, (s.label for s in samples), strict=True))
    per_partition = {f"{t.events}:{p}": 0 for p in range(PARTITIONS)}
    for record in read_topic(kafka_bootstrap, t.events, N_EVENTS):
        per_partition[f"{t.events}:{record.partition}"] += 1
    assert sum(per_partition.values()) == N_EVENTS
    accuracy = {}
    for label, settings in settings_of.items():
        predictions, lost, duplicated = _published(kafka_bootstrap, settings, expected)
        accuracy[label] = sum(1 for i, y in predictions.items() if y == label_of.get(i)) / N_EVENTS
        learned = _learned_per_partition(redis_url, settings)
        print(f"\n{label}: lost={lost} duplicated={duplicated} accuracy={accuracy[label]:.4f}; the group state "
              f"learned per source partition (as restoring partition 0 sees it) {sorted(learned[0].values())}")
        assert lost == 0 and duplicated == 0, f"{label}: {lost} lost, {duplicated} duplicated"
        for partition, sources in enumerate(learned):
            assert sources == per_partition, f"{label}, partition {partition}: every label learned exactly once"
    difference = 100 * abs(accuracy["killed"] - accuracy["steady"])
    print(f"kills of {victims} at committed offsets {killed_at} (points {kill_points}); group restores {restores}; "
          f"accuracy {accuracy['killed']:.4f} vs {accuracy['steady']:.4f} without kills ({difference:.2f} points); "
          f"both groups {processed - started:.1f} s, test {time.monotonic() - started:.1f} s")
    assert len(killed_at) == KILLS and restores >= KILLS, "every restart restored the group state"
    assert accuracy["steady"] > 0.9, "the undisturbed group learned the concept"
    assert difference <= ACCURACY_POINTS
