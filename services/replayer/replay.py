"""Turn a source's samples into events on Kafka, at a given rate, with a progress line.

Label modes: ``inline`` (the label inside each event), ``none`` (no labels at all), and ``delayed``: events go
out without their label, and each label follows on the labels topic (same Kafka key as its event, so it lands on
the co-partitioned labels partition) some events later, as planned by :func:`delayed_schedule`.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import orjson
from kafka import KafkaProducer

from shared.datasets import Sample, iter_source

LabelMode = Literal["inline", "none", "delayed"]


@dataclass(frozen=True, slots=True)
class DelayedLabelPlan:
    """How labels trail their events in ``delayed`` mode.

    Each labelled event ``i`` gets a delay ``d`` in ``[min_delay, max_delay - window + 1]``; its label goes out
    right after the last event of the window (``window`` consecutive events) holding event ``i + d``, so it
    arrives between ``min_delay`` and ``max_delay`` events after its event. The labels of one window go out
    shuffled. ``unlabelled`` events never get a label; ``duplicated`` events are sent a second time (same id)
    up to ``max_delay`` events later; ``duplicate_labels`` labels are sent twice.
    """

    min_delay: int = 1
    max_delay: int = 500
    window: int = 50
    unlabelled: float = 0.02
    duplicated: float = 0.01
    duplicate_labels: float = 0.0

    def __post_init__(self) -> None:
        if self.window < 1 or self.min_delay < 1:
            raise ValueError("window and min_delay must be at least 1")
        if self.max_delay - self.window + 1 < self.min_delay:
            raise ValueError("max_delay must be at least min_delay + window - 1")
        for name in ("unlabelled", "duplicated", "duplicate_labels"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a fraction between 0 and 1")


@dataclass(slots=True)
class ScheduleWindow:
    """One window of the delayed schedule: its events (sample indices; a repeat is a duplicate), then labels."""

    events: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def delayed_schedule(n: int, plan: DelayedLabelPlan, seed: int = 42) -> list[ScheduleWindow]:
    """The order in which ``n`` events and their labels go out in ``delayed`` mode (deterministic per seed).

    Windows are sent in order: a window's events, then its labels. Tests use the windows to drive a worker
    step by step and to compute the expected result offline.
    """
    rng = random.Random(seed)
    w = plan.window
    windows = [ScheduleWindow() for _ in range((n + w - 1) // w)]
    duplicates: list[list[int]] = [[] for _ in windows]
    for i in range(n):
        windows[i // w].events.append(i)
        if rng.random() >= plan.unlabelled:
            due = min(i + rng.randint(plan.min_delay, plan.max_delay - w + 1), n - 1)
            windows[due // w].labels.append(i)
            if rng.random() < plan.duplicate_labels:
                again = min(due + rng.randint(1, plan.max_delay), n - 1)
                windows[again // w].labels.append(i)
        if rng.random() < plan.duplicated:
            again = min(i + rng.randint(1, plan.max_delay), n - 1)
            duplicates[again // w].append(i)
    for window, repeats in zip(windows, duplicates, strict=True):
        window.events.extend(repeats)
        rng.shuffle(window.labels)
    return windows


def label_record(event_key: bytes, event_id: str, label: object, *, ts: float) -> tuple[bytes, bytes]:
    """The Kafka key and JSON value of one delayed label: the event's Kafka key, ``{"id", "label", "ts"}``."""
    return event_key, orjson.dumps({"id": event_id, "label": label, "ts": ts})


@dataclass(frozen=True, slots=True)
class ReplayStats:
    """What a replay sent."""

    sent: int
    seconds: float
    #: delayed labels sent (``labels="delayed"``)
    labels: int = 0

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
    labels_topic: str = "labels",
    delayed: DelayedLabelPlan | None = None,
    id_prefix: str | None = None,
    progress: bool = True,
    producer: KafkaProducer | None = None,
    stream: TextIO = sys.stderr,
    stop: threading.Event | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> ReplayStats:
    """Send ``limit`` events (all, for a bounded source) at ``rate`` per second (0: as fast as possible).

    Setting ``stop`` ends an inline-label replay early: it sends no further event and flushes what was sent.

    With ``labels="delayed"``, labels go to ``labels_topic`` as planned by ``delayed`` (default
    :class:`DelayedLabelPlan`); ``sent`` counts the event records (duplicates included), ``labels`` the labels.

    ``client_options``: the producer's security options (``shared.kafka.clients.security_options``).
    """
    own_producer = producer is None
    if producer is None:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, enable_idempotence=True,
            **(client_options or {}),
        )
    prefix = id_prefix if id_prefix is not None else f"{source}-{seed}"
    bar = _Progress(limit, stream, progress)
    started = time.monotonic()
    sent = 0
    if labels == "delayed":
        samples = list(iter_source(source, seed=seed, limit=limit, drift_at=drift_at))
        try:
            sent, n_labels = _send_delayed(producer, samples, prefix, topic, labels_topic,
                                           delayed or DelayedLabelPlan(), seed, rate, bar)
        finally:
            if own_producer:
                producer.close()
        bar.update(sent, final=True)
        return ReplayStats(sent=sent, seconds=time.monotonic() - started, labels=n_labels)
    try:
        for index, sample in enumerate(iter_source(source, seed=seed, limit=limit, drift_at=drift_at)):
            if rate > 0:
                due = started + index / rate
                delay = due - time.monotonic()
                if delay > 0:
                    if stop is not None:
                        stop.wait(delay)
                    else:
                        time.sleep(delay)
            if stop is not None and stop.is_set():
                break
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


def _send_delayed(
    producer: KafkaProducer, samples: list[Sample], prefix: str, topic: str, labels_topic: str,
    plan: DelayedLabelPlan, seed: int, rate: float, bar: _Progress,
) -> tuple[int, int]:
    started = time.monotonic()
    sent = labels = 0
    for kind, index in _flatten(delayed_schedule(len(samples), plan, seed)):
        sample = samples[index]
        event_id = f"{prefix}-{index:09d}"
        key, value = event_record(sample, event_id, with_label=False, ts=time.time())
        if kind == "label":
            label_key, label_value = label_record(key, event_id, sample.label, ts=time.time())
            producer.send(labels_topic, value=label_value, key=label_key)
            labels += 1
            continue
        if rate > 0:
            delay = started + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.send(topic, value=value, key=key)
        sent += 1
        bar.update(sent)
    producer.flush()
    return sent, labels


def _flatten(windows: list[ScheduleWindow]) -> Iterator[tuple[str, int]]:
    for window in windows:
        for index in window.events:
            yield "event", index
        for index in window.labels:
            yield "label", index
