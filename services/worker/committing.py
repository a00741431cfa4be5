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
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, TopicPartition

log = logging.getLogger("streamlearn.commit")

TP = tuple[str, int]

#: seconds the old producer gets to close after a failed transaction (its buffered records are dropped)
_CLOSE_TIMEOUT_S = 2.0


class TransactionFailed(Exception):
    """A transaction could not be committed, or its outcome is unknown; the worker must rewind."""


def kafka_offsets(offsets: dict[TP, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    """``{(topic, partition): next offset}`` as kafka-python wants it for a commit."""
    return {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}


class Committer:
    """At-least-once: flush the producer, then commit the offsets."""

    def __init__(self, consumer: KafkaConsumer, producer: KafkaProducer) -> None:
        self._consumer = consumer
        self._producer = producer

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        """Hand one output record to the producer."""
        self._producer.send(topic, value=value, key=key, headers=headers)

    def commit(self, offsets: dict[TP, int]) -> None:
        """Deliver everything sent so far, then commit ``offsets`` (next offsets to read)."""
        self._producer.flush()
        if offsets:
            self._consumer.commit(kafka_offsets(offsets))

    async def commit_in_listener(self, offsets: dict[TP, int]) -> None:
        """The same commit from inside a rebalance listener, which runs on the consumer's IO thread.

        kafka-python 3 forbids blocking consumer calls there, so the offset commit is awaited instead.
        """
        self._producer.flush()
        if offsets:
            await self._consumer.commit_async(kafka_offsets(offsets))

    def reset(self, stopping: Callable[[], bool]) -> None:
        """Only the transactional committer can be reset."""
        raise NotImplementedError("at-least-once commits are not rewound")

    def close(self) -> None:
        """Close the producer (delivering what it holds)."""
        self._producer.close()


class TransactionalCommitter(Committer):
    """Exactly-once: outputs and consumer offsets go out in one Kafka transaction per commit.

    ``producer_factory`` builds a transactional producer (always the same transactional id); it is called again by
    :meth:`reset`.
    """

    def __init__(
        self, consumer: KafkaConsumer, producer_factory: Callable[[], KafkaProducer], *, op_timeout_ms: int,
        retry_s: float = 1.0,
    ) -> None:
        self._factory = producer_factory
        self._op_timeout_ms = op_timeout_ms
        self._retry_s = retry_s
        self._open = False
        super().__init__(consumer, self._new_producer(lambda: False))

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        """Send inside the open transaction (opened on the first record after a commit)."""
        try:
            if not self._open:
                self._producer.begin_transaction()
                self._open = True
            self._producer.send(topic, value=value, key=key, headers=headers)
        except KafkaError as exc:  # the producer is in an error state: the transaction cannot complete
            raise TransactionFailed(f"send failed: {exc!r}") from exc

    def commit(self, offsets: dict[TP, int]) -> None:
        """Commit the open transaction with ``offsets``; raise :class:`TransactionFailed` when that fails."""
        if not offsets and not self._open:
            return
        try:
            if not self._open:
                self._producer.begin_transaction()
                self._open = True
            if offsets:
                manager = self._manager()
                if manager is None:
                    self._producer.send_offsets_to_transaction(kafka_offsets(offsets),
                                                               self._consumer.group_metadata())
                else:
                    self._await(manager.send_offsets_to_transaction(
                        kafka_offsets(offsets), self._consumer.group_metadata()), "sending the offsets")
            manager = self._manager()
            if manager is None:
                self._producer.commit_transaction()
            else:
                self._await(manager.begin_commit(), "committing the transaction")
        except KafkaError as exc:
            raise TransactionFailed(f"transaction commit failed: {exc!r}") from exc
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

    def _new_producer(self, stopping: Callable[[], bool]) -> KafkaProducer:
        attempt = 0
        while True:
            attempt += 1
            producer: KafkaProducer | None = None
            try:
                producer = self._factory()
                producer.init_transactions()
                if attempt > 1:
                    log.info("transactional producer ready after %d attempts", attempt)
                return producer
            except KafkaError as exc:
                if producer is not None:
                    _force_close(producer, 0.0)
                if stopping() or attempt >= 1_000:
                    raise
                log.warning("transactional producer not ready (%r); retrying in %.0f s", exc, self._retry_s)
                time.sleep(self._retry_s)

    def _manager(self) -> Any:
        """kafka-python's transaction manager, to wait on its results with a timeout (the public calls have none)."""
        if hasattr(self._producer, "_transaction_manager") and hasattr(self._producer, "_sender"):
            return self._producer._transaction_manager
        return None

    def _await(self, result: Any, what: str) -> None:
        self._producer._sender.wakeup()
        if not result.wait(timeout_ms=self._op_timeout_ms):
            raise KafkaTimeoutError(f"{what} did not complete within {self._op_timeout_ms} ms")


def _force_close(producer: KafkaProducer, timeout_s: float) -> None:
    """Close ``producer``; records it could not deliver within ``timeout_s`` are dropped (never committed)."""
    try:
        producer.close(timeout=timeout_s)
        return
    except Exception as exc:  # kafka-python's close raises when its flush times out, leaving the sender running
        log.warning("producer did not close cleanly (%r); dropping what it still holds", exc)
    sender = getattr(producer, "_sender", None)
    if sender is not None and sender.is_alive():
        sender.force_close()
