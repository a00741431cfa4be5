"""The ``kafka.client: confluent`` transport (and ``auto``'s): :class:`EventConsumer` and :class:`EventProducer`
over librdkafka.

librdkafka does the fetching, parsing,
batching and compression in C threads, so a record costs the Python loop a few microseconds instead of the
tens that kafka-python spends (docs/benchmarks.md).

librdkafka differs from kafka-python where the worker cares, and this module hides it:

- rebalance callbacks run inside ``consume()`` on the polling thread (blocking calls are allowed there);
- ``seek()`` is refused (``_STATE``) for a partition still looking up its start offset, and a ``pause()`` just
  after ``assign()`` may lose the assigned offset (librdkafka#2190). So partitions are assigned with explicit
  start offsets (the committed offset, or the watermark ``auto_offset_reset`` names), this adapter tracks each
  partition's next offset itself, and seeks to it again when a partition sought while paused is resumed;
- a rebalance runs inside the ``consume()`` that follows the ``poll()`` of a batch's first record, so a batch can
  hold records read under the assignment before it: of a partition revoked, or of one assigned again and about to
  be restored from its checkpoint (a record processed then moves the position past what its models learned). A
  poll during which the assignment changed returns nothing; the records are read again from where each partition
  resumes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from shared.kafka.clients import (
    TRANSACTIONAL_RETRY_BACKOFF_MAX_MS,
    TRANSACTIONAL_RETRY_BACKOFF_MS,
    default_transactional_id,
)
from shared.kafka.transport import (
    NUDGE_WAIT_S,
    DeliveryFailures,
    DeliveryMark,
    EventConsumer,
    RebalanceHandler,
    TransportError,
    run_listener_coroutine,
    untracked_mark,
)
from shared.settings import KafkaSettings
from shared.steps.batch import Record

log = logging.getLogger("streamlearn.kafka")

TP = tuple[str, int]

#: seconds a metadata or offset request may take (committed offsets, watermarks)
REQUEST_TIMEOUT_S = 10.0
#: how often ``connected()`` may ask the broker while it believes the cluster is down
PROBE_INTERVAL_S = 2.0
#: how much longer than its own timeout a transactional call may take before the producer is abandoned
TRANSACTION_GRACE_S = 5.0
#: the consumer fetches ahead at most this many polls' worth of records, and at most this many KiB per partition
PREFETCH_POLLS = 10
PREFETCH_MAX_KBYTES = 16 * 1024
PREFETCH_BACKOFF_MS = 10
#: the producer's queue of records not yet delivered (librdkafka's default is 1 GiB)
PRODUCER_QUEUE_KBYTES = 64 * 1024
#: the records held back for paused partitions take at most this many bytes in all (keys and values, and this much
#: more per record for its Python objects): what librdkafka itself may prefetch (``queued.max.messages.kbytes``)
HELD_BACK_MAX_BYTES = PREFETCH_MAX_KBYTES * 1024
HELD_BACK_RECORD_OVERHEAD = 200
#: a poll that found fewer records than this waits up to ``kafka.batch_wait_ms`` for more
SMALL_BATCH = 64
#: the longest the request that wakes the fetchers after a resume may take (past it the fetch starts on its own,
#: within a second)
WAKE_TIMEOUT_S = 1.0
#: ``ListOffsets`` for the latest offset (the timestamp ``-1``)
LATEST_TIMESTAMP = -1


def common_config(settings: KafkaSettings) -> dict[str, Any]:
    """librdkafka properties shared by consumers and producers: servers, identity, security, reconnection."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "security.protocol": settings.security_protocol,
        "reconnect.backoff.max.ms": settings.reconnect_backoff_max_ms,
        # a request is sent when it is ready, not held back by Nagle's algorithm
        "socket.nagle.disable": True,
        # librdkafka's own log lines go through Python logging (not straight to stderr)
        "logger": logging.getLogger("streamlearn.librdkafka"),
    }
    if settings.sasl_mechanism:
        config["sasl.mechanism"] = settings.sasl_mechanism
        config["sasl.username"] = settings.sasl_username
        if settings.sasl_password is not None:
            config["sasl.password"] = settings.sasl_password.get_secret_value()
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        config["ssl.endpoint.identification.algorithm"] = "https" if settings.ssl_check_hostname else "none"
        for option, path in (("ssl.ca.location", settings.ssl_cafile),
                             ("ssl.certificate.location", settings.ssl_certfile),
                             ("ssl.key.location", settings.ssl_keyfile)):
            if path is not None:
                config[option] = str(path)
        if settings.ssl_key_password is not None:
            config["ssl.key.password"] = settings.ssl_key_password.get_secret_value()
    return config


