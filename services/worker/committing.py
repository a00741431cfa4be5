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
from collections.abc import Callable

from shared.kafka.transport import EventConsumer, EventProducer, TransportError

log = logging.getLogger("streamlearn.commit")

TP = tuple[str, int]

#: seconds the old producer gets to close after a failed transaction (its buffered records are dropped)
_CLOSE_TIMEOUT_S = 2.0
#: seconds the producer gets to deliver what it holds when the worker stops
_FLUSH_TIMEOUT_S = 120.0


class TransactionFailed(Exception):
    """A transaction could not be committed, or its outcome is unknown; the worker must rewind."""


class Committer:
    """At-least-once: flush the producer, then commit the offsets."""

    def __init__(self, consumer: EventConsumer, producer: EventProducer) -> None:
        self._consumer = consumer
        self._producer = producer

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        """Hand one output record to the producer."""
        self._producer.send(topic, value, key, headers)

    def commit(self, offsets: dict[TP, int], *, wait: bool = True) -> None:
        """Deliver everything sent so far, then commit ``offsets`` (next offsets to read).

        ``wait=False`` does not wait for the broker to acknowledge the offsets (the outputs are delivered
        either way): the loop's periodic commits save a round trip; a lost one only means re-reading.
        """
        self._producer.flush(None)
        self._consumer.commit(offsets, wait=wait)

    async def commit_in_listener(self, offsets: dict[TP, int]) -> None:
        """The same commit from inside a rebalance listener (kafka-python: on its IO thread, awaited)."""
        self._producer.flush(None)
        await self._consumer.commit_in_listener(offsets)

    def reset(self, stopping: Callable[[], bool]) -> None:
        """Only the transactional committer can be reset."""
        raise NotImplementedError("at-least-once commits are not rewound")

    def close(self) -> None:
        """Close the producer (delivering what it holds)."""
        self._producer.close(_FLUSH_TIMEOUT_S)


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
