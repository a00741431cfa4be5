"""How the worker makes a batch's outputs durable and commits its offsets: at-least-once or exactly-once.

Exactly-once (docs/architecture.md, "Commit semantics"): predictions, dead letters and the consumer offsets go
out in one Kafka transaction. Every transactional step waits at most ``kafka.transaction_op_timeout_ms``; a step
that fails or times out raises :class:`TransactionFailed`, and the worker then calls :meth:`reset` (a new producer
with the same transactional id fences the old one, so whatever it left open is aborted) and rewinds its
partitions to the committed offsets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from shared.kafka.transport import DeliveryMark, EventConsumer, EventProducer, TransportError

log = logging.getLogger("streamlearn.commit")

TP = tuple[str, int]

#: seconds the old producer gets to close after a failed transaction (its buffered records are dropped)
_CLOSE_TIMEOUT_S = 2.0
#: seconds the producer gets to deliver what it holds when the worker stops
_FLUSH_TIMEOUT_S = 120.0
#: at-least-once: at most this many commits wait for their outputs' delivery; one more delivers everything first
#: (a blocking flush: the broker is not keeping up, and the loop waits for it)
MAX_WAITING_COMMITS = 64
#: exactly-once: outputs made while a commit runs on the helper thread wait for it in memory, up to this many bytes
#: (values, keys and 100 B each: about 700 predictions, a 35 ms commit at 20,000 events/s); past that, a send waits
#: for the commit to end. Larger bounds left the long memory run's RSS higher at its end (8 MiB: +9 MiB; 1 MiB:
#: +5 MiB; this: +1.0 MiB; keeping none: +0.4 MiB; docs/benchmarks.md)
DEFERRED_MAX_BYTES = 256 * 1024
_DEFERRED_OVERHEAD_BYTES = 100

Output = tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]


class TransactionFailed(Exception):
    """A transaction could not be committed, or its outcome is unknown; the worker must rewind."""


class Committer:
    """At-least-once: offsets are committed once every output sent before them is delivered.

    The poll loop's periodic commits (:meth:`commit_when_delivered`) queue the offsets behind a
    :class:`~shared.kafka.transport.DeliveryMark` of the producer and go on; :meth:`release`, called on every turn
    of the loop, commits the offsets whose mark is done. No flush stalls the loop. A forced commit (revoke,
    shutdown: :meth:`commit`) still delivers everything first. A periodic checkpoint rides on a periodic commit
    (``then``): its snapshot is taken at the commit and written once the commit's outputs are delivered.
    """

    def __init__(self, consumer: EventConsumer, producer: EventProducer) -> None:
        self._consumer = consumer
        self._producer = producer
        #: (mark, offsets, what to call once they are delivered) in commit order; bounded by ``MAX_WAITING_COMMITS``
        self._waiting: deque[tuple[DeliveryMark, dict[TP, int], list[Callable[[], object]]]] = deque()

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        """Hand one output record to the producer."""
        self._producer.send(topic, value, key, headers)

    @property
    def deferred(self) -> int:
        """Outputs made and not handed to the producer yet (exactly-once, while a commit runs); 0 here."""
        return 0

    def nudge(self) -> bool:
        """Send the outputs made so far now, not after ``kafka.linger_ms`` (the loop is at the head of the stream,
        where no later output would share their batch); whether it did."""
        self._producer.nudge()
        return True

    def commit(self, offsets: dict[TP, int], *, wait: bool = True) -> None:
        """Deliver everything sent so far, then commit ``offsets`` (next offsets to read) with every commit still
        waiting for its outputs.

        ``wait=False`` does not wait for the broker to acknowledge the offsets (the outputs are delivered
        either way); a lost commit only means re-reading.
        """
        self._producer.flush(None)
        merged, then = self._take_waiting(offsets)
        self._consumer.commit(merged, wait=wait)
        _call_all(then)

    def commit_when_delivered(self, offsets: dict[TP, int], then: Callable[[], object] | None = None) -> None:
        """Commit ``offsets`` once every output sent so far is delivered, without waiting for that here; then call
        ``then`` (on the polling thread, from :meth:`release` or :meth:`commit`; never when an output failed).

        Raises :class:`TransportError` when an output of an earlier commit failed (see :meth:`release`).
        """
        if len(self._waiting) >= MAX_WAITING_COMMITS:
            self.commit(offsets, wait=False)
            if then is not None:
                then()
            return
        if offsets or then is not None:
            self._waiting.append((self._producer.mark(), offsets, [then] if then is not None else []))
        self.release()

    def release(self) -> None:
        """Commit (without waiting for the answer) the offsets whose outputs are all delivered, oldest first.

        An output that failed raises :class:`TransportError` once everything before it is committed: nothing past
        it is committed, and the worker stops.
        """
        # every turn, also with nothing waiting: librdkafka runs one Python callback per delivered record, and a
        # second's worth served at the next commit stalled the loop 12-20 ms at 6,400 records/s
        self._producer.serve_deliveries()
        if not self._waiting:
            return
        ready: dict[TP, int] = {}
        then: list[Callable[[], object]] = []
        failed: DeliveryMark | None = None
        while self._waiting and self._waiting[0][0].done:
            mark, offsets, calls = self._waiting[0]
            if mark.failed:
                failed = mark
                break
            self._waiting.popleft()
            ready.update(offsets)
            then += calls
        if ready:
            self._consumer.commit(ready, wait=False)
        _call_all(then)
        if failed is not None:
            self._waiting.clear()
            failed.raise_failed()

    def forget(self, tps: list[TP]) -> None:
        """Drop the waiting offsets of partitions this worker no longer owns (lost in a rebalance)."""
        for _, offsets, _ in self._waiting:
            for tp in tps:
                offsets.pop(tp, None)

    async def commit_in_listener(self, offsets: dict[TP, int]) -> None:
        """The same commit from inside a rebalance listener (kafka-python: on its IO thread, awaited)."""
        self._producer.flush(None)
        merged, then = self._take_waiting(offsets)
        await self._consumer.commit_in_listener(merged)
        _call_all(then)

    def reset(self, stopping: Callable[[], bool]) -> None:
        """Only the transactional committer can be reset."""
        raise NotImplementedError("at-least-once commits are not rewound")

    def close(self) -> None:
        """Close the producer (delivering what it holds)."""
        self._producer.close(_FLUSH_TIMEOUT_S)

    def _take_waiting(self, offsets: dict[TP, int]) -> tuple[dict[TP, int], list[Callable[[], object]]]:
        """The waiting commits' offsets merged in order, then ``offsets``, and what to call after them (called once
        everything is delivered)."""
        merged: dict[TP, int] = {}
        then: list[Callable[[], object]] = []
        while self._waiting:
            _, waiting, calls = self._waiting.popleft()
            merged.update(waiting)
            then += calls
        merged.update(offsets)
        return merged, then


def _call_all(calls: list[Callable[[], object]]) -> None:
    for call in calls:
        call()


class _GroupMetadata:
    """The consumer's group metadata, taken on the polling thread for a commit that finishes on another."""

    def __init__(self, metadata: Any) -> None:
        self._metadata = metadata

    def group_metadata(self) -> Any:
        return self._metadata


