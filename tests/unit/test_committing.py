"""The committers: at-least-once offsets wait for their outputs' delivery without a flush in the poll loop;
exactly-once commits run beside the loop, and the outputs made meanwhile wait for the next transaction."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from services.worker import committing
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
        self.nudges = 0

    def send(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> None:
        self.open.sent += 1

    def mark(self) -> DeliveryMark:
        closed, self.open = self.open, DeliveryMark(self.failures)
        return closed

    def serve_deliveries(self) -> None:
        self.served += 1

    def nudge(self) -> None:
        self.nudges += 1

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


def test_a_nudge_sends_the_outputs_at_once_and_commits_nothing() -> None:
    committer, producer, consumer = _committer()
    committer.send("predictions", b"x", None, None)
    assert committer.nudge() is True
    assert producer.nudges == 1
    assert producer.flushes == 0 and consumer.commits == []


def test_an_exactly_once_committer_does_not_nudge_inside_its_transaction() -> None:
    committer, producer = _transactional()
    committer.send("predictions", b"a", None, None)
    assert committer.nudge() is False
    assert producer.calls == ["init", "begin", "send a"]


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

    def nudge(self) -> None:
        self.calls.append("nudge")

    def close(self, timeout_s: float) -> None:
        self.calls.append("close")


class GroupConsumer:
    def group_metadata(self) -> str:
        return "generation-1"


def _transactional() -> tuple[TransactionalCommitter, FakeTransactionalProducer]:
    producer = FakeTransactionalProducer()
    committer = TransactionalCommitter(GroupConsumer(), lambda: producer, op_timeout_ms=1000)  # type: ignore[arg-type]
    return committer, producer


def _commit_ended(committer: TransactionalCommitter) -> None:
    """Wait until the commit on the helper thread has returned (its outcome not taken yet)."""
    running = committer._committing
    assert running is not None
    running[0].join(5)
    assert not running[0].is_alive()


def test_an_exactly_once_commit_runs_beside_the_loop_and_outputs_made_meanwhile_go_in_the_next_transaction() -> None:
    committer, producer = _transactional()
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1})  # returns while commit_transaction waits
    assert producer.calls == ["init", "begin", "send a", "offsets generation-1 [1]"]
    committer.send("predictions", b"b", None, None)  # returns at once: kept for the next transaction
    committer.send("dead-letters", b"c", None, None)
    committer.release()  # the commit still runs: nothing is sent
    assert producer.calls[4:] == [] and committer.deferred == 2
    producer.release.set()
    _commit_ended(committer)
    assert producer.calls[4:] == ["commit"], "kept outputs are sent only by the loop, once it took the outcome"
    committer.release()
    assert producer.calls[4:] == ["commit", "begin", "send b", "send c"] and committer.deferred == 0
    committer.send("predictions", b"d", None, None)
    assert producer.calls[-1] == "send d"


def test_outputs_kept_during_a_commit_are_bounded_and_past_the_bound_a_send_waits_for_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(committing, "DEFERRED_MAX_BYTES", 2 * (100 + 10))  # two outputs of 10 bytes
    committer, producer = _transactional()
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1})
    committer.send("predictions", b"b" * 10, None, None)
    committer.send("predictions", b"c" * 10, None, None)
    assert committer.deferred == 2
    sender = threading.Thread(target=committer.send, args=("predictions", b"d" * 10, None, None))
    sender.start()
    sender.join(0.2)
    assert sender.is_alive(), "past the bound, a send waits for the running commit"
    producer.release.set()
    sender.join(5)
    assert producer.calls[4:] == ["commit", "begin", f"send {'b' * 10}", f"send {'c' * 10}", f"send {'d' * 10}"]
    assert committer.deferred == 0


def test_a_forced_commit_sends_the_kept_outputs_in_its_transaction() -> None:
    committer, producer = _transactional()
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1})
    committer.send("predictions", b"b", None, None)
    producer.release.set()
    committer.commit({TP: 2})
    assert producer.calls[4:] == ["commit", "begin", "send b", "offsets generation-1 [2]", "commit"]


def test_a_failed_background_commit_raises_transaction_failed_and_drops_the_kept_outputs() -> None:
    committer, producer = _transactional()
    producer.fail_commit = True
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1})
    committer.send("predictions", b"b", None, None)  # kept while the commit runs
    producer.release.set()
    _commit_ended(committer)
    with pytest.raises(TransactionFailed, match="fenced"):
        committer.release()
    assert "send b" not in producer.calls and committer.deferred == 0
    committer.reset(lambda: False)
    committer.send("predictions", b"c", None, None)
    assert producer.calls[-2:] == ["begin", "send c"] and "send b" not in producer.calls


def test_a_reset_during_a_commit_drops_the_kept_outputs() -> None:
    committer, producer = _transactional()
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1})
    committer.send("predictions", b"b", None, None)
    producer.release.set()
    committer.reset(lambda: False)  # a rewind: the records behind "b" are read and processed again
    assert committer.deferred == 0
    committer.send("predictions", b"c", None, None)
    assert "send b" not in producer.calls and producer.calls[-1] == "send c"


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
    _commit_ended(committer)
    committer.send("predictions", b"b", None, None)  # takes the commit's outcome
    assert written == ["after commit"]

    producer.fail_commit = True
    committer.commit_when_delivered({TP: 2}, then=lambda: written.append("second"))
    _commit_ended(committer)
    with pytest.raises(TransactionFailed):
        committer.send("predictions", b"c", None, None)
    assert written == ["after commit"]


def test_each_successful_transaction_commit_is_timed_and_a_failed_one_is_not() -> None:
    producer = FakeTransactionalProducer()
    seconds: list[float] = []
    committer = TransactionalCommitter(GroupConsumer(), lambda: producer,  # type: ignore[arg-type]
                                       op_timeout_ms=1000, observe_commit=seconds.append)
    committer.send("predictions", b"a", None, None)
    committer.commit_when_delivered({TP: 1})
    threading.Timer(0.05, producer.release.set).start()  # the commit's answer comes 50 ms later
    _commit_ended(committer)
    committer.release()
    assert len(seconds) == 1 and 0.04 <= seconds[0] < 5, "the background commit, from its offsets to its answer"
    committer.send("predictions", b"b", None, None)
    committer.commit({TP: 2})  # a forced commit, on the polling thread
    assert len(seconds) == 2
    producer.fail_commit = True
    committer.send("predictions", b"c", None, None)
    with pytest.raises(TransactionFailed):
        committer.commit({TP: 3})
    assert len(seconds) == 2, "a failed commit is not a commit's time"
