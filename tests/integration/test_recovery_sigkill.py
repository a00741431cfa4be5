"""Issue 4, acceptance 2: the worker process is SIGKILLed three times mid-stream and restarted each time.

Exactly-once mode on: a read-committed consumer of the predictions sees exactly one prediction per event, each
equal to the prediction of an uninterrupted in-process run, and the final checkpoint's model predicts a probe
set exactly as the uninterrupted model does.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import orjson
import pytest
import redis
import yaml
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from services.replayer import replay
from shared.datasets import iter_source
from shared.kafka.admin import ensure_topics
from shared.learners.base import Row
from shared.learners.registry import build_learner, restore_learner
from shared.settings import ModelSettings, Settings
from shared.state.checkpoints import CheckpointStore
from tests.integration.helpers import make_settings, read_topic, wait_for
from tests.keys import TEST_HMAC_KEY

pytestmark = pytest.mark.integration

LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}
N_EVENTS = 20_000
N_PROBE = 500
SEED = 11
KILL_SEED = 20260425
HMAC_KEY = TEST_HMAC_KEY
#: logged once a run has restored its partition and resumed it
ASSIGNED = "INFO streamlearn.worker: assigned"
SUBSCRIBED = "INFO streamlearn.worker: worker subscribed"
CAUGHT_UP = "caught up with its committed offset"
RESTORED = re.compile(r"restored \('[^']+', 0\) at offset (\d+) \(committed (\d+)\)")


def _write_config(settings: Settings, redis_url: str, path: Path) -> None:
    data = settings.model_dump(mode="json")
    data["redis"]["url"] = redis_url
    data["hmac_key"] = HMAC_KEY
    path.write_text(yaml.safe_dump(data))


def _start(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log_file = log_path.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--config", str(config)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log_file, stderr=subprocess.STDOUT,
        )
    finally:
        log_file.close()


def _committed(admin: KafkaAdminClient, settings: Settings) -> int:
    try:
        offsets = admin.list_group_offsets({settings.kafka.group_id: None}).get(settings.kafka.group_id, {})
    except KafkaError:  # the group (or __consumer_offsets) does not exist yet
        return 0
    return sum(o.offset for tp, o in offsets.items() if tp.topic == settings.kafka.topics.events and o.offset >= 0)


#: partition scope: every client and mode, each worker a static member (``kafka.group_instance_id``: the restarted
#: worker takes its partition back at once); group scope on one partition: each mode with one client, dynamic
#: members (the restarted worker waits for the killed one's session to expire, then the group rebalances). A dynamic
#: case costs 30 s of the suite's budget, a static one 15 s; tests/integration/test_group_scope_kills.py kills
#: workers of a 4-partition group
CASES = [
    *[(client, mode, "partition", True) for client in ("kafka-python", "confluent") for mode in (True, False)],
    ("confluent", True, "group", False),
    ("kafka-python", False, "group", False),
]
SESSION_TIMEOUT_S = 6.0
#: a static member's restart to its assignment (restore included); a dynamic one waits for the killed member's
#: session to expire: about ``SESSION_TIMEOUT_S`` less the restart's own start
STATIC_REJOIN_S = 3.0


@pytest.mark.parametrize(
    ("kafka_client", "exactly_once", "scope", "static"), CASES,
    ids=[f"{c}-{'exactly-once' if e else 'at-least-once'}-{s}{'-static' if m else ''}" for c, e, s, m in CASES],
)
def test_three_sigkills_lose_and_duplicate_nothing_and_the_model_matches(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], tmp_path: Path, kafka_client: str,
    exactly_once: bool, scope: str, static: bool,
) -> None:
    """Exactly-once: nothing lost or duplicated. At-least-once: nothing lost; a prediction published again after
    a kill (its offset was not committed yet) is the same prediction, and the models learn every event once.
    A static member is assigned its partition again within ``STATIC_REJOIN_S`` of each restart."""
    started = time.monotonic()
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG], hmac_key=HMAC_KEY,
        kafka={"exactly_once": exactly_once, "session_timeout_ms": int(SESSION_TIMEOUT_S * 1000),
               "max_poll_records": 500, "client": kafka_client,
               "group_instance_id": unique_name("worker") if static else None},
        worker={"commit_interval_s": 0.5, "commit_every_events": 1500},
        # by events only: a time-based checkpoint while a fast run idles at the end would close every gap before
        # the kill, and the learn-only replay would go untested
        checkpoint={"every_events": 4000, "every_seconds": 600.0},
        # group scope: every sync is a checkpoint, so the same cadence (a single partition merges nothing)
        sync={"scope": scope, "every_events": 4000, "every_s": 600.0},
    )
    topics = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {topics.events: 1, topics.labels: 1, topics.predictions: 1,
                                    topics.shadow_predictions: 1, topics.dead_letters: 1})
    stats = replay("agrawal", bootstrap_servers=kafka_bootstrap, topic=topics.events, limit=N_EVENTS, seed=SEED,
                   progress=False)
    assert stats.sent == N_EVENTS
    config, log_path = tmp_path / "worker.yaml", tmp_path / "worker.log"
    _write_config(settings, redis_url, config)

    rng = random.Random(KILL_SEED)
    kill_points = sorted(rng.sample(range(1_000, N_EVENTS - 2_000), 3))
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    killed_at: list[int] = []
    process = _start(config, log_path)
    restarted_at = 0
    try:
        for run, point in enumerate(kill_points, start=1):
            # at the point, or, when the last run got past it already, once this run has committed something (or
            # at once when the last run committed every event: nothing is left to commit); and never before this
            # run has restored its partition: an offset commit the killed run sent just before its SIGKILL can land
            # after killed_at was read, and would otherwise let the next run be killed before its restore
            target = min(max(point, restarted_at + 1), N_EVENTS)
            deadline = time.monotonic() + 60
            while _committed(admin, settings) < target or log_path.read_text().count(ASSIGNED) < run:
                assert process.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, f"no progress to offset {point}: {log_path.read_text()[-3000:]}"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.4))  # land anywhere inside the next transaction
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            killed_at.append(_committed(admin, settings))
            restarted_at = killed_at[-1]
            process = _start(config, log_path)
        wait_for(lambda: _committed(admin, settings) == N_EVENTS, 90, f"{N_EVENTS} committed offsets")
        # a run that got to the end before its kill leaves the last one nothing to do: it must still have
        # restored its partition before it is asked to drain (a SIGTERM before its assignment, which waits out the
        # killed member's session, would stop it with nothing restored)
        runs = len(kill_points) + 1
        wait_for(lambda: log_path.read_text().count(ASSIGNED) == runs, 60, f"worker run {runs} to restore")
        # and finished the learn-only replay of its gap: a drain in the middle of it checkpoints where the replay
        # got to (nothing is lost: the next start replays the rest), which would leave the final model short
        wait_for(lambda: _replays_done(log_path.read_text()), 60, "the last run's learn-only replay")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            admin.close()
    output = log_path.read_text()
    assert process.returncode == 0, output[-3000:]
    assert output.count("worker stopped") == 1, "only the last run drained; the others were killed"
    rejoins = _rejoin_seconds(output)
    print(f"\nrestart (subscribed) to assigned, s: {[round(s, 2) for s in rejoins]}")
    assert len(rejoins) == len(kill_points) + 1
    if static:
        assert max(rejoins[1:]) < STATIC_REJOIN_S, rejoins

    records = read_topic(kafka_bootstrap, topics.predictions, N_EVENTS, timeout_s=90, to_end=True)
    payloads = [orjson.loads(r.value) for r in records]
    counts = Counter(p["id"] for p in payloads)
    expected_ids = [f"agrawal-{SEED}-{i:09d}" for i in range(N_EVENTS)]
    lost = sum(1 for i in expected_ids if i not in counts)
    duplicated = sum(c - 1 for c in counts.values() if c > 1)
    print(f"\nkill points (committed offsets at SIGKILL): {killed_at}; lost={lost} duplicated={duplicated}")
    missing = [i for i in expected_ids if i not in counts]
    if missing:
        print(f"lost ids: {missing[:20]}")
    restores = [(int(a), int(b)) for a, b in RESTORED.findall(output)]
    print(f"restores (checkpoint offset, committed offset): {restores}")
    assert lost == 0 and set(counts) == set(expected_ids)
    assert len(restores) == 3, "\n".join(line for line in output.splitlines()
                                        if "streamlearn.checkpoint" in line or "assigned" in line)
    if exactly_once:
        assert duplicated == 0 and len(payloads) == N_EVENTS
        assert [p["id"] for p in payloads] == expected_ids, "in order"
        assert any(k < c for k, c in restores), "at least one restart replayed a gap learn-only"
    else:
        assert list(dict.fromkeys(p["id"] for p in payloads)) == expected_ids, "first publications in order"

    # The uninterrupted run: the same learner, in-process, over the same stream.
    samples = list(iter_source("agrawal", seed=SEED, limit=N_EVENTS + N_PROBE))
    stream, probe = samples[:N_EVENTS], samples[N_EVENTS:]
    reference = build_learner(ModelSettings(**LOGREG), settings.preprocessing, settings.worker.seed)
    outputs = reference.process([Row(s.features, s.key) for s in stream], [s.label for s in stream])
    by_id = dict(zip(expected_ids, outputs, strict=True))
    mismatched = sum(1 for p in payloads if p["prediction"] != by_id[p["id"]].prediction)
    print(f"published predictions different from the uninterrupted run: {mismatched} of {N_EVENTS}")
    assert mismatched == 0

    client = redis.Redis.from_url(redis_url)
    try:
        store = CheckpointStore(client, settings.redis.namespace, settings.kafka.group_id, HMAC_KEY.encode())
        checkpoint = store.load(topics.events, 0)
    finally:
        client.close()
    assert checkpoint is not None and checkpoint.next_offset == N_EVENTS
    kind, data = checkpoint.models["logreg"]
    final = restore_learner(kind, data)
    agree = sum(
        1 for s in probe
        if final.predict_one(Row(s.features, s.key)) == reference.predict_one(Row(s.features, s.key))
    )
    print(f"probe-set agreement with the uninterrupted model: {agree}/{N_PROBE}; "
          f"test took {time.monotonic() - started:.1f} s")
    assert agree == N_PROBE
    assert checkpoint.extra["learned"] == {"logreg": N_EVENTS}
    if scope == "group":
        assert checkpoint.extra["sources"] == {f"{topics.events}:0": N_EVENTS}, "every label learned once"


def _rejoin_seconds(output: str) -> list[float]:
    """For each run of the worker in the log: seconds from its subscription to its first assignment."""
    seconds, subscribed = [], None
    for line in output.splitlines():
        if SUBSCRIBED in line or ASSIGNED in line:
            at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if SUBSCRIBED in line:
                subscribed = at
            elif subscribed is not None:
                seconds.append(at - subscribed)
                subscribed = None
    return seconds


def _replays_done(output: str) -> bool:
    """Every restore of the last run with a gap to replay learn-only (checkpoint below the committed offset) has
    caught up. An earlier run killed in the middle of its replay (possible once every event is committed: its kill
    waits only for its assignment) never logs it; the next run replays that gap again from its checkpoint."""
    last_run = output[output.rfind(SUBSCRIBED):]
    gaps = sum(1 for checkpoint, committed in RESTORED.findall(last_run) if int(checkpoint) < int(committed))
    return last_run.count(CAUGHT_UP) >= gaps
