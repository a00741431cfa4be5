"""The worker's view of Kafka: one consumer and one producer interface, two client libraries behind them.

``kafka.client: auto`` (the default) or ``confluent``: librdkafka through confluent-kafka; ``kafka-python``: pure
Python. The worker speaks only these interfaces, in ``(topic, partition)`` tuples and plain offsets; each library's
quirks stay in its adapter (docs/architecture.md, "Kafka transports", also says what each client costs).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, TopicPartition

from shared.kafka.clients import build_consumer, build_producer
from shared.settings import KafkaSettings
from shared.steps.batch import Record

log = logging.getLogger("streamlearn.kafka")

TP = tuple[str, int]

#: the longest a nudge (:meth:`EventProducer.nudge`) blocks the loop: about one acknowledgement from a nearby broker
NUDGE_WAIT_S = 0.001


class TransportError(Exception):
    """A Kafka operation failed or timed out (the broker is unreachable, a transaction was fenced, ...).

    ``retriable``: the same call on the same client may be repeated (librdkafka's timed-out ``init_transactions``
    goes on in the background and must be resumed, not replaced by a second producer).
    """

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class DeliveryFailures:
    """The records a producer failed to deliver since the last :meth:`raise_any`: a count and the first reasons.

    Filled by delivery callbacks (kafka-python's sender thread, or librdkafka's reports served on the caller's
    thread); read after a flush, when nothing it counts is in flight any more.
    """

    REASONS_KEPT = 3

    def __init__(self) -> None:
        self.count = 0
        self.reasons: list[str] = []

    def add(self, topic: str, error: object) -> None:
        """Count one failed record."""
        self.count += 1
        if len(self.reasons) < self.REASONS_KEPT:
            self.reasons.append(f"{topic}: {error!r}")

    def clear(self) -> None:
        """Forget the failures counted so far (a transaction's commit reports them itself)."""
        self.count, self.reasons = 0, []

    def raise_any(self) -> None:
        """Raise :class:`TransportError` naming the failures counted so far (and start counting afresh)."""
        if self.count:
            count, reasons = self.count, self.reasons
            self.count, self.reasons = 0, []
            raise TransportError(f"{count} records failed: " + "; ".join(reasons))


class DeliveryMark:
    """The records a producer was handed between two marks; :attr:`done` once each was delivered or failed.

    The at-least-once committer queues each commit's offsets behind the mark taken when it was due and commits
    them once the mark is done (docs/architecture.md, "Commit semantics"), instead of flushing the producer in the
    poll loop. Records settle out of order (several output partitions), so a mark counts them rather than
    watching offsets. Settled from kafka-python's sender thread or librdkafka's reports on the polling thread.
    """

    __slots__ = ("_lock", "failed", "failures", "sent", "settled")

    def __init__(self, failures: DeliveryFailures) -> None:
        self.failures = failures
        self.sent = 0
        self.settled = 0
        self.failed = 0
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        """Every record counted by this mark was delivered or failed (meaningful once the mark is closed)."""
        return self.settled >= self.sent

    def delivered(self, _metadata: object = None) -> None:
        """One record was delivered."""
        with self._lock:
            self.settled += 1

    def failed_with(self, topic: str, error: object) -> None:
        """One record failed for good (the producer's retries are spent or the broker refused it)."""
        self.failures.add(topic, error)
        with self._lock:
            self.failed += 1
            self.settled += 1

    def report(self, error: object | None, message: Any) -> None:
        """librdkafka's delivery report of one record."""
        if error is None:
            self.delivered()
        else:
            self.failed_with(message.topic(), error)

    def raise_failed(self) -> None:
        """Raise :class:`TransportError` for the failed records (with the first reasons the producer counted)."""
        self.failures.raise_any()
        raise TransportError(f"{self.failed} records failed")


class RebalanceHandler(Protocol):
    """What the consumer calls on a group rebalance (from inside :meth:`EventConsumer.poll`)."""

    def on_assigned(self, tps: Sequence[TP]) -> None:
        """Partitions newly assigned: must not block (kafka-python calls it on its IO thread)."""

    async def on_revoked(self, tps: Sequence[TP]) -> None:
        """Partitions about to be given away: commit what was processed (awaiting, not blocking, the commit)."""

    def on_lost(self, tps: Sequence[TP]) -> None:
        """Partitions already given away (session lost): nothing may be committed for them."""


class EventConsumer(Protocol):
    """A group consumer that never auto-commits and reads only committed transactional data."""

    def subscribe(self, topics: Sequence[str], handler: RebalanceHandler) -> None:
        """Join the group for ``topics``; ``handler`` hears about every rebalance."""

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        """Up to ``max_records`` records, grouped by partition in offset order; raises :class:`TransportError`."""

    def pause(self, tps: Sequence[TP]) -> None:
        """Deliver no more records of these partitions until resumed (the group membership is kept). A client may
        go on reading them for the resume, within a bound (the confluent adapter: 16 MiB in all)."""

    def resume(self, tps: Sequence[TP]) -> None:
        """Fetch these partitions again, from their current positions."""

    def paused(self) -> set[TP]:
        """The partitions paused now."""

    @property
    def held_back(self) -> int:
        """Records this adapter read for paused partitions and keeps for their resume (bounded)."""

    def seek(self, tp: TP, offset: int) -> None:
        """Read ``tp`` next from ``offset``."""

    def seek_to_beginning(self, tp: TP) -> None:
        """Read ``tp`` next from the earliest retained offset."""

    def committed(self, tp: TP) -> int | None:
        """The group's committed offset of ``tp`` (``None``: never committed)."""

    def position(self, tp: TP, timeout_ms: int = 5000) -> int | None:
        """The offset ``tp`` is read from next (``None`` when it cannot be known within the timeout)."""

    def assignment(self) -> set[TP]:
        """The partitions assigned to this member."""

    def partition_count(self, topic: str) -> int | None:
        """How many partitions ``topic`` has, from the client's metadata (``None`` when unknown)."""

    def highwater(self, tp: TP) -> int | None:
        """The last known end offset of ``tp`` (from fetch responses; ``None`` when unknown)."""

    def lag(self, tp: TP) -> int | None:
        """Records of ``tp`` on the broker beyond those delivered by :meth:`poll`, by the last fetch response (no
        request is made; ``None`` when unknown)."""

    def commit(self, offsets: dict[TP, int], *, wait: bool = True) -> None:
        """Commit the next offsets to read; raises :class:`TransportError`.

        ``wait=False`` sends the commit without waiting for the answer (a failure is logged; the next commit
        carries later offsets anyway).
        """

    async def commit_in_listener(self, offsets: dict[TP, int]) -> None:
        """The same commit from inside :meth:`RebalanceHandler.on_revoked`."""

    def connected(self) -> bool:
        """Whether the group coordinator is reachable now (best effort, for the ``kafka_up`` gauge)."""

    def group_metadata(self) -> Any:
        """The library's group metadata object, for :meth:`EventProducer.send_offsets_to_transaction`."""

    def close(self) -> None:
        """Leave the group without committing."""


class EventProducer(Protocol):
    """An idempotent producer, transactional when built for exactly-once."""

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        """Queue one record; raises :class:`TransportError` when the producer cannot take it."""

    def flush(self, timeout_s: float | None) -> None:
        """Deliver every queued record (``None``: however long it takes, as the producer retries); raises
        :class:`TransportError` when one failed or the time ran out."""

    def nudge(self) -> None:
        """Send the queued records now rather than after ``linger_ms``, waiting at most :data:`NUDGE_WAIT_S` for
        their acknowledgement. Running out of that time is the usual outcome and is not an error; a failed record
        is reported by its delivery mark, so a nudge raises only for a fault of the client itself."""

    def mark(self) -> DeliveryMark:
        """Close the open mark (the records sent since the previous one) and open the next; only on a producer
        built with ``track_deliveries``."""

    def serve_deliveries(self) -> None:
        """Take in the delivery reports that are waiting, without blocking (librdkafka serves them on the
        calling thread; kafka-python's sender thread needs nothing)."""

    def init_transactions(self, timeout_s: float) -> None:
        """Register the transactional id (fencing any older producer with the same id)."""

    def begin_transaction(self) -> None:
        """Open a transaction."""

    def send_offsets_to_transaction(self, offsets: dict[TP, int], consumer: EventConsumer, timeout_s: float) -> None:
        """Add the consumer group's offsets to the open transaction."""

    def commit_transaction(self, timeout_s: float) -> None:
        """Deliver the open transaction's records and commit it."""

    def close(self, timeout_s: float) -> None:
        """Close; what cannot be delivered within ``timeout_s`` is dropped (an open transaction is aborted)."""


_warned_fallback = False


def resolved_client(settings: KafkaSettings) -> str:
    """``confluent`` or ``kafka-python``: ``auto`` is librdkafka when confluent-kafka imports (it is a regular
    dependency; a platform without its wheels falls back to kafka-python, with a warning)."""
    global _warned_fallback
    if settings.client != "auto":
        return settings.client
    try:
        import confluent_kafka  # noqa: F401
    except ImportError as exc:
        if not _warned_fallback:
            log.warning("kafka.client auto: confluent-kafka does not import (%s); using kafka-python", exc)
            _warned_fallback = True
        return "kafka-python"
    return "confluent"


def open_consumer(settings: KafkaSettings) -> EventConsumer:
    """The consumer of the configured ``kafka.client``."""
    if resolved_client(settings) == "confluent":
        from shared.kafka.confluent import ConfluentConsumer

        return ConfluentConsumer(settings)
    return KafkaPythonConsumer(build_consumer(settings))


def open_producer(settings: KafkaSettings, *, transactional: bool = False) -> EventProducer:
    """The producer of the configured ``kafka.client``; a non-transactional one tracks deliveries
    (:meth:`EventProducer.mark`) for the at-least-once committer."""
    if resolved_client(settings) == "confluent":
        from shared.kafka.confluent import ConfluentProducer

        return ConfluentProducer(settings, transactional=transactional, track_deliveries=not transactional)
    return KafkaPythonProducer(build_producer(settings, transactional=transactional),
                               track_deliveries=not transactional)


def untracked_mark() -> DeliveryMark:
    """Raised for by :meth:`EventProducer.mark` on a producer that does not track deliveries."""
    raise RuntimeError("this producer does not track deliveries (built with track_deliveries=False)")


def run_listener_coroutine(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a rebalance coroutine to its end on this thread; it must not wait on anything (no event loop here)."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("a rebalance handler awaited something that needs an event loop")


# --- kafka-python ------------------------------------------------------------------------------------------------
def _kafka_offsets(offsets: dict[TP, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}


class KafkaPythonConsumer:
    """:class:`EventConsumer` over kafka-python's ``KafkaConsumer``."""

    #: seconds between metadata requests while a subscribed topic has no partitions in the client's metadata
    METADATA_RETRY_S = 1.0
    #: how long :meth:`subscribe` waits for the subscribed topics' metadata before the first join
    METADATA_WAIT_MS = 10_000

    def __init__(self, consumer: KafkaConsumer) -> None:
        #: the library's consumer, for code that needs more than the interface (the benchmark)
        self.raw = consumer
        self._metadata_requested_at = 0.0

    def subscribe(self, topics: Sequence[str], handler: RebalanceHandler) -> None:
        self.raw.subscribe(list(topics), listener=_KafkaPythonListener(handler))
        self._metadata_before_join(topics)

    def _metadata_before_join(self, topics: Sequence[str]) -> None:
        """Fetch the subscribed topics' metadata before the first poll joins the group (bounded wait).

        A member that computes the assignment without it assigns nothing of those topics ("No partition metadata"),
        and the rejoin that :meth:`_refresh_missing_metadata` brings about came too late for a restarted worker
        under CPU load (dpkp/kafka-python#2377; the benchmark's workers have fetched it first all along).
        """
        cluster = self.raw._client.cluster  # kafka-python has no public, bounded handle on its metadata
        if all(cluster.partitions_for_topic(topic) for topic in topics):
            return
        try:
            future = cluster.request_update()
            self.raw._net.run(self.raw._manager.wait_for, future, self.METADATA_WAIT_MS)
        except KafkaError as exc:  # the first polls ask again (_refresh_missing_metadata)
            log.warning("metadata of %s not fetched before joining the group (%r)", list(topics), exc)

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        self._unpark_resumed()
        try:
            polled = self.raw.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:  # kafka-python 3 raises here while the broker is unreachable
            raise TransportError(repr(exc)) from exc
        if not polled:
            self._refresh_missing_metadata()
        records: list[Record] = []
        for tp in sorted(polled, key=lambda t: (t.topic, t.partition)):
            for message in polled[tp]:
                records.append(Record(
                    topic=message.topic, partition=message.partition, offset=message.offset,
                    key=message.key, value=message.value, timestamp_ms=message.timestamp or 0,
                ))
        return records

    def _refresh_missing_metadata(self) -> None:
        """Ask for metadata again while a subscribed topic has none (dpkp/kafka-python#2377).

        A member that joins before a new topic's metadata reached it is assigned nothing for that topic, and
        kafka-python would look again only after ``metadata_max_age_ms`` (5 minutes); the update this requests
        changes the coordinator's metadata snapshot, which makes the member rejoin and get its partitions.
        """
        now = time.monotonic()
        if now - self._metadata_requested_at < self.METADATA_RETRY_S:
            return
        cluster = self.raw._client.cluster  # kafka-python has no public handle on its metadata
        if any(not cluster.partitions_for_topic(topic) for topic in self.raw.subscription() or ()):
            self._metadata_requested_at = now
            cluster.request_update()

    def _unpark_resumed(self) -> None:
        # kafka-python 3.0.12 parks the parsed records of a partition paused mid-read and takes one back after its
        # resume only while its in-line slot is ``None``; a drained slot is kept as an empty object, so a second
        # parked partition was never taken back and never fetched again (a stall under per-partition pauses)
        fetcher = getattr(self.raw, "_fetcher", None)
        if fetcher is None or not getattr(fetcher, "_paused_partition_records", None):
            return
        in_line = getattr(fetcher, "_next_partition_records", None)
        if in_line is not None and not in_line:
            fetcher._next_partition_records = None

    def pause(self, tps: Sequence[TP]) -> None:
        if tps:
            self.raw.pause(*[TopicPartition(*tp) for tp in tps])

    def resume(self, tps: Sequence[TP]) -> None:
        if tps:
            self.raw.resume(*[TopicPartition(*tp) for tp in tps])

    def paused(self) -> set[TP]:
        return {(tp.topic, tp.partition) for tp in self.raw.paused()}

    @property
    def held_back(self) -> int:
        return 0  # kafka-python keeps what it fetched for a paused partition itself (one fetch's worth)

    def seek(self, tp: TP, offset: int) -> None:
        self.raw.seek(TopicPartition(*tp), offset)

    def seek_to_beginning(self, tp: TP) -> None:
        self.raw.seek_to_beginning(TopicPartition(*tp))

    def committed(self, tp: TP) -> int | None:
        try:
            offset = self.raw.committed(TopicPartition(*tp))
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc
        return None if offset is None else int(offset)

    def position(self, tp: TP, timeout_ms: int = 5000) -> int | None:
        try:
            offset = self.raw.position(TopicPartition(*tp), timeout_ms=timeout_ms)
        except KafkaError:
            return None
        return None if offset is None else int(offset)

    def assignment(self) -> set[TP]:
        return {(tp.topic, tp.partition) for tp in self.raw.assignment()}

    def partition_count(self, topic: str) -> int | None:
        partitions = self.raw.partitions_for_topic(topic)
        return len(partitions) if partitions else None

    def highwater(self, tp: TP) -> int | None:
        high = self.raw.highwater(TopicPartition(*tp))
        return None if high is None else int(high)

    def lag(self, tp: TP) -> int | None:
        # the subscription state holds both without a request (``position()`` may ask the coordinator)
        state = self.raw._subscription.assignment.get(TopicPartition(*tp))
        if state is None or state.highwater is None or state.position is None:
            return None
        return max(0, int(state.highwater) - int(state.position.offset))

    def commit(self, offsets: dict[TP, int], *, wait: bool = True) -> None:
        if not offsets:
            return
        try:
            if wait:
                self.raw.commit(_kafka_offsets(offsets))
            else:
                self.raw.commit_async(_kafka_offsets(offsets), callback=_log_commit_failure)
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc

    async def commit_in_listener(self, offsets: dict[TP, int]) -> None:
        # kafka-python 3 runs listeners on its IO thread, where blocking consumer calls are refused
        if offsets:
            await self.raw.commit_async(_kafka_offsets(offsets))

    def connected(self) -> bool:
        coordinator = getattr(self.raw, "_coordinator", None)  # kafka-python keeps no public flag
        try:
            return coordinator is None or not coordinator.coordinator_unknown()
        except Exception:  # a probe for a gauge; never let it stop the loop
            return True

    def group_metadata(self) -> Any:
        return self.raw.group_metadata()

    def close(self) -> None:
        self.raw.close(autocommit=False)


def _log_commit_failure(offsets: Any, response: Any) -> None:
    if isinstance(response, Exception):
        log.warning("offset commit not acknowledged (%r); a later commit carries later offsets", response)


class _KafkaPythonListener(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO thread while the poll loop waits in ``poll()``: no blocking consumer calls."""

    def __init__(self, handler: RebalanceHandler) -> None:
        self._handler = handler

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._handler.on_revoked([(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._handler.on_assigned([(tp.topic, tp.partition) for tp in assigned])

    async def on_partitions_lost(self, lost: Sequence[TopicPartition]) -> None:
        self._handler.on_lost([(tp.topic, tp.partition) for tp in lost])


class KafkaPythonProducer:
    """:class:`EventProducer` over kafka-python's ``KafkaProducer``.

    kafka-python's transactional calls take no timeout; this adapter waits on their results with one, through
    the producer's transaction manager (private attributes, checked before use).
    """

    def __init__(self, producer: KafkaProducer, *, track_deliveries: bool = False) -> None:
        self.raw = producer
        self._failures = DeliveryFailures()
        self._tracking = track_deliveries
        self._mark = DeliveryMark(self._failures)

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        try:
            future = self.raw.send(topic, value=value, key=key, headers=headers)
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc
        if self._tracking:
            mark = self._mark
            mark.sent += 1
            future.add_callback(mark.delivered)
            future.add_errback(mark.failed_with, topic)
        else:
            future.add_errback(self._failures.add, topic)

    def mark(self) -> DeliveryMark:
        if not self._tracking:
            return untracked_mark()
        closed, self._mark = self._mark, DeliveryMark(self._failures)
        return closed

    def serve_deliveries(self) -> None:
        return None

    def nudge(self) -> None:
        # the flush makes the queued batches ready at once; what is not acknowledged in time goes on anyway (a
        # failed record is reported by its delivery mark, not by the flush)
        with contextlib.suppress(KafkaTimeoutError):
            self.raw.flush(timeout=NUDGE_WAIT_S)

    def flush(self, timeout_s: float | None) -> None:
        """kafka-python's own flush returns also when records failed; this one raises for them."""
        try:
            self.raw.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc
        self._failures.raise_any()

    def init_transactions(self, timeout_s: float) -> None:
        try:
            self.raw.init_transactions()
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc

    def begin_transaction(self) -> None:
        try:
            self.raw.begin_transaction()
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc

    def send_offsets_to_transaction(self, offsets: dict[TP, int], consumer: EventConsumer, timeout_s: float) -> None:
        try:
            manager = self._manager()
            if manager is None:
                self.raw.send_offsets_to_transaction(_kafka_offsets(offsets), consumer.group_metadata())
            else:
                self._await(manager.send_offsets_to_transaction(_kafka_offsets(offsets), consumer.group_metadata()),
                            timeout_s, "sending the offsets")
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc

    def commit_transaction(self, timeout_s: float) -> None:
        try:
            manager = self._manager()
            if manager is None:
                self.raw.commit_transaction()
            else:
                self._await(manager.begin_commit(), timeout_s, "committing the transaction")
        except KafkaError as exc:
            raise TransportError(repr(exc)) from exc
        finally:
            self._failures.clear()  # a failed delivery fails the commit itself

    def close(self, timeout_s: float) -> None:
        try:
            self.raw.close(timeout=timeout_s)
            return
        except Exception:  # kafka-python's close raises when its flush times out, leaving the sender running
            pass
        sender = getattr(self.raw, "_sender", None)
        if sender is not None and sender.is_alive():
            sender.force_close()

    def _manager(self) -> Any:
        if hasattr(self.raw, "_transaction_manager") and hasattr(self.raw, "_sender"):
            return self.raw._transaction_manager
        return None

    def _await(self, result: Any, timeout_s: float, what: str) -> None:
        self.raw._sender.wakeup()
        deadline = time.monotonic() + timeout_s
        if not result.wait(timeout_ms=max(0, int((deadline - time.monotonic()) * 1000))):
            raise KafkaTimeoutError(f"{what} did not complete within {timeout_s:.1f} s")
