"""A small Python client for streamlearn: send events and labels, read predictions and dead letters.

The records are the contract's models (docs/contract.md)::

    from shared.client import Event, EventProducer, PredictionReader

    with PredictionReader("127.0.0.1:9092") as reader, EventProducer("127.0.0.1:9092") as producer:
        producer.send_event(Event(id="order-1", features={"amount": 12.5}, label=False))
        producer.flush()
        for prediction in reader.predictions(limit=1, timeout_s=30):
            print(prediction.model, prediction.prediction)

:class:`EventProducer` validates every record exactly as the worker will (the same decoder and limits) before it
sends it, so a record it accepts never ends up on the dead-letter topic, and one it refuses raises
:class:`InvalidRecord` with the worker's reason. Readers read committed records only and join no consumer group,
so they never move a group's offsets.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from pydantic import ValidationError

from shared.contract import (
    HEADER_ERROR,
    HEADER_REASON_CODE,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    DeadLetter,
    Event,
    Label,
    Prediction,
)
from shared.kafka.clients import security_options
from shared.settings import LimitSettings, Settings
from shared.steps.batch import InvalidMessage, Rejection
from shared.steps.decode import decode_event
from shared.steps.semantics import rules_for

__all__ = [
    "MAX_LABEL_BYTES",
    "DeadLetter",
    "DeliveryError",
    "Event",
    "EventCheck",
    "EventProducer",
    "InvalidRecord",
    "Label",
    "Prediction",
    "PredictionReader",
    "RawRecord",
    "TopicReader",
    "dead_letter_from_record",
    "encode_event",
    "encode_label",
]

#: the largest label record the worker accepts (``shared.steps.labels.MAX_LABEL_BYTES``; a unit test keeps them equal)
MAX_LABEL_BYTES = 4096


class InvalidRecord(ValueError):
    """A record the worker would refuse: ``code`` is its dead-letter code, the message the worker's reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class DeliveryError(RuntimeError):
    """Kafka did not acknowledge some records."""


def _has_non_finite(data: Mapping[str, Any]) -> bool:
    values = list(data.values())
    features = data.get("features")
    if isinstance(features, Mapping):
        values.extend(features.values())
    return any(isinstance(v, float) and not math.isfinite(v) for v in values)


def _dumps(data: Mapping[str, Any]) -> bytes:
    # orjson writes NaN and infinity as null, which would hide them: the standard encoder keeps them, and the
    # worker's decoder then names them
    try:
        if _has_non_finite(data):
            return json.dumps(dict(data)).encode("utf-8")
        return orjson.dumps(dict(data))
    except (TypeError, ValueError) as exc:
        raise InvalidRecord("schema", f"not serializable as JSON: {exc}") from None


def _event_data(event: Event | Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(event, Event):
        return event
    data: dict[str, Any] = {"id": event.id}
    for name in ("ts", "key"):
        if getattr(event, name) is not None:
            data[name] = getattr(event, name)
    data["features"] = event.features
    if event.label is not None:
        data["label"] = event.label
    return data


#: a further check of a decoded event, as the worker makes after decoding: why it is refused, or ``None``
EventCheck = Callable[[Event], Rejection | None]


def encode_event(
    event: Event | Mapping[str, Any], limits: LimitSettings | None = None, check: EventCheck | None = None
) -> tuple[bytes, bytes]:
    """The Kafka key and JSON value of ``event``, validated as the worker validates it.

    Raises :class:`InvalidRecord` (with the worker's dead-letter code and reason) when the worker would refuse it:
    the decoder's rules and ``limits``, then ``check`` when given.
    """
    value = _dumps(_event_data(event))
    try:
        decoded = decode_event(value, limits or LimitSettings())
    except InvalidMessage as exc:
        raise InvalidRecord(exc.rejection.code, exc.rejection.reason) from None
    rejection = check(decoded) if check is not None else None
    if rejection is not None:
        raise InvalidRecord(rejection.code, rejection.reason)
    return decoded.kafka_key.encode("utf-8"), value


def encode_label(label: Label | Mapping[str, Any]) -> bytes:
    """The JSON value of a delayed label, validated as the worker validates it (raises :class:`InvalidRecord`)."""
    if isinstance(label, Label):
        data: Mapping[str, Any] = {"id": label.id, "label": label.label,
                                   **({"ts": label.ts} if label.ts is not None else {})}
    else:
        data = label
    value = _dumps(data)
    if len(value) > MAX_LABEL_BYTES:
        raise InvalidRecord("invalid_label", f"label record of {len(value)} bytes exceeds {MAX_LABEL_BYTES}")
    try:
        Label.model_validate(json.loads(value))
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in err['loc']) or 'label'}: {err['msg']}" for err in exc.errors()[:5]]
        raise InvalidRecord("invalid_label", "invalid label: " + "; ".join(parts)) from None
    return value