def _held_size(record: Record) -> int:
    """What a held-back record counts against ``HELD_BACK_MAX_BYTES``."""
    return len(record.value or b"") + len(record.key or b"") + HELD_BACK_RECORD_OVERHEAD


def _tps(partitions: Sequence[TopicPartition]) -> list[TP]:
    return [(p.topic, p.partition) for p in partitions]


def _raise(exc: Exception, what: str) -> TransportError:
    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    return TransportError(f"{what}: {exc}", retriable=bool(error is not None and error.retriable()))


def _log_commit_failure(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
    if error is not None:
        log.warning("offset commit not acknowledged (%s); a later commit carries later offsets", error)


class ConfluentConsumer:
    """:class:`~shared.kafka.transport.EventConsumer` over confluent-kafka's ``Consumer``."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._batch_wait_s = settings.batch_wait_ms / 1000
        self._handler: RebalanceHandler | None = None
        self._up = True
        self._last_probe = 0.0
        self._topics: list[str] = []
        #: per assigned partition, the next offset to deliver (start offset, last delivered + 1, or a seek)
        self._next: dict[TP, int] = {}
        #: partitions the caller paused; only those in ``_stopped`` are paused in librdkafka too
        self._paused: set[TP] = set()
        #: paused partitions paused in librdkafka as well (which drops what it fetched for them)
        self._stopped: set[TP] = set()
        #: per paused partition, the records read for it since the pause, delivered after the resume; their size in
        #: all (``_held_back_bytes``) is bounded by ``_held_back_limit``
        self._held_back: dict[TP, list[Record]] = {}
        self._held_back_bytes = 0
        self._held_back_limit = HELD_BACK_MAX_BYTES
        #: the current assignment, kept from the rebalance callbacks (asking librdkafka costs a call per loop)
        self._assigned: set[TP] = set()
        #: paused partitions whose next offset must be sought again when they are resumed
        self._seek_on_resume: set[TP] = set()
        #: assignment changes so far (assigned, revoked, lost): a poll that saw one returns nothing
        self.rebalances = 0
        #: ``close()`` has begun: a rebalance served meanwhile assigns nothing to the handler
        self._closing = False
        self.raw = Consumer({
            **common_config(settings),
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": settings.auto_offset_reset,
            "isolation.level": "read_committed",
            "max.poll.interval.ms": settings.max_poll_interval_ms,
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": max(1000, settings.session_timeout_ms // 3),
            "fetch.wait.max.ms": settings.fetch_max_wait_ms,
            **({"group.instance.id": settings.group_instance_id} if settings.group_instance_id else {}),
            # librdkafka prefetches until 100,000 records or 64 MiB per partition are queued; a few polls ahead
            # are enough, and a lagging worker's memory then stays flat
            "queued.min.messages": max(1_000, PREFETCH_POLLS * settings.max_poll_records),
            "queued.max.messages.kbytes": PREFETCH_MAX_KBYTES,
            # with those bounds reached librdkafka waits this long before fetching again (its default, 1 s, halved
            # the throughput of a worker that drains 5,000 records in a third of that)
            "fetch.queue.backoff.ms": PREFETCH_BACKOFF_MS,
            "error_cb": self._on_error,
            "on_commit": _log_commit_failure,
        })

    # --- group membership ----------------------------------------------------------------------------------
    def subscribe(self, topics: Sequence[str], handler: RebalanceHandler) -> None:
        self._handler, self._topics = handler, list(topics)
        self.raw.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        if self._closing:
            # an assignment librdkafka serves while ``close()`` leaves the group: nothing will read it, and the
            # committed offsets can no longer be asked for (the handle is being destroyed); confluent-kafka's
            # rebalance callback assigns the partitions itself when ``on_assign`` did not (Consumer.c), and
            # librdkafka revokes them as the consumer leaves
            return
        starts = self._start_offsets(partitions)
        consumer.assign(starts)
        consumer.pause(starts)
        for p in starts:
            tp = (p.topic, p.partition)
            self._assigned.add(tp)
            self._next[tp] = p.offset
            self._paused.add(tp)
            self._stopped.add(tp)
            self._forget_held_back(tp)
            self._seek_on_resume.add(tp)
        self._up = True
        if self._handler is not None:
            self._handler.on_assigned(_tps(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        tps = _tps(partitions)
        try:
            if self._handler is not None:
                run_listener_coroutine(self._handler.on_revoked(tps))
        finally:
            self._drop(tps)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        tps = _tps(partitions)
        try:
            if self._handler is not None:
                self._handler.on_lost(tps)
        finally:
            self._drop(tps)

    def _drop(self, tps: Sequence[TP]) -> None:
        for tp in tps:
            self._assigned.discard(tp)
            self._next.pop(tp, None)
            self._paused.discard(tp)
            self._stopped.discard(tp)
            self._forget_held_back(tp)
            self._seek_on_resume.discard(tp)

    def _start_offsets(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Each partition with an explicit start: its committed offset, else the ``auto_offset_reset`` watermark."""
        try:
            committed = self.raw.committed(partitions, timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise _raise(exc, "reading the committed offsets") from exc
        starts: list[TopicPartition] = []
        for p in committed:
            offset = p.offset
            if offset < 0:
                low, high = self._watermarks((p.topic, p.partition))
                offset = low if self._settings.auto_offset_reset == "earliest" else high
            starts.append(TopicPartition(p.topic, p.partition, offset))
        return starts

    def _watermarks(self, tp: TP) -> tuple[int, int]:
        try:
            low, high = self.raw.get_watermark_offsets(TopicPartition(*tp), timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise _raise(exc, f"reading the watermarks of {tp}") from exc
        return int(low), int(high)

    # --- reading ---------------------------------------------------------------------------------------------
    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        if self._held_back:
            released = self._release_held_back(max_records)
            if released:
                return released
        rebalances = self.rebalances
        room = self._held_back_limit - self._held_back_bytes
        try:
            # consume() waits until it has max_records or the timeout passed; poll() returns with the first
            # record, and what has been fetched with it is then taken without waiting
            first = self.raw.poll(timeout_ms / 1000)
            if first is None:
                return []
            messages = [first]
            if max_records > 1:
                messages += self.raw.consume(num_messages=max_records - 1, timeout=0)
            if self._batch_wait_s and len(messages) < SMALL_BATCH < max_records:
                # records are trickling in (a fetch response each): give the next ones a moment, so that the
                # steps' per-batch costs (a Redis round trip, the metric exports) are shared by more records
                messages += self.raw.consume(num_messages=max_records - len(messages), timeout=self._batch_wait_s)
        except KafkaException as exc:
            raise _raise(exc, "consume") from exc
        if self.rebalances != rebalances:
            # read (at least partly) under the assignment before: each partition is read again from where it
            # resumes (its restored checkpoint, or its committed offset for the new owner)
            if messages:
                log.debug("%d records polled across a rebalance dropped", len(messages))
                self._read_again({(m.topic(), m.partition()) for m in messages if m.error() is None})
            return []
        records: list[Record] = []
        last: dict[TP, int] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.fatal():
                    raise TransportError(f"consume: {error}")
                log.warning("consumer error: %s", error)
                continue
            # a message without an error always has its topic, partition and offset
            topic, partition, offset = cast(str, message.topic()), cast(int, message.partition()), \
                cast(int, message.offset())
            kind, timestamp = message.timestamp()
            record = Record(topic=topic, partition=partition, offset=offset, key=message.key(),
                            value=message.value(), timestamp_ms=timestamp if kind else 0)
            if (topic, partition) in self._paused:
                if (topic, partition) not in self._stopped:  # a stopped one is read again from where it resumes
                    room = self._hold_back(record, room)
                continue
            records.append(record)
            last[(topic, partition)] = offset
        if last:
            self._up = True
            for tp, offset in last.items():
                self._next[tp] = offset + 1
            if len(last) > 1:
                records.sort(key=lambda r: (r.topic, r.partition))  # stable: offsets stay ascending
        return records

    def _hold_back(self, record: Record, room: int) -> int:
        """Keep a record of a paused partition for its resume; once the records held back (all partitions) reach
        the limit, pause the partition in librdkafka. Returns the bytes left under the limit."""
        tp = (record.topic, record.partition)
        self._held_back.setdefault(tp, []).append(record)
        size = _held_size(record)
        self._held_back_bytes += size
        room -= size
        if room <= 0:
            # librdkafka drops what it fetched for the partition and, on resume, fetches from after the last
            # record read (the last one held back)
            self.raw.pause([TopicPartition(*tp)])
            self._stopped.add(tp)
            self._seek_on_resume.add(tp)
        return room

    def _release_held_back(self, max_records: int) -> list[Record]:
        """Records held back for partitions resumed since, oldest first, at most ``max_records``."""
        records: list[Record] = []
        for tp in [tp for tp in self._held_back if tp not in self._paused]:
            held = self._held_back[tp]
            taken, rest = held[:max_records - len(records)], held[max_records - len(records):]
            if rest:
                self._held_back[tp] = rest
            else:
                del self._held_back[tp]
            self._held_back_bytes -= sum(_held_size(record) for record in taken)
            if taken:
                records += taken
                self._next[tp] = taken[-1].offset + 1
            if len(records) >= max_records:
                break
        return records

    def _fetch_next(self, tp: TP) -> int:
        """Where librdkafka must read ``tp`` from: after the records held back for it, else its next offset."""
        held = self._held_back.get(tp)
        return held[-1].offset + 1 if held else self._next[tp]

    @property
    def held_back(self) -> int:
        """Records read for paused partitions and kept for their resume."""
        return sum(len(held) for held in self._held_back.values())

    def _forget_held_back(self, tp: TP) -> None:
        for record in self._held_back.pop(tp, ()):
            self._held_back_bytes -= _held_size(record)

    def _read_again(self, tps: set[tuple[Any, Any]]) -> None:
        """Partitions still assigned whose dropped records must be delivered again: sought back to their next
        offset (at once, or on resume when paused). With the eager protocol every one was revoked and assigned
        again, and its restore seeks it anyway; with an incremental one a partition kept would otherwise skip them."""
        for tp in tps:
            if tp not in self._assigned or tp not in self._next:
                continue
            if tp in self._stopped:
                self._seek_on_resume.add(tp)
            else:
                self._seek(tp, self._fetch_next(tp))

    def pause(self, tps: Sequence[TP]) -> None:
        # librdkafka would drop what it has fetched for the partitions and fetch it again on resume (a pause is
        # often short: the time order holds a partition back for a chunk or two); the records read for them are
        # held back here instead, up to a limit, and only then are they paused in librdkafka as well
        self._paused.update(tps)

    def resume(self, tps: Sequence[TP]) -> None:
        stopped = [tp for tp in tps if tp in self._stopped]
        if stopped:
            self.raw.resume([TopicPartition(*tp) for tp in stopped])
        for tp in tps:
            self._paused.discard(tp)
            self._stopped.discard(tp)
            if tp in self._seek_on_resume and tp in self._next:
                self._seek_on_resume.discard(tp)
                self._seek(tp, self._fetch_next(tp))
        if stopped:
            self._wake_fetchers(stopped)

    def _wake_fetchers(self, tps: Sequence[TP]) -> None:
        """Make the leaders' fetchers start on partitions just resumed in librdkafka.

        librdkafka does not wake a broker's thread on a resume (or a seek): one whose partitions were all paused
        sleeps up to a second before it fetches again (confluentinc/confluent-kafka-go#630; measured here: the
        first record 0.65 to 0.9 s late, docs/architecture.md). Any request to a broker wakes its thread, so a
        ``ListOffsets`` for the latest offset goes to each partition's leader, one call for all (1.5 to 7 ms on
        loopback). It only wakes: when it fails, the fetch starts on its own within the second.
        """
        try:
            self.raw.offsets_for_times([TopicPartition(*tp, LATEST_TIMESTAMP) for tp in tps],
                                       timeout=WAKE_TIMEOUT_S)
        except KafkaException as exc:
            log.debug("waking the fetchers after a resume failed (%s); they fetch within a second", exc)

    def paused(self) -> set[TP]:
        return set(self._paused)

    def seek(self, tp: TP, offset: int) -> None:
        self._next[tp] = offset
        self._forget_held_back(tp)
        if tp in self._stopped:
            self._seek_on_resume.add(tp)  # applied on resume: librdkafka may ignore a seek of a paused partition
            return
        self._seek(tp, offset)

    def seek_to_beginning(self, tp: TP) -> None:
        self.seek(tp, self._watermarks(tp)[0])

    def _seek(self, tp: TP, offset: int) -> None:
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while True:
            try:
                self.raw.seek(TopicPartition(tp[0], tp[1], offset))
                return
            except KafkaException as exc:
                # _STATE: the partition is still starting up, or no longer ours; anything else is a real failure
                if exc.args[0].code() != KafkaError._STATE:
                    raise _raise(exc, f"seeking {tp} to {offset}") from exc
                if time.monotonic() > deadline:
                    if tp not in {(p.topic, p.partition) for p in self.raw.assignment()}:
                        # revoked meanwhile: the next owner resumes it from the committed offset
                        self._next.pop(tp, None)
                        return
                    raise _raise(exc, f"seeking {tp} to {offset}") from exc
                time.sleep(0.01)

    # --- offsets ---------------------------------------------------------------------------------------------
    def committed(self, tp: TP) -> int | None:
        try:
            (result,) = self.raw.committed([TopicPartition(*tp)], timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise _raise(exc, f"reading the committed offset of {tp}") from exc
        return int(result.offset) if result.offset >= 0 else None

    def position(self, tp: TP, timeout_ms: int = 5000) -> int | None:
        if tp in self._next:
            return self._next[tp]
        try:
            (result,) = self.raw.position([TopicPartition(*tp)])
        except KafkaException:
            return None
        return int(result.offset) if result.offset >= 0 else None

    def assignment(self) -> set[TP]:
        return set(self._assigned)

    def partition_count(self, topic: str) -> int | None:
        try:
            metadata = self.raw.list_topics(topic, timeout=5.0).topics.get(topic)
        except KafkaException:
            return None
        return len(metadata.partitions) if metadata is not None and metadata.error is None and \
            metadata.partitions else None

    def highwater(self, tp: TP) -> int | None:
        try:
            _, high = self.raw.get_watermark_offsets(TopicPartition(*tp), cached=True)
        except KafkaException:
            return None
        return int(high) if high >= 0 else None

    def lag(self, tp: TP) -> int | None:
        delivered = self._next.get(tp)
        high = self.highwater(tp)
        if delivered is None or delivered < 0 or high is None:
            return None
        return max(0, high - delivered)

    def commit(self, offsets: dict[TP, int], *, wait: bool = True) -> None:
        if not offsets:
            return
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if not wait:
                self.raw.commit(offsets=partitions, asynchronous=True)
                return
            results = self.raw.commit(offsets=partitions, asynchronous=False)
        except KafkaException as exc:
            raise _raise(exc, "committing offsets") from exc
        failed = [f"{r.topic}[{r.partition}]: {r.error}" for r in results or () if r.error is not None]
        if failed:
            raise TransportError("committing offsets: " + "; ".join(failed))

    async def commit_in_listener(self, offsets: dict[TP, int]) -> None:
        # librdkafka runs the rebalance callbacks on the polling thread: the blocking commit is allowed there
        self.commit(offsets)

    def connected(self) -> bool:
        now = time.monotonic()
        if not self._up and now - self._last_probe >= PROBE_INTERVAL_S:
            self._last_probe = now
            try:
                self.raw.list_topics(self._topics[0] if self._topics else None, timeout=0.5)
                self._up = True
            except KafkaException:
                pass
        return self._up

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if self._up:
                log.warning("Kafka unreachable (%s); reconnecting", error)
            self._up = False
            return
        log.warning("Kafka client error: %s", error)

    def group_metadata(self) -> Any:
        return self.raw.consumer_group_metadata()

    def close(self) -> None:
        self._closing = True
        self.raw.close()


class ConfluentProducer:
    """:class:`~shared.kafka.transport.EventProducer` over confluent-kafka's ``Producer``.

    Delivery reports come back for failures only, unless ``track_deliveries`` (the at-least-once committer's
    :meth:`mark`); :meth:`flush` raises when any record failed since the last one. Keys are partitioned as Java
    and kafka-python do (murmur2), so both transports spread keys alike.
    """

    def __init__(self, settings: KafkaSettings, *, transactional: bool = False,
                 track_deliveries: bool = False) -> None:
        failures = self._failures = DeliveryFailures()
        self._tracking = track_deliveries
        self._mark = DeliveryMark(failures)

        def on_delivery(error: KafkaError | None, message: Any) -> None:
            # a closure over the counter, not a bound method: no cycle keeps a dropped producer (and its
            # transactional id's background work) alive
            if error is not None:
                failures.add(message.topic(), error)

        config: dict[str, Any] = {
            **common_config(settings),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": settings.linger_ms,
            "partitioner": "murmur2_random",
            "compression.type": settings.compression_type,
            "delivery.report.only.error": not track_deliveries,
            "queue.buffering.max.kbytes": PRODUCER_QUEUE_KBYTES,
            "on_delivery": on_delivery,
            "error_cb": self._on_error,
        }
        if transactional:
            config["transactional.id"] = default_transactional_id(settings)
            config["transaction.timeout.ms"] = settings.transaction_timeout_ms
            config["retry.backoff.ms"] = TRANSACTIONAL_RETRY_BACKOFF_MS
            config["retry.backoff.max.ms"] = TRANSACTIONAL_RETRY_BACKOFF_MAX_MS
        self.raw = Producer(config)
        #: a transactional call outlived its timeout: the handle is left alone (never closed) from then on
        self._abandoned = False

    @staticmethod
    def _on_error(error: KafkaError) -> None:
        # connection errors repeat at every reconnect attempt; the consumer reports the outage once
        level = logging.DEBUG if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) \
            else logging.WARNING
        log.log(level, "Kafka producer error: %s", error)

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        mark = self._mark if self._tracking else None
        try:
            self._produce(topic, value, key, headers, mark)
        except BufferError:  # the local queue is full: serve delivery reports until there is room
            deadline = time.monotonic() + REQUEST_TIMEOUT_S
            while True:
                self.raw.poll(0.05)
                try:
                    self._produce(topic, value, key, headers, mark)
                    break
                except BufferError as exc:
                    if time.monotonic() > deadline:
                        raise TransportError("the producer queue stayed full") from exc
        except KafkaException as exc:
            raise _raise(exc, "send") from exc
        if mark is not None:
            mark.sent += 1

    def _produce(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None,
                 mark: DeliveryMark | None) -> None:
        if mark is None:
            self.raw.produce(topic, value, key, headers=headers)  # type: ignore[arg-type]
        else:
            self.raw.produce(topic, value, key, headers=headers, on_delivery=mark.report)  # type: ignore[arg-type]

    def mark(self) -> DeliveryMark:
        if not self._tracking:
            return untracked_mark()
        closed, self._mark = self._mark, DeliveryMark(self._failures)
        return closed

    def serve_deliveries(self) -> None:
        self.raw.poll(0)

    def nudge(self) -> None:
        # librdkafka treats linger.ms as passed while a flush() runs; what is not acknowledged in time goes on anyway
        self.raw.flush(NUDGE_WAIT_S)

    def flush(self, timeout_s: float | None) -> None:
        left = self.raw.flush(-1 if timeout_s is None else timeout_s)
        self._failures.raise_any()
        if left:
            raise TransportError(f"{left} records not delivered within {timeout_s} s")

    def init_transactions(self, timeout_s: float) -> None:
        self._bounded("init_transactions", lambda: self.raw.init_transactions(timeout_s), timeout_s)

    def begin_transaction(self) -> None:
        try:
            self.raw.begin_transaction()
        except KafkaException as exc:
            raise _raise(exc, "begin_transaction") from exc

    def send_offsets_to_transaction(self, offsets: dict[TP, int], consumer: EventConsumer, timeout_s: float) -> None:
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        metadata = consumer.group_metadata()
        self._bounded("send_offsets_to_transaction",
                      lambda: self.raw.send_offsets_to_transaction(partitions, metadata, timeout_s), timeout_s)

    def commit_transaction(self, timeout_s: float) -> None:
        try:
            self._bounded("commit_transaction", lambda: self.raw.commit_transaction(timeout_s), timeout_s)
        finally:
            self._failures.clear()  # a failed delivery fails the commit itself

    def _bounded(self, what: str, call: Callable[[], object], timeout_s: float) -> None:
        """Run a transactional call with a deadline of its own.

        librdkafka 2.16 was seen to stay in ``send_offsets_to_transaction`` for minutes past its timeout when
        the broker stopped at the wrong moment (``tests/integration/test_outage.py``). The call runs on a helper
        thread; when it outlives ``timeout_s`` plus a grace, the producer is abandoned (the worker rewinds with a
        new one, whose ``init_transactions`` fences this one) and the stuck thread ends whenever librdkafka lets
        it.
        """
        if self._abandoned:
            raise TransportError(f"{what}: the producer was abandoned after a call that did not return")
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                call()
            except BaseException as exc:  # handed to the calling thread
                outcome.append(exc)

        thread = threading.Thread(target=run, name=f"kafka-{what}", daemon=True)
        thread.start()
        thread.join(timeout_s + TRANSACTION_GRACE_S)
        if thread.is_alive():
            self._abandoned = True
            log.error("%s did not return within %.0f s although its timeout was %.0f s; abandoning this producer",
                      what, timeout_s + TRANSACTION_GRACE_S, timeout_s)
            raise TransportError(f"{what} did not return within {timeout_s + TRANSACTION_GRACE_S:.0f} s")
        if outcome:
            error = outcome[0]
            if isinstance(error, KafkaException):
                raise _raise(error, what) from error
            raise error

    def close(self, timeout_s: float) -> None:
        if self._abandoned:
            return  # another thread may still be inside librdkafka with this handle
        if timeout_s > 0:
            self.raw.flush(timeout_s)
        self.raw.purge()
        self.raw.flush(0)
        self.raw.close()
