"""The at-least-once committer: offsets wait for their outputs' delivery without a flush in the poll loop."""

from __future__ import annotations

from typing import Any

import pytest

from services.worker.committing import MAX_WAITING_COMMITS, Committer
from shared.kafka.transport import DeliveryFailures, DeliveryMark, TransportError

TP = ("events", 0)
OTHER = ("events", 1)


class FakeProducer:
    """Counts sends into marks as the real adapters do; deliveries are settled by the test."""

    def __init__(self) -> None:
        self.failures = DeliveryFailures()
        self.open = DeliveryMark(self.failures)
        self.flushes = 0
        self.served = 0

    def send(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> None:
        self.open.sent += 1

    def mark(self) -> DeliveryMark:
        closed, self.open = self.open, DeliveryMark(self.failures)
        return closed

    def serve_deliveries(self) -> None:
        self.served += 1

    def flush(self, timeout_s: float | None) -> None:
        self.flushes += 1
        self.failures.raise_any()

    def close(self, timeout_s: float) -> None:
        pass


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[tuple[dict[tuple[str, int], int], bool]] = []

    def commit(self, offsets: dict[tuple[str, int], int], *, wait: bool = True) -> None:
        self.commits.append((dict(offsets), wait))


def _committer() -> tuple[Committer, FakeProducer, FakeConsumer]:
    producer, consumer = FakeProducer(), FakeConsumer()
    return Committer(consumer, producer), producer, consumer  # type: ignore[arg-type]


def test_offsets_are_committed_only_once_their_outputs_are_delivered_and_never_by_a_flush() -> None:
    committer, producer, consumer = _committer()
    committer.send("predictions", b"a", None, None)
    committer.send("predictions", b"b", None, None)
    committer.commit_when_delivered({TP: 2})
    first = committer._waiting[0][0]
    committer.send("predictions", b"c", None, None)
    committer.commit_when_delivered({TP: 3})
    second = committer._waiting[1][0]
    assert consumer.commits == [] and producer.flushes == 0

    second.delivered()  # the later commit's output first (another partition): still nothing
    committer.release()
    assert consumer.commits == []
    first.delivered()
    committer.release()
    assert consumer.commits == []  # one of two
    first.delivered()
    committer.release()
    # both marks are done: the two commits go out as one, the later offset winning, not waiting for an answer
    assert consumer.commits == [({TP: 3}, False)]
    assert producer.flushes == 0 and producer.served >= 3


def test_a_failed_output_commits_what_came_before_it_and_nothing_after() -> None:
    committer, _producer, consumer = _committer()
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1})
    ok = committer._waiting[0][0]
    committer.send("dlq", b"b", None, None)
    committer.commit_when_delivered({TP: 2, OTHER: 5})
    bad = committer._waiting[1][0]
    committer.send("predictions", b"c", None, None)
    committer.commit_when_delivered({TP: 3})
    later = committer._waiting[2][0]
    later.delivered()
    bad.failed_with("dlq", "refused")
    ok.delivered()
    with pytest.raises(TransportError, match="dlq"):
        committer.release()
    assert consumer.commits == [({TP: 1}, False)]
    committer.release()  # nothing is left waiting to be committed after the failure
    assert consumer.commits == [({TP: 1}, False)]


def test_a_forced_commit_flushes_and_commits_every_waiting_offset_with_its_own() -> None:
    committer, producer, consumer = _committer()
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1, OTHER: 7})
    committer.send("predictions", b"b", None, None)
    committer.commit({TP: 2})
    assert producer.flushes == 1
    assert consumer.commits == [({TP: 2, OTHER: 7}, True)]
    assert not committer._waiting


def test_a_lost_partition_is_never_committed_from_the_waiting_offsets() -> None:
    committer, _producer, consumer = _committer()
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1, OTHER: 7})
    committer.forget([OTHER])
    committer._waiting[0][0].delivered()
    committer.release()
    assert consumer.commits == [({TP: 1}, False)]


def test_the_waiting_commits_are_bounded_by_a_flush() -> None:
    committer, producer, consumer = _committer()
    for offset in range(1, MAX_WAITING_COMMITS + 2):
        committer.send("predictions", b"x", None, None)
        committer.commit_when_delivered({TP: offset})
    assert len(committer._waiting) == 0
    assert producer.flushes == 1
    assert consumer.commits == [({TP: MAX_WAITING_COMMITS + 1}, False)]
