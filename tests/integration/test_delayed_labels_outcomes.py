"""Every label outcome through a real worker (Kafka + Redis): early, late, orphan, duplicate, invalid labels.

The worker counts each in ``streamlearn_labels_total{outcome}``, learns only the joined ones, dead-letters the
invalid one, and keeps running.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest
from prometheus_client import CollectorRegistry

from shared.kafka.admin import ensure_topics
from shared.settings import Settings
from tests.integration.helpers import make_settings, produce, read_topic, running_worker, sample_value, wait_for

pytestmark = pytest.mark.integration

LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}
TTL_S = 1.0


def _event(event_id: str, x: float) -> tuple[bytes, bytes]:
    return event_id.encode(), orjson.dumps({"id": event_id, "features": {"x": x}})


def _label(event_id: str, label: bool) -> tuple[bytes, bytes]:
    return event_id.encode(), orjson.dumps({"id": event_id, "label": label})


def _outcome(registry: CollectorRegistry, outcome: str) -> float:
    return sample_value(registry, "streamlearn_labels_total", {"outcome": outcome}) or 0.0


def _create_topics(bootstrap: str, settings: Settings) -> None:
    t = settings.kafka.topics
    ensure_topics(bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                              t.dead_letters: 1})


def test_early_late_orphan_duplicate_and_invalid_labels_are_counted_and_never_crash_the_worker(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG],
                             labels={"ttl_s": TTL_S, "early_label_ttl_s": TTL_S, "max_entries": 1000})
    _create_topics(kafka_bootstrap, settings)
    topics = settings.kafka.topics
    registry = CollectorRegistry()

    def events_seen() -> float:
        return sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) or 0.0

    with running_worker(settings, registry) as worker:
        # 1. labels before their events: held; "early-a" then joins when its event comes
        produce(kafka_bootstrap, topics.labels, [_label("early-a", True), _label("early-b", False)])
        wait_for(lambda: _outcome(registry, "held") == 2, 30, "2 held labels")
        assert worker.delayed_labels is not None
        worker.delayed_labels.export_size()
        assert sample_value(registry, "streamlearn_label_join_held") == 2
        produce(kafka_bootstrap, topics.events, [_event("early-a", 1.0), _event("on-time", -1.0)])
        wait_for(lambda: _outcome(registry, "joined") == 1, 30, "the held label joined by its event")
        assert sample_value(registry, "streamlearn_learned_total", {"model": "logreg"}) == 1

        # 2. a label on time joins; a second label for the same event is a duplicate
        produce(kafka_bootstrap, topics.labels, [_label("on-time", False), _label("on-time", True),
                                                 _label("early-a", True)])
        wait_for(lambda: _outcome(registry, "duplicate") == 2, 30, "2 duplicate labels")
        assert _outcome(registry, "joined") == 2

        # 3. an invalid label record: counted, dead-lettered, nothing else happens
        produce(kafka_bootstrap, topics.labels, [(b"bad", b'{"id": "on-time"}'), (b"worse", b"not json")])
        wait_for(lambda: _outcome(registry, "invalid") == 2, 30, "2 invalid labels")

        # 4. a prediction that waits longer than ttl_s: its label is late; "early-b" never got its event: orphan
        produce(kafka_bootstrap, topics.events, [_event("slow", 0.5)])
        wait_for(lambda: events_seen() == 3, 30, "3 events")
        time.sleep(TTL_S + 0.5)
        produce(kafka_bootstrap, topics.labels, [_label("slow", True)])
        wait_for(lambda: _outcome(registry, "late") == 1, 30, "a late label")
        wait_for(lambda: _outcome(registry, "orphan") == 1, 30, "the held label that never met its event")

        # the worker kept going: one more event and its label still join
        produce(kafka_bootstrap, topics.events, [_event("after", 2.0)])
        wait_for(lambda: events_seen() == 4, 30, "4 events")
        produce(kafka_bootstrap, topics.labels, [_label("after", True)])
        wait_for(lambda: _outcome(registry, "joined") == 3, 30, "the last label joined")
        assert not worker.stopping

    assert sample_value(registry, "streamlearn_learned_total", {"model": "logreg"}) == 3
    assert _outcome(registry, "held") == 2 and _outcome(registry, "misrouted") == 0
    dead = read_topic(kafka_bootstrap, topics.dead_letters, 2)
    assert len(dead) == 2
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["error_code"] == "invalid_label"
        assert headers["source_topic"] == topics.labels
        assert "label" in headers["error"]
