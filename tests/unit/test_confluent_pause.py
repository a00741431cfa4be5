"""The confluent transport's pause: the records read for a paused partition are held back and delivered after its
resume, and only past a limit is the partition paused in librdkafka (which drops what it fetched for it). Pure
logic: librdkafka's consumer replaced by a stand-in that hands out scripted messages."""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import TopicPartition

from shared.kafka.confluent import HELD_BACK_RECORD_OVERHEAD, ConfluentConsumer
from shared.settings import KafkaSettings
from tests.unit.test_confluent_rebalance_poll import TOPIC, Handler, Message

A, B = (TOPIC, 0), (TOPIC, 1)
#: what one of the stand-in's messages (key ``k``, value ``{}``) counts against the limit of held-back bytes
RECORD_SIZE = 3 + HELD_BACK_RECORD_OVERHEAD


class Raw:
    """librdkafka's consumer: ``poll`` and ``consume`` hand out the queued messages in order; pauses, resumes and
    seeks are recorded."""

    def __init__(self) -> None:
        self.queue: list[Message] = []
        self.paused: list[int] = []
        self.resumed: list[int] = []
        self.sought: list[tuple[int, int]] = []
        #: the partitions whose leaders were sent a request after a resume (``offsets_for_times``)
        self.woken: list[int] = []

    def add(self, partition: int, offsets: range) -> None:
        self.queue += [Message(partition, offset) for offset in offsets]

    def poll(self, timeout: float) -> Message | None:
        return self.queue.pop(0) if self.queue else None

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        taken, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        return taken

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused += [p.partition for p in partitions]

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.resumed += [p.partition for p in partitions]

    def seek(self, partition: TopicPartition) -> None:
        self.sought.append((partition.partition, partition.offset))

    def offsets_for_times(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.woken += [p.partition for p in partitions]
        return partitions


def consumer_over(raw: Raw, assigned: dict[int, int], *, limit: int = 1_000) -> ConfluentConsumer:
    """A transport over ``raw`` holding ``assigned`` (partition: next offset); ``limit`` in held-back records."""
    consumer = ConfluentConsumer(KafkaSettings(client="confluent", batch_wait_ms=0))
    consumer.raw = raw  # type: ignore[assignment]
    consumer._handler = Handler()
    consumer._held_back_limit = limit * RECORD_SIZE
    for partition, offset in assigned.items():
        consumer._assigned.add((TOPIC, partition))
        consumer._next[(TOPIC, partition)] = offset
    return consumer


def delivered(records: Sequence[object]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records]  # type: ignore[attr-defined]


def test_a_paused_partitions_records_are_held_back_and_delivered_in_order_after_its_resume() -> None:
    raw = Raw()
    consumer = consumer_over(raw, {0: 0, 1: 0})
    consumer.pause([A])
    assert consumer.paused() == {A}
    raw.add(0, range(0, 3))
    raw.add(1, range(0, 2))
    raw.add(0, range(3, 5))
    assert delivered(consumer.poll(timeout_ms=0, max_records=100)) == [(1, 0), (1, 1)], "only the running one"
    assert consumer.held_back == 5 and consumer._next[A] == 0, "held back: not delivered, the position stays"
    assert raw.paused == [] and raw.sought == [], "librdkafka keeps (and does not fetch again) what it read"

    consumer.resume([A])
    assert raw.woken == [], "no request to the broker: its fetcher never stopped"
    raw.add(0, range(5, 7))  # read meanwhile: after the held-back records
    assert delivered(consumer.poll(timeout_ms=0, max_records=3)) == [(0, 0), (0, 1), (0, 2)]
    assert consumer._next[A] == 3 and consumer.held_back == 2
    assert delivered(consumer.poll(timeout_ms=0, max_records=100)) == [(0, 3), (0, 4)], "the held back first"
    assert delivered(consumer.poll(timeout_ms=0, max_records=100)) == [(0, 5), (0, 6)]
    assert consumer._next[A] == 7 and consumer.held_back == 0 and consumer._held_back_bytes == 0
    assert raw.resumed == [] and raw.sought == []


def test_at_the_limit_the_partition_is_paused_in_librdkafka_and_read_on_from_after_the_held_back() -> None:
    raw = Raw()
    consumer = consumer_over(raw, {0: 10, 1: 0}, limit=4)
    consumer.pause([A])
    raw.add(0, range(10, 16))
    raw.add(1, range(0, 1))
    assert delivered(consumer.poll(timeout_ms=0, max_records=100)) == [(1, 0)]
    assert raw.paused == [0], "paused in librdkafka once the limit was reached"
    assert consumer.held_back == 4, "the limit: the rest of the poll is left to be read again"

    consumer.resume([A])
    assert raw.resumed == [0]
    assert raw.woken == [0], "the leader's fetcher is woken: librdkafka would sleep up to a second"
    assert raw.sought == [(0, 14)], "read on from after the last record held back, not from the delivered position"
    raw.add(0, range(14, 16))
    assert delivered(consumer.poll(timeout_ms=0, max_records=100)) == [(0, o) for o in range(10, 14)]
    assert delivered(consumer.poll(timeout_ms=0, max_records=100)) == [(0, 14), (0, 15)]
    assert consumer._next[A] == 16


def test_a_seek_of_a_paused_partition_drops_its_held_back_records() -> None:
    raw = Raw()
    consumer = consumer_over(raw, {0: 0})
    consumer.pause([A])
    raw.add(0, range(0, 3))
    assert consumer.poll(timeout_ms=0, max_records=100) == []
    consumer.seek(A, 100)
    assert consumer.held_back == 0 and raw.sought == [(0, 100)], "not paused in librdkafka: sought at once"
    assert consumer._held_back_bytes == 0
    consumer.resume([A])
    raw.add(0, range(100, 102))
    assert delivered(consumer.poll(timeout_ms=0, max_records=100)) == [(0, 100), (0, 101)]


def test_a_revoked_partition_forgets_its_held_back_records() -> None:
    raw = Raw()
    consumer = consumer_over(raw, {0: 0, 1: 0})
    consumer.pause([A])
    raw.add(0, range(0, 3))
    consumer.poll(timeout_ms=0, max_records=100)
    assert consumer.held_back == 3
    consumer._on_revoke(raw, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    assert consumer.held_back == 0 and consumer._held_back_bytes == 0 and consumer.paused() == set()
    consumer.resume([A])
    assert consumer.poll(timeout_ms=0, max_records=100) == []


def test_the_limit_is_shared_by_all_paused_partitions() -> None:
    raw = Raw()
    consumer = consumer_over(raw, {0: 0, 1: 0}, limit=4)
    consumer.pause([A, B])
    raw.add(0, range(0, 3))
    raw.add(1, range(0, 3))
    assert consumer.poll(timeout_ms=0, max_records=100) == []
    assert raw.paused == [1], "the partition that reached the limit of all held back together"
    assert consumer.held_back == 4
    consumer.resume([A, B])
    assert raw.resumed == [1] and raw.sought == [(1, 1)]
    raw.add(1, range(1, 3))
    assert delivered(consumer.poll(timeout_ms=0, max_records=100)) == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert delivered(consumer.poll(timeout_ms=0, max_records=100)) == [(1, 1), (1, 2)]
    assert consumer._held_back_bytes == 0
