"""The confluent transport's pause on the real broker: a paused partition's records are held back, not delivered,
while the others flow; after the resume every record of every partition is delivered exactly once, in offset order,
whether the pause stayed within the limit of held-back records or went past it (paused in librdkafka, which drops
what it fetched, and read on from after the last record held back)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pytest
from confluent_kafka import Producer

from shared.kafka.admin import ensure_topics
from shared.kafka.confluent import HELD_BACK_RECORD_OVERHEAD, ConfluentConsumer
from shared.settings import KafkaSettings

pytestmark = pytest.mark.integration

PER_PARTITION = 3_000
TIMEOUT_S = 60.0


class Handler:
    def __init__(self) -> None:
        self.assigned: list[tuple[str, int]] = []

    def on_assigned(self, tps: Sequence[tuple[str, int]]) -> None:
        self.assigned.extend(tps)

    async def on_revoked(self, tps: Sequence[tuple[str, int]]) -> None:
        return None

    def on_lost(self, tps: Sequence[tuple[str, int]]) -> None:
        return None


def _produce(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for offset in range(PER_PARTITION):
        for partition in (0, 1):
            producer.produce(topic, value=f"{partition}-{offset}".encode(), partition=partition)
    assert producer.flush(30) == 0


@pytest.mark.parametrize("limit", [None, 200], ids=["within-the-limit", "past-the-limit"])
def test_a_paused_partition_is_held_back_then_delivered_exactly_once_in_order(
    kafka_bootstrap: str, unique_name: Callable[[str], str], limit: int | None,
) -> None:
    """``limit``: how many of the paused partition's records may be held back (None: the default, far more)."""
    topic = unique_name("events")
    ensure_topics(kafka_bootstrap, {topic: 2})
    _produce(kafka_bootstrap, topic)
    consumer = ConfluentConsumer(KafkaSettings(client="confluent", bootstrap_servers=kafka_bootstrap,
                                               group_id=unique_name("group"), max_poll_records=100))
    handler = Handler()
    consumer.subscribe([topic], handler)
    paused_tp, running_tp = (topic, 0), (topic, 1)
    seen: dict[int, list[int]] = {0: [], 1: []}
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while len(handler.assigned) < 2:
            assert time.monotonic() < deadline, "no assignment"
            assert consumer.poll(timeout_ms=100, max_records=100) == []
        consumer.resume([paused_tp, running_tp])  # assigned paused, as the worker's restore expects
        while not seen[0]:
            assert time.monotonic() < deadline, "nothing read from partition 0"
            for record in consumer.poll(timeout_ms=100, max_records=100):
                seen[record.partition].append(record.offset)
        consumer.pause([paused_tp])
        delivered_before_pause = len(seen[0])
        if limit is not None:  # the bytes of the next `limit` records of the paused partition ("0-<offset>", no key)
            consumer._held_back_limit = sum(len(f"0-{offset}") + HELD_BACK_RECORD_OVERHEAD
                                            for offset in range(delivered_before_pause, delivered_before_pause + limit))
        while len(seen[1]) < PER_PARTITION:
            assert time.monotonic() < deadline, f"partition 1 stopped at {len(seen[1])} records"
            for record in consumer.poll(timeout_ms=100, max_records=100):
                assert record.partition == 1, "nothing of the paused partition is delivered"
                seen[1].append(record.offset)
        # the paused partition's records go on arriving (librdkafka still fetches it) and are held back, up to the
        # limit: past it, the partition is paused in librdkafka too and the rest is read again after the resume
        left = PER_PARTITION - delivered_before_pause
        expected_held = left if limit is None else min(limit, left)
        while consumer.held_back < expected_held:
            assert time.monotonic() < deadline, f"held back {consumer.held_back} of {expected_held}"
            assert consumer.poll(timeout_ms=100, max_records=100) == [], "nothing of the paused partition"
        assert consumer.poll(timeout_ms=300, max_records=100) == []
        assert consumer.held_back == expected_held
        assert len(seen[0]) == delivered_before_pause
        assert consumer.lag(paused_tp) == PER_PARTITION - delivered_before_pause, "held back is not delivered"

        consumer.resume([paused_tp])
        while len(seen[0]) < PER_PARTITION:
            assert time.monotonic() < deadline, f"partition 0 stopped at {len(seen[0])} records"
            for record in consumer.poll(timeout_ms=100, max_records=100):
                seen[record.partition].append(record.offset)
        assert consumer.held_back == 0
        # nothing more comes (no record delivered twice after the end)
        assert consumer.poll(timeout_ms=500, max_records=100) == []
    finally:
        consumer.close()
    assert seen[0] == list(range(PER_PARTITION)), "every record once, in offset order"
    assert seen[1] == list(range(PER_PARTITION))
