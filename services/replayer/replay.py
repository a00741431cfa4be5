"""Turn a source's samples into events on Kafka, at a given rate, with a progress line."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Literal, TextIO

import orjson
from kafka import KafkaProducer

from shared.datasets import Sample, iter_source

LabelMode = Literal["inline", "none"]


@dataclass(frozen=True, slots=True)
class ReplayStats:
    """What a replay sent."""

    sent: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def event_record(sample: Sample, event_id: str, *, with_label: bool, ts: float) -> tuple[bytes, bytes]:
    """The Kafka key and JSON value of one event (see docs/contract.md)."""
    event: dict[str, object] = {"id": event_id, "ts": ts, "features": sample.features}
    if sample.key is not None:
        event["key"] = sample.key
    if with_label:
        event["label"] = sample.label
    key = sample.key if sample.key is not None else event_id
    return key.encode("utf-8"), orjson.dumps(event, option=orjson.OPT_NON_STR_KEYS)


class _Progress:
    def __init__(self, total: int | None, stream: TextIO, enabled: bool) -> None:
        self._total = total
        self._stream = stream
        self._enabled = enabled
        self._started = time.monotonic()
        self._last = 0.0

    def update(self, sent: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self._enabled or (not final and now - self._last < 0.25):
            return
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        if self._total:
            width = 30
            done = int(width * sent / self._total)
            bar = "#" * done + "-" * (width - done)
            line = f"\r[{bar}] {sent}/{self._total} events  {sent / elapsed:,.0f}/s"
        else:
            line = f"\r{sent} events  {sent / elapsed:,.0f}/s"
        self._stream.write(line + ("\n" if final else ""))
        self._stream.flush()


def replay(
    source: str,
    *,
    bootstrap_servers: str,
    topic: str = "events",
    rate: float = 0.0,
    limit: int | None = None,
    seed: int = 42,
    drift_at: int | None = None,
    labels: LabelMode = "inline",
    id_prefix: str | None = None,
    progress: bool = True,
    producer: KafkaProducer | None = None,
    stream: TextIO = sys.stderr,
) -> ReplayStats:
    """Send ``limit`` events (all, for a bounded source) at ``rate`` per second (0: as fast as possible)."""
    own_producer = producer is None
    if producer is None:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, enable_idempotence=True
        )
    prefix = id_prefix if id_prefix is not None else f"{source}-{seed}"
    bar = _Progress(limit, stream, progress)
    started = time.monotonic()
    sent = 0
    try:
        for index, sample in enumerate(iter_source(source, seed=seed, limit=limit, drift_at=drift_at)):
            if rate > 0:
                due = started + index / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            key, value = event_record(
                sample, f"{prefix}-{index:09d}", with_label=labels == "inline", ts=time.time()
            )
            producer.send(topic, value=value, key=key)
            sent += 1
            bar.update(sent)
        producer.flush()
    finally:
        if own_producer:
            producer.close()
    bar.update(sent, final=True)
    return ReplayStats(sent=sent, seconds=time.monotonic() - started)
