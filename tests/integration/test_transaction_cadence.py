"""Exactly-once on the real broker, each client: the outputs of a transaction become readable when its commit is
due (``worker.commit_interval_s``), also when no more records come to end the worker's poll. Before, the loop
committed only after its poll returned, so the last records before a pause waited up to ``kafka.poll_timeout_ms``
more (set long here to make that wait plain)."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from shared.kafka.admin import ensure_topics
from tests.integration.helpers import make_settings, running_worker

pytestmark = pytest.mark.integration

COMMIT_INTERVAL_S = 0.5
POLL_TIMEOUT_MS = 2_000
#: the bound on an event's wait, from its send to its prediction readable: the interval, its commit and the reads,
#: far under the poll timeout that used to be added
READABLE_WITHIN_S = 1.5


def _event(event_id: str) -> tuple[bytes, bytes]:
    return event_id.encode(), orjson.dumps({"id": event_id, "features": {"x": 1.0}, "label": True})


def _wait_readable(reader: Consumer, event_id: str, timeout_s: float) -> float:
    """Seconds until the prediction of ``event_id`` was read (committed), or ``inf``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        message = reader.poll(0.05)
        value = message.value() if message is not None and message.error() is None else None
        if value is not None and orjson.loads(value)["id"] == event_id:
            return time.monotonic() - started
    return float("inf")


def test_a_transaction_commits_when_due_while_the_poll_waits_for_records(
    kafka_bootstrap: str, unique_name: Callable[[str], str], kafka_client: str,
) -> None:
    settings = make_settings(
        kafka_bootstrap, unique_name, models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}],
        kafka={"client": kafka_client, "exactly_once": True, "poll_timeout_ms": POLL_TIMEOUT_MS},
        worker={"commit_interval_s": COMMIT_INTERVAL_S},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": unique_name("reader"),
                       "isolation.level": "read_committed", "enable.auto.commit": False})
    reader.assign([TopicPartition(t.predictions, 0, 0)])
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})

    def send(event_id: str) -> None:
        key, value = _event(event_id)
        producer.produce(t.events, value, key)
        assert producer.flush(10) == 0

    try:
        with running_worker(settings):
            send("first")
            # the first event's transaction commits at once (nothing committed for longer than the interval)
            assert _wait_readable(reader, "first", 60.0) < 60.0
            # right after that commit: the second event's commit is due an interval later, and nothing follows it
            # (so it waits for part of it at least: the test is void when the commit came at once)
            send("second")
            waited = _wait_readable(reader, "second", 2 * POLL_TIMEOUT_MS / 1000)
            assert 0.1 < waited < READABLE_WITHIN_S, (
                f"readable after {waited:.2f} s: expected at most about the {COMMIT_INTERVAL_S} s interval, "
                f"not the {POLL_TIMEOUT_MS / 1000} s poll")
    finally:
        reader.close()
