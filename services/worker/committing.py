"""How the worker makes a batch's outputs durable and commits its offsets: at-least-once or exactly-once.

Exactly-once (docs/architecture.md, "Commit semantics"): predictions, dead letters and the consumer offsets go
out in one Kafka transaction. Every transactional step waits at most ``kafka.transaction_op_timeout_ms``; a step
that fails or times out raises :class:`TransactionFailed`, and the worker then calls :meth:`reset` (a new producer
with the same transactional id fences the old one, so whatever it left open is aborted) and rewinds its
partitions to the committed offsets.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

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


class TransactionFailed(Exception):
    """A transaction could not be committed, or its outcome is unknown; the worker must rewind."""


class Committer:
    """At-least-once: offsets are committed once every output sent before them is delivered.

    The poll loop's periodic commits (:meth:`commit_when_delivered`) queue the offsets behind a
    :class:`~shared.kafka.transport.DeliveryMark` of the producer and go on; :meth:`release`, called on every turn
    of the loop, commits the offsets whose mark is done. No flush stalls the loop. A forced commit (revoke,
    shutdown, or one followed by a checkpoint: :meth:`commit`) still delivers everything first.
    """

    def __init__(self, consumer: EventConsumer, producer: EventProducer) -> None:
        self._consumer = consumer
        self._producer = producer
        #: (mark, offsets) in commit order; bounded by ``MAX_WAITING_COMMITS``
        self._waiting: deque[tuple[DeliveryMark, dict[TP, int]]] = deque()

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        """Hand one output record to the producer."""
        self._producer.send(topic, value, key, headers)

    def commit(self, offsets: dict[TP, int], *, wait: bool = True) -> None:
        """Deliver everything sent so far, then commit ``offsets`` (next offsets to read) with every commit still
        waiting for its outputs.

        ``wait=False`` does not wait for the broker to acknowledge the offsets (the outputs are delivered
        either way); a lost commit only means re-reading.
        """
        self._producer.flush(None)
        self._consumer.commit(self._take_waiting(offsets), wait=wait)

    def commit_when_delivered(self, offsets: dict[TP, int]) -> None:
        """Commit ``offsets`` once every output sent so far is delivered, without waiting for that here.

        Raises :class:`TransportError` when an output of an earlier commit failed (see :meth:`release`).
        """
        if len(self._waiting) >= MAX_WAITING_COMMITS:
            self.commit(offsets, wait=False)
            return
        if offsets:
            self._waiting.append((self._producer.mark(), offsets))
        self.release()

    def release(self) -> None:
        """Commit (without waiting for the answer) the offsets whose outputs are all delivered, oldest first.

        An output that failed raises :class:`TransportError` once everything before it is committed: nothing past
        it is committed, and the worker stops.
        """
        if not self._waiting:
            return
        self._producer.serve_deliveries()
        ready: dict[TP, int] = {}
        failed: DeliveryMark | None = None
        while self._waiting and self._waiting[0][0].done:
            mark, offsets = self._waiting[0]
            if mark.failed:
                failed = mark
                break
            self._waiting.popleft()
            ready.update(offsets)
        if ready:
            self._consumer.commit(ready, wait=False)
        if failed is not None:
            self._waiting.clear()
            failed.raise_failed()

    def forget(self, tps: list[TP]) -> None:
        """Drop the waiting offsets of partitions this worker no longer owns (lost in a rebalance)."""
        for _, offsets in self._waiting:
            for tp in tps:
                offsets.pop(tp, None)

    async def commit_in_listener(self, offsets: dict[TP, int]) -> None:
        """The same commit from inside a rebalance listener (kafka-python: on its IO thread, awaited)."""
        self._producer.flush(None)
        await self._consumer.commit_in_listener(self._take_waiting(offsets))

    def reset(self, stopping: Callable[[], bool]) -> None:
        """Only the transactional committer can be reset."""
        raise NotImplementedError("at-least-once commits are not rewound")

    def close(self) -> None:
        """Close the producer (delivering what it holds)."""
        self._producer.close(_FLUSH_TIMEOUT_S)

    def _take_waiting(self, offsets: dict[TP, int]) -> dict[TP, int]:
        """The waiting commits' offsets merged in order, then ``offsets`` (called once everything is delivered)."""
        merged: dict[TP, int] = {}
        while self._waiting:
            merged.update(self._waiting.popleft()[1])
        merged.update(offsets)
        return merged


class TransactionalCommitter(Committer):
    """Exactly-once: outputs and consumer offsets go out in one Kafka transaction per commit.

    ``producer_factory`` builds a transactional producer (always the same transactional id); it is called again by
    :meth:`reset`.
    """

    def __init__(
        self, consumer: EventConsumer, producer_factory: Callable[[], EventProducer], *, op_timeout_ms: int,
        retry_s: float = 1.0,
    ) -> None:
        self._factory = producer_factory
        self._op_timeout_s = op_timeout_ms / 1000
        self._retry_s = retry_s
        self._open = False
        super().__init__(consumer, self._new_producer(lambda: False))

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        """Send inside the open transaction (opened on the first record after a commit)."""
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
        if not offsets and not self._open:
            return
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

    def commit_when_delivered(self, offsets: dict[TP, int]) -> None:
        """A transaction commits its outputs and offsets together: the same as :meth:`commit`."""
        self.commit(offsets)

    async def commit_in_listener(self, offsets: dict[TP, int]) -> None:
        """Only the producer commits the transaction (offsets included), so the blocking call is allowed."""
        self.commit(offsets)

    def reset(self, stopping: Callable[[], bool]) -> None:
        """Drop the producer and its open transaction; build a new one (retrying until Kafka answers).

        ``init_transactions`` of the new producer fences the old one: the broker aborts its open transaction, or
        completes one whose commit had already been written, before the new producer may go on.
        """
        old, self._open = self._producer, False
        _force_close(old, _CLOSE_TIMEOUT_S)
        self._producer = self._new_producer(stopping)

    def close(self) -> None:
        """Close the producer; an open transaction (nothing committed since) is left to be aborted."""
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
