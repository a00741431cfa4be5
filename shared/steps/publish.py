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
    payload = {
        "id": event.id,
        "key": event.key,
        "model": model,
        "model_version": version,
        "prediction": output.prediction,
        "proba": {_json_key(c): p for c, p in output.proba.items()} if output.proba else None,
        "score": output.score,
        "ts": now,
        "latency_ms": round((now - polled_at) * 1000.0, 3),
    }
    return orjson.dumps(payload)


class PublishStep:
    """Sends every output of the batch through a ``send(topic, value, key, headers)`` callable."""

    def __init__(
        self,
        send: Callable[[str, bytes, bytes | None, list[tuple[str, bytes]] | None], None],
        topics: TopicSettings,
        models: ModelStep,
        champion: Callable[[], str],
        metrics: Metrics,
    ) -> None:
        self._send = send
        self._topics = topics
        self._models = models
        self._champion = champion
        self._metrics = metrics

    def process(self, batch: Batch) -> None:
        now = time.time()
        champion = self._champion()
        end_to_end = self._metrics.end_to_end_seconds
        fingerprints = self._models.fingerprints
        for record in batch.records:
            if record.rejection is not None:
                self._dead_letter(record)
                continue
            if not record.is_valid or record.already_published or record.event is None:
                continue
            key = record.event.kafka_key.encode("utf-8")
            learned_before = record.learned_before
            for name, output in record.outputs.items():
                learned = learned_before.get(name)
                if learned is None:  # outputs set by another step: the model as it is now
                    learned = self._models.sets[(record.topic, record.partition)].learned.get(name, 0)
                version = f"{fingerprints[name]}.{learned}"
                value = prediction_payload(record, name, version, output, now, batch.polled_at)
                topic = self._topics.predictions if name == champion else self._topics.shadow_predictions
                self._send(topic, value, key, None)
            if record.timestamp_ms > 0:
                end_to_end.observe(max(0.0, now - record.timestamp_ms / 1000.0))

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
        self._send(self._topics.dead_letters, record.value or b"", record.key, headers)
