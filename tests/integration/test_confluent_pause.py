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


#: a record produced to a partition just resumed is read within this (librdkafka alone: 0.65 to 0.9 s here)
RESUMED_FETCH_S = 0.3


def _first_record_after(consumer: ConfluentConsumer, bootstrap: str, topic: str, idle_s: float) -> float:
    """Poll for ``idle_s`` with nothing to read, then produce one record to partition 0 of ``topic``: the seconds
    from its delivery until ``consumer`` returns it."""
    idle_until = time.monotonic() + idle_s
    while time.monotonic() < idle_until:
        assert consumer.poll(timeout_ms=10, max_records=100) == []
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    producer.produce(topic, value=b"late", partition=0)
    assert producer.flush(10) == 0
    delivered = time.monotonic()
    while time.monotonic() - delivered < 5:
        if consumer.poll(timeout_ms=10, max_records=100):
            return time.monotonic() - delivered
    raise AssertionError("the record was not read in 5 s")


@pytest.mark.parametrize("idle_s", [0.0, 0.2])
def test_records_of_partitions_resumed_in_librdkafka_are_fetched_at_once(
    kafka_bootstrap: str, unique_name: Callable[[str], str], idle_s: float,
) -> None:
    """A partition paused in librdkafka (every one at assignment, until the worker's restore resumes it; one past
    the limit of held-back records) is fetched as soon as it is resumed: librdkafka alone leaves the broker's
    fetcher asleep for up to a second (``ConfluentConsumer._wake_fetchers``)."""
    topic = unique_name("events")
    ensure_topics(kafka_bootstrap, {topic: 1})
    consumer = ConfluentConsumer(KafkaSettings(client="confluent", bootstrap_servers=kafka_bootstrap,
                                               group_id=unique_name("group"), max_poll_records=100))
    handler = Handler()
    consumer.subscribe([topic], handler)
    tp = (topic, 0)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not handler.assigned:
            assert time.monotonic() < deadline, "no assignment"
            assert consumer.poll(timeout_ms=100, max_records=100) == []
        time.sleep(0.1)  # the assignment's first fetches are over: the fetcher has nothing left to fetch
        consumer.resume([tp])
        after_assignment = _first_record_after(consumer, kafka_bootstrap, topic, idle_s)

        # past the limit of held-back records: paused in librdkafka too, then resumed
        consumer._held_back_limit = 1
        consumer.pause([tp])
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
        producer.produce(topic, value=b"held", partition=0)
        assert producer.flush(10) == 0
        while tp not in consumer._stopped:
            assert time.monotonic() < deadline, "the partition was not paused in librdkafka"
            assert consumer.poll(timeout_ms=10, max_records=100) == []
        time.sleep(0.1)
        consumer.resume([tp])
        assert [r.value for r in consumer.poll(timeout_ms=100, max_records=100)] == [b"held"]
        after_hold_back = _first_record_after(consumer, kafka_bootstrap, topic, idle_s)
    finally:
        consumer.close()
    assert after_assignment < RESUMED_FETCH_S, f"read {after_assignment:.3f} s after the resume at assignment"
    assert after_hold_back < RESUMED_FETCH_S, f"read {after_hold_back:.3f} s after the resume past the limit"
