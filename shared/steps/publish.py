"""Publish: the champion's prediction to ``predictions``, the others to ``predictions.shadow``, rejects to the DLQ."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from shared.contract import (
    HEADER_ERROR,
    HEADER_REASON_CODE,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
)
from shared.learners.base import Output
from shared.monitoring.metrics import Metrics
from shared.settings import TopicSettings
from shared.steps.batch import Batch, Record
from shared.steps.models import ModelStep


def _json_key(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def prediction_payload(
    record: Record, model: str, version: str, output: Output, now: float, polled_at: float
) -> bytes:
    """The JSON value of one prediction record (see docs/contract.md)."""
    event = record.event
    assert event is not None
    return _payload(event.id, event.key, model, version, output, _proba(output.proba), now,
                    round((now - polled_at) * 1000.0, 3))


#: JSON names of non-string classes, by (type, value): ``True`` and ``1`` are equal keys but distinct classes
_CLASS_NAMES: dict[tuple[type, Any], str] = {}
_MAX_CLASS_NAMES = 4096


def _class_name(value: Any) -> str:
    name = _CLASS_NAMES.get((type(value), value))
    if name is None:
        name = _json_key(value)
        if len(_CLASS_NAMES) < _MAX_CLASS_NAMES:
            _CLASS_NAMES[(type(value), value)] = name
    return name


def _proba(proba: dict[Any, float]) -> dict[str, float] | None:
    if not proba:
        return None
    names = _BOOL_NAMES
    return {c if type(c) is str else names[c] if type(c) is bool else _class_name(c): p for c, p in proba.items()}


#: the JSON names of the binary classes (the most common non-string ones)
_BOOL_NAMES: dict[Any, str] = {True: "true", False: "false"}


def _payload(event_id: str, key: str | None, model: str, version: str, output: Output,
             proba: dict[str, float] | None, now: float, latency_ms: float) -> bytes:
    return orjson.dumps({
        "id": event_id, "key": key, "model": model, "model_version": version, "prediction": output.prediction,
        "proba": proba, "score": output.score, "ts": now, "latency_ms": latency_ms,
    })


class PublishStep:
    """Sends every output of the batch through a ``send(topic, value, key, headers)`` callable."""

    def __init__(
        self,
        send: Callable[[str, bytes, bytes | None, list[tuple[str, bytes]] | None], None],
        topics: TopicSettings,
        models: ModelStep,
        champion: Callable[[], str],
        metrics: Metrics,
        *,
        dead_letter_value: Callable[[bytes | None], bytes] | None = None,
    ) -> None:
        """``dead_letter_value``: what a dead letter carries for a record's value (default: the original bytes)."""
        self._send = send
        self._dead_letter_value = dead_letter_value
        self._topics = topics
        self._models = models
        self._champion = champion
        self._metrics = metrics

    def process(self, batch: Batch) -> None:
        now = time.time()
        latency_ms = round((now - batch.polled_at) * 1000.0, 3)  # one poll, one publish time: same for all
        champion = self._champion()
        predictions, shadow = self._topics.predictions, self._topics.shadow_predictions
        observe = self._metrics.end_to_end_seconds.observe
        fingerprints = self._models.fingerprints
        send = self._send
        for record in batch.records:
            if record.rejection is not None:
                self._dead_letter(record)
                continue
            event = record.event
            if event is None or record.duplicate or record.already_published:
                continue
            key = event.kafka_key.encode("utf-8")
            learned_before = record.learned_before
            for name, output in record.outputs.items():
                learned = learned_before.get(name)
                if learned is None:  # outputs set by another step: the model as it is now
                    learned = self._models.sets[(record.topic, record.partition)].learned.get(name, 0)
                value = _payload(event.id, event.key, name, f"{fingerprints[name]}.{learned}", output,
                                 _proba(output.proba), now, latency_ms)
                send(predictions if name == champion else shadow, value, key, None)
            if record.timestamp_ms > 0:
                observe(max(0.0, now - record.timestamp_ms / 1000.0))

    def _dead_letter(self, record: Record) -> None:
        assert record.rejection is not None
        if record.already_published:
            return
        headers = [
            (HEADER_ERROR, record.rejection.reason.encode("utf-8")),
            (HEADER_REASON_CODE, record.rejection.code.encode("utf-8")),
            (HEADER_SOURCE_TOPIC, record.topic.encode("utf-8")),
            (HEADER_SOURCE_PARTITION, str(record.partition).encode("ascii")),
            (HEADER_SOURCE_OFFSET, str(record.offset).encode("ascii")),
        ]
        value = self._dead_letter_value(record.value) if self._dead_letter_value else record.value or b""
        self._send(self._topics.dead_letters, value, record.key, headers)