class TransactionalCommitter(Committer):
    """Exactly-once: outputs and consumer offsets go out in one Kafka transaction per commit.

    The poll loop's periodic commits (:meth:`commit_when_delivered`) run on a helper thread while the loop goes on
    polling and processing: outputs made meanwhile are kept (at most ``DEFERRED_MAX_BYTES``; past that a send
    waits) and sent, in order, in the next transaction once the commit has ended, so the commit's round trips
    overlap the loop's work instead of stopping it. Its outcome is taken by the next :meth:`send` after it ended,
    :meth:`commit` or :meth:`release`; a failure raises :class:`TransactionFailed` there and drops the kept
    outputs (the worker rewinds to the committed offsets and makes them again). A forced commit (checkpoint,
    revoke, shutdown: :meth:`commit`) waits for its transaction; a periodic checkpoint (``then``) is written once
    its commit succeeded, so a checkpoint never runs ahead of what Kafka committed.

    ``producer_factory`` builds a transactional producer (always the same transactional id); it is called again by
    :meth:`reset`.
    """

    def __init__(
        self, consumer: EventConsumer, producer_factory: Callable[[], EventProducer], *, op_timeout_ms: int,
        retry_s: float = 1.0, observe_commit: Callable[[float], object] | None = None,
    ) -> None:
        self._factory = producer_factory
        #: called with each successful commit's seconds (offsets added, transaction committed), on either thread
        self._observe_commit = observe_commit
        self._op_timeout_s = op_timeout_ms / 1000
        self._retry_s = retry_s
        self._open = False
        #: the commit running on a helper thread: the thread, once it ended what it raised, and what to call once it
        #: succeeded
        self._committing: tuple[threading.Thread, list[BaseException], Callable[[], object] | None] | None = None
        #: outputs made while that commit runs, and their size (bounded by ``DEFERRED_MAX_BYTES``)
        self._deferred: list[Output] = []
        self._deferred_bytes = 0
        super().__init__(consumer, self._new_producer(lambda: False))

    @property
    def deferred(self) -> int:
        """Outputs kept while a commit runs, to be sent in the next transaction once it has ended."""
        return len(self._deferred)

    def nudge(self) -> bool:
        """Nothing: a transaction's outputs are read when it commits, which sends them (and a flush here could
        race the commit on its helper thread)."""
        return False

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        """Send inside the open transaction (opened on the first record after a commit). While a commit runs the
        output is kept for the next transaction; when that would pass ``DEFERRED_MAX_BYTES`` the commit is waited
        for first."""
        committing = self._committing
        if committing is not None:
            size = len(value) + (len(key) if key else 0) + _DEFERRED_OVERHEAD_BYTES
            if committing[0].is_alive() and self._deferred_bytes + size <= DEFERRED_MAX_BYTES:
                self._deferred.append((topic, value, key, headers))
                self._deferred_bytes += size
                return
            self._finish_commit()
        self._send_now(topic, value, key, headers)

    def _send_now(self, topic: str, value: bytes, key: bytes | None,
                  headers: list[tuple[str, bytes]] | None) -> None:
        try:
            if not self._open:
                self._producer.begin_transaction()
                self._open = True
            self._producer.send(topic, value, key, headers)
        except TransportError as exc:  # the producer is in an error state: the transaction cannot complete
            raise TransactionFailed(f"send failed: {exc}") from exc

    def commit(self, offsets: dict[TP, int], *, wait: bool = True) -> None:
        """Commit the open transaction with ``offsets``; raise :class:`TransactionFailed` when that fails.

        A transaction's commit always waits (``wait`` is ignored): its outputs become readable only then."""
        self._finish_commit()
        if not offsets and not self._open:
            return
        started = time.perf_counter()
        try:
            if not self._open:
                self._producer.begin_transaction()
                self._open = True
            if offsets:
                self._producer.send_offsets_to_transaction(offsets, self._consumer, self._op_timeout_s)
            self._producer.commit_transaction(self._op_timeout_s)
        except TransportError as exc:
            raise TransactionFailed(f"transaction commit failed: {exc}") from exc
        self._open = False
        if self._observe_commit is not None:
            self._observe_commit(time.perf_counter() - started)

    def commit_when_delivered(self, offsets: dict[TP, int], then: Callable[[], object] | None = None) -> None:
        """Start committing the open transaction with ``offsets`` on a helper thread and return at once; ``then`` is
        called on the polling thread once that commit succeeded (by the next send, commit or loop turn).

        A commit still running is waited for first (raising :class:`TransactionFailed` when it failed)."""
        self._finish_commit()
        if not offsets and not self._open:
            if then is not None:
                then()  # everything sent so far is committed already
            return
        producer, timeout_s = self._producer, self._op_timeout_s
        try:
            if not self._open:
                producer.begin_transaction()
            group = cast(EventConsumer, _GroupMetadata(self._consumer.group_metadata()))
        except TransportError as exc:
            raise TransactionFailed(f"transaction commit failed: {exc}") from exc
        self._open = False  # the next send opens the next transaction, once this one is committed
        failed: list[BaseException] = []
        observe = self._observe_commit

        def run() -> None:
            try:
                started = time.perf_counter()
                if offsets:
                    producer.send_offsets_to_transaction(offsets, group, timeout_s)
                producer.commit_transaction(timeout_s)
                if observe is not None:
                    observe(time.perf_counter() - started)
            except BaseException as exc:  # handed to the polling thread by _finish_commit
                failed.append(exc)

        thread = threading.Thread(target=run, name="kafka-transaction-commit", daemon=True)
        thread.start()
        self._committing = (thread, failed, then)

    def release(self) -> None:
        """Take the outcome of a commit running on the helper thread if it has ended (never waits)."""
        if self._committing is not None and not self._committing[0].is_alive():
            self._finish_commit()

    def _finish_commit(self) -> None:
        """Wait for the commit running on the helper thread (its producer calls are bounded by their own timeouts);
        raise :class:`TransactionFailed` when it failed, else send the outputs kept meanwhile."""
        if self._committing is None:
            return
        thread, failed, then = self._committing
        thread.join()
        self._committing = None
        if failed:
            self._drop_deferred()
            error = failed[0]
            if isinstance(error, TransportError):
                raise TransactionFailed(f"transaction commit failed: {error}") from error
            raise error
        deferred = self._deferred
        self._drop_deferred()  # taken out first: whatever ``then`` raises, none stays behind a later send
        if then is not None:
            then()
        for output in deferred:
            self._send_now(*output)

    def _drop_deferred(self) -> None:
        self._deferred, self._deferred_bytes = [], 0

    def _abandon_commit(self) -> None:
        """Wait for a commit still running, whatever its outcome (the producer is about to be dropped)."""
        if self._committing is not None:
            self._committing[0].join()
            self._committing = None
        self._drop_deferred()

    async def commit_in_listener(self, offsets: dict[TP, int]) -> None:
        """Only the producer commits the transaction (offsets included), so the blocking call is allowed."""
        self.commit(offsets)

    def reset(self, stopping: Callable[[], bool]) -> None:
        """Drop the producer and its open transaction; build a new one (retrying until Kafka answers).

        ``init_transactions`` of the new producer fences the old one: the broker aborts its open transaction, or
        completes one whose commit had already been written, before the new producer may go on.
        """
        self._abandon_commit()
        old, self._open = self._producer, False
        _force_close(old, _CLOSE_TIMEOUT_S)
        self._producer = self._new_producer(stopping)

    def close(self) -> None:
        """Close the producer; an open transaction (nothing committed since) is left to be aborted."""
        self._abandon_commit()
        _force_close(self._producer, _CLOSE_TIMEOUT_S * 5)

    def _new_producer(self, stopping: Callable[[], bool]) -> EventProducer:
        attempt = 0
        producer: EventProducer | None = None
        while True:
            attempt += 1
            try:
                if producer is None:
                    producer = self._factory()
                producer.init_transactions(self._op_timeout_s)
                if attempt > 1:
                    log.info("transactional producer ready after %d attempts", attempt)
                return producer
            except TransportError as exc:
                if producer is not None and not exc.retriable:
                    _force_close(producer, 0.0)
                    producer = None
                if stopping() or attempt >= 1_000:
                    if producer is not None:
                        _force_close(producer, 0.0)
                    raise
                log.warning("transactional producer not ready (%s); retrying in %.0f s", exc, self._retry_s)
                time.sleep(self._retry_s)


def _force_close(producer: EventProducer, timeout_s: float) -> None:
    """Close ``producer``; records it could not deliver within ``timeout_s`` are dropped (never committed)."""
    try:
        producer.close(timeout_s)
    except Exception as exc:  # closing is best effort: the records are uncommitted either way
        log.warning("producer did not close cleanly (%r); dropping what it still holds", exc)
