"""The at-least-once committer: offsets wait for their outputs' delivery without a flush in the poll loop."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from services.worker.committing import MAX_WAITING_COMMITS, Committer, TransactionalCommitter, TransactionFailed
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


class FakeTransactionalProducer:
    """Records the transactional calls; ``commit_transaction`` waits for ``release`` and may fail."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()
        self.fail_commit = False

    def init_transactions(self, timeout_s: float) -> None:
        self.calls.append("init")

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> None:
        self.calls.append(f"send {value.decode()}")

    def send_offsets_to_transaction(self, offsets: dict[Any, int], consumer: Any, timeout_s: float) -> None:
        self.calls.append(f"offsets {consumer.group_metadata()} {sorted(offsets.values())}")

    def commit_transaction(self, timeout_s: float) -> None:
        assert self.release.wait(5)
        self.calls.append("commit")
        if self.fail_commit:
            raise TransportError("fenced")

    def close(self, timeout_s: float) -> None:
        self.calls.append("close")


class GroupConsumer:
    def group_metadata(self) -> str:
        return "generation-1"


def test_an_exactly_once_commit_runs_beside_the_loop_and_the_next_send_waits_for_it() -> None:
    producer = FakeTransactionalProducer()
    committer = TransactionalCommitter(GroupConsumer(), lambda: producer, op_timeout_ms=1000)  # type: ignore[arg-type]
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1})  # returns while commit_transaction waits
    assert producer.calls == ["init", "begin", "send a", "offsets generation-1 [1]"]
    committer.release()  # still running: nothing happens
    sender = threading.Thread(target=committer.send, args=("predictions", b"b", None, None))
    sender.start()
    sender.join(0.2)
    assert sender.is_alive(), "a send must wait for the running commit (the next transaction opens after it)"
    producer.release.set()
    sender.join(5)
    assert producer.calls[4:] == ["commit", "begin", "send b"]


def test_a_failed_background_commit_raises_transaction_failed_at_the_next_step() -> None:
    producer = FakeTransactionalProducer()
    producer.release.set()
    producer.fail_commit = True
    committer = TransactionalCommitter(GroupConsumer(), lambda: producer, op_timeout_ms=1000)  # type: ignore[arg-type]
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1})
    with pytest.raises(TransactionFailed, match="fenced"):
        committer.send("predictions", b"b", None, None)
    assert "send b" not in producer.calls


def test_a_periodic_checkpoint_is_written_only_once_the_outputs_before_it_are_delivered() -> None:
    committer, producer, consumer = _committer()
    written: list[str] = []
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1}, then=lambda: written.append("checkpoint"))
    mark = committer._waiting[0][0]
    committer.release()
    assert written == [] and producer.flushes == 0  # not delivered yet, and no flush to get there
    mark.delivered()
    committer.release()
    assert consumer.commits == [({TP: 1}, False)] and written == ["checkpoint"]
    committer.release()
    assert written == ["checkpoint"]  # once


def test_a_failed_output_drops_the_checkpoint_riding_on_its_commit() -> None:
    committer, _, _ = _committer()
    written: list[str] = []
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1}, then=lambda: written.append("checkpoint"))
    committer._waiting[0][0].failed_with("predictions", "refused")
    with pytest.raises(TransportError):
        committer.release()
    committer.release()
    assert written == []


def test_a_forced_commit_writes_the_waiting_checkpoint_after_delivering_everything() -> None:
    committer, producer, consumer = _committer()
    order: list[str] = []
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1}, then=lambda: order.append(f"checkpoint after {producer.flushes} flush"))
    committer.commit({TP: 2})
    assert order == ["checkpoint after 1 flush"] and consumer.commits == [({TP: 2}, True)]


def test_an_exactly_once_checkpoint_is_written_once_its_transaction_committed_and_never_when_it_failed() -> None:
    producer = FakeTransactionalProducer()
    committer = TransactionalCommitter(GroupConsumer(), lambda: producer, op_timeout_ms=1000)  # type: ignore[arg-type]
    written: list[str] = []
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1}, then=lambda: written.append(f"after {producer.calls[-1]}"))
    committer.release()
    assert written == []  # the transaction is still committing
    producer.release.set()
    committer.send("predictions", b"b", None, None)  # takes the commit's outcome
    assert written == ["after commit"]

    producer.fail_commit = True
    committer.commit_when_delivered({TP: 2}, then=lambda: written.append("second"))
    with pytest.raises(TransactionFailed):
        committer.send("predictions", b"c", None, None)
    assert written == ["after commit"]