class EventProducer:
    """Sends validated events to the events topic and delayed labels to the labels topic.

    Sends are asynchronous and bounded by the producer's buffer (``send`` blocks when it is full);
    :meth:`flush` waits for every acknowledgement and raises :class:`DeliveryError` if any record failed.
    """

    def __init__(
        self,
        bootstrap_servers: str = "127.0.0.1:9092",
        *,
        events_topic: str = "events",
        labels_topic: str = "labels",
        limits: LimitSettings | None = None,
        check: EventCheck | None = None,
        **producer_options: Any,
    ) -> None:
        self.events_topic = events_topic
        self.labels_topic = labels_topic
        self._limits = limits or LimitSettings()
        self._check = check
        options: dict[str, Any] = {"acks": "all", "linger_ms": 5, "enable_idempotence": True, **producer_options}
        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **options)
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed = 0
        self._first_error: BaseException | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **producer_options: Any) -> EventProducer:
        """A producer for the topics, limits, servers and security of a worker's settings."""
        kafka = settings.kafka
        return cls(
            kafka.bootstrap_servers, events_topic=kafka.topics.events, labels_topic=kafka.topics.labels,
            limits=settings.limits, check=rules_for(settings).check_event,
            **{**security_options(kafka), **producer_options},
        )

    def send_event(self, event: Event | Mapping[str, Any]) -> bytes:
        """Validate and send one event (keyed by its ``key``, else its ``id``); its Kafka key.

        Raises :class:`InvalidRecord` and sends nothing when the worker would refuse the event.
        """
        key, value = encode_event(event, self._limits, self._check)
        self.send_encoded(self.events_topic, key, value)
        return key

    def send_label(self, label: Label | Mapping[str, Any], *, key: str | None = None) -> None:
        """Validate and send one delayed label, with the Kafka key of its event (``key``, else the label's id).

        The key must be the event's Kafka key (its ``key`` field when it had one) so that the label lands on the
        partition of its event (docs/contract.md, partitioning rule).
        """
        value = encode_label(label)
        if key is None:
            key = label.id if isinstance(label, Label) else str(label["id"])
        self.send_encoded(self.labels_topic, key.encode("utf-8"), value)

    def send_encoded(self, topic: str, key: bytes, value: bytes) -> None:
        """Send a record already validated by :func:`encode_event` or :func:`encode_label` (asynchronously)."""
        future = self._producer.send(topic, key=key, value=value)
        future.add_callback(self._on_delivered)
        future.add_errback(self._on_failed)

    def _on_delivered(self, _metadata: Any) -> None:
        with self._lock:
            self.delivered += 1

    def _on_failed(self, error: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if self._first_error is None:
                self._first_error = error

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged; raise :class:`DeliveryError` if any failed."""
        self._producer.flush(timeout=timeout_s)
        with self._lock:
            if self.failed:
                raise DeliveryError(f"{self.failed} records were not delivered: {self._first_error}")

    def close(self, timeout_s: float | None = None) -> None:
        """Send what is buffered and release the connection (does not raise on failed records: see flush)."""
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as a reader got it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class TopicReader:
    """Reads one topic's committed records, from the start or from the end it had when the reader was made.

    No consumer group: the reader assigns itself every partition, so it never moves a group's offsets and any
    number of readers can run. A topic that does not exist yet is picked up, from its start, when it appears.
    """

    def __init__(
        self, bootstrap_servers: str, topic: str, *, from_beginning: bool = False, **consumer_options: Any
    ) -> None:
        self.topic = topic
        self._from_beginning = from_beginning
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
            isolation_level="read_committed", auto_offset_reset="earliest", allow_auto_create_topics=False,
            **consumer_options,
        )
        self._assigned = False
        self._assign(seek_to_end=not from_beginning)

    def _assign(self, *, seek_to_end: bool) -> None:
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            return
        assignment = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(assignment)
        if seek_to_end:
            self._consumer.seek_to_end(*assignment)
        else:
            self._consumer.seek_to_beginning(*assignment)
        for tp in assignment:
            self._consumer.position(tp)  # resolve now: "the end" is the end when the reader was made
        self._assigned = True

    def records(self, *, timeout_s: float | None = None, stop: threading.Event | None = None) -> Iterator[RawRecord]:
        """Follow the topic: yield records as they come, until ``timeout_s`` seconds pass or ``stop`` is set."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if stop is not None and stop.is_set():
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            wait_ms = int(1000 * min(0.5, remaining if remaining is not None else 0.5))
            if not self._assigned:
                self._assign(seek_to_end=False)  # a topic that appeared holds only records newer than the reader
                if not self._assigned:
                    time.sleep(wait_ms / 1000)
                    continue
            for batch in self._consumer.poll(timeout_ms=max(wait_ms, 1)).values():
                for record in batch:
                    yield RawRecord(
                        topic=record.topic, partition=record.partition, offset=record.offset,
                        timestamp_ms=record.timestamp, key=record.key, value=record.value,
                        headers=tuple((name, value or b"") for name, value in record.headers or ()),
                    )

    def close(self) -> None:
        """Leave the broker."""
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class PredictionReader(TopicReader):
    """A :class:`TopicReader` of ``predictions`` (or ``predictions.shadow``) that yields :class:`Prediction`."""

    def __init__(
        self, bootstrap_servers: str, topic: str = "predictions", *, from_beginning: bool = False,
        **consumer_options: Any,
    ) -> None:
        super().__init__(bootstrap_servers, topic, from_beginning=from_beginning, **consumer_options)

    def predictions(
        self, *, model: str | None = None, key: str | None = None, limit: int | None = None,
        timeout_s: float | None = None, stop: threading.Event | None = None,
    ) -> Iterator[Prediction]:
        """Predictions as they come, of ``model`` only and for the Kafka ``key`` only when given.

        Stops after ``limit`` predictions, ``timeout_s`` seconds, or when ``stop`` is set. A record that is not a
        valid prediction raises ``pydantic.ValidationError``.
        """
        count = 0
        if limit is not None and limit <= 0:
            return
        for record in self.records(timeout_s=timeout_s, stop=stop):
            if key is not None and record.key != key.encode("utf-8"):
                continue
            prediction = Prediction.model_validate_json(record.value or b"")
            if model is not None and prediction.model != model:
                continue
            yield prediction
            count += 1
            if limit is not None and count >= limit:
                return


def dead_letter_from_record(record: RawRecord) -> DeadLetter:
    """The :class:`DeadLetter` of a record read from the dead-letter topic (raises ``ValueError`` if it is not one)."""
    headers = {name: value.decode("utf-8", errors="replace") for name, value in record.headers}
    missing = [name for name in (HEADER_ERROR, HEADER_REASON_CODE, HEADER_SOURCE_TOPIC, HEADER_SOURCE_PARTITION,
                                 HEADER_SOURCE_OFFSET) if name not in headers]
    if missing:
        raise ValueError(f"not a dead letter: no header {', '.join(missing)}")
    return DeadLetter(
        error=headers[HEADER_ERROR], error_code=headers[HEADER_REASON_CODE],
        source_topic=headers[HEADER_SOURCE_TOPIC], source_partition=int(headers[HEADER_SOURCE_PARTITION]),
        source_offset=int(headers[HEADER_SOURCE_OFFSET]),
        key=None if record.key is None else record.key.decode("utf-8", errors="replace"),
        value=None if record.value is None else record.value.decode("utf-8", errors="replace"),
    )
