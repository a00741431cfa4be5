"""The scale floor's contender (``python -m bench.runner group-relay``) on the real broker: two relays form one
group, split 4 partitions, wait for the go, relay every event once between them and report their shares."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaProducer

from bench.common import RunResult
from shared.kafka.admin import ensure_topics
from tests.integration.helpers import read_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 2_000


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_two_group_relays_split_the_partitions_and_relay_every_event_once(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path, client: str,
) -> None:
    events, predictions, group = unique_name("events"), unique_name("predictions"), unique_name("group")
    ensure_topics(kafka_bootstrap, {events: 4, predictions: 1})
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    for i in range(EVENTS):
        producer.send(events, key=f"k{i}".encode(), value=json.dumps({"id": f"e{i}"}).encode())
    producer.flush()
    producer.close()

    go, stop = tmp_path / "go", tmp_path / "stop"
    relays = []
    for index in range(2):
        ready, result = tmp_path / f"ready{index}", tmp_path / f"result{index}"
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.runner", "group-relay", "--model", "logreg", "--client", client,
             "--bootstrap", kafka_bootstrap, "--topic", events, "--predictions", predictions, "--group", group,
             "--burn-us", "20", "--ready-file", str(ready), "--go-file", str(go), "--stop-file", str(stop),
             "--result", str(result)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        relays.append((process, ready, result))
    try:
        deadline = time.monotonic() + 90
        while True:
            shares = [json.loads(ready.read_text()) for _, ready, _ in relays if ready.exists()]
            if len(shares) == 2 and all(shares) and sorted(p for share in shares for p in share) == [0, 1, 2, 3]:
                break
            assert all(process.poll() is None for process, _, _ in relays), "a relay exited before the go"
            assert time.monotonic() < deadline, f"the relays did not split the partitions: {shares}"
            time.sleep(0.1)
        assert not list((tmp_path).glob("result*")), "nothing is relayed before the go"
        go.touch()
        while not all(result.exists() for _, _, result in relays):
            assert time.monotonic() < deadline, "the relays did not report"
            time.sleep(0.1)
    finally:
        stop.touch()
        for process, _, _ in relays:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    reports = [RunResult.read(result) for _, _, result in relays]
    assert sum(r.events for r in reports) == EVENTS
    assert sorted(p for r in reports for p in r.extra["partitions"]) == [0, 1, 2, 3]
    assert all(r.finished > r.started > 0 and r.cpu_s > 0 for r in reports)
    relayed = read_topic(kafka_bootstrap, predictions, EVENTS, to_end=True)
    assert sorted(json.loads(r.value)["id"] for r in relayed) == sorted(f"e{i}" for i in range(EVENTS))
