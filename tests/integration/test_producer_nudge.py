"""``EventProducer.nudge`` on the real broker, with each client: a record that would wait for a long
``linger_ms`` is sent at once when nudged (the worker nudges a small batch's outputs at the head of the stream;
tests/unit/test_worker_nudge.py says when)."""

from __future__ import annotations

import time
import uuid

import pytest

from shared.kafka.admin import ensure_topics
from shared.kafka.transport import DeliveryMark, EventProducer, open_producer
from shared.settings import KafkaSettings

pytestmark = pytest.mark.integration

LINGER_MS = 4_000
#: how long the un-nudged record is watched: it must still be waiting for its linger
WATCH_S = 0.5


def _wait_delivered(producer: EventProducer, mark: DeliveryMark, seconds: float, *, nudge: bool) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if nudge:
            producer.nudge()
        producer.serve_deliveries()
        if mark.done:
            return True
        time.sleep(0.01)
    return mark.done


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_a_nudged_record_is_sent_without_waiting_for_the_linger(kafka_bootstrap: str, client: str) -> None:
    topic = f"nudge-{client}-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, {topic: 1})
    producer = open_producer(KafkaSettings(bootstrap_servers=kafka_bootstrap, client=client,  # type: ignore[arg-type]
                                           linger_ms=LINGER_MS, exactly_once=False))
    try:
        producer.send(topic, b"warm-up", None, None)  # connections and the producer id, so that only linger is left
        producer.flush(30)
        producer.mark()

        producer.send(topic, b"lingering", None, None)
        lingering = producer.mark()
        assert not _wait_delivered(producer, lingering, WATCH_S, nudge=False), "linger_ms did not hold the record"
        assert _wait_delivered(producer, lingering, 2.0, nudge=True)

        producer.send(topic, b"nudged", None, None)
        nudged = producer.mark()
        started = time.monotonic()
        assert _wait_delivered(producer, nudged, 2.0, nudge=True)
        assert time.monotonic() - started < LINGER_MS / 1000 / 2
    finally:
        producer.close(5)
