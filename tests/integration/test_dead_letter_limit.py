"""A flood of invalid events (a bad deploy upstream) stops the worker loudly instead of filling the DLQ."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.worker import Worker
from shared.contract import HEADER_REASON_CODE
from shared.kafka.admin import ensure_topics
from shared.steps.dead_letters import DeadLetterLimitExceeded
from tests.integration.helpers import committed_total, make_settings, produce, read_topic, run_until_it_stops

pytestmark = pytest.mark.integration


def test_worker_stops_when_the_invalid_ratio_passes_its_limit(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    settings = make_settings(
        kafka_bootstrap, unique_name,
        models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}],
        limits={"dead_letter_max_ratio": 0.5, "dead_letter_window": 100},
        kafka={"max_poll_records": 50},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    good = [(f"g{i}".encode(), orjson.dumps({"id": f"g{i}", "features": {"x": float(i)}, "label": i % 2 == 0}))
            for i in range(200)]
    garbage = [(f"b{i}".encode(), b"{not json") for i in range(300)]
    produce(kafka_bootstrap, t.events, good + garbage)

    errors = run_until_it_stops(Worker(settings, registry=CollectorRegistry()))
    assert len(errors) == 1 and isinstance(errors[0], DeadLetterLimitExceeded), errors
    assert "dead_letter_max_ratio=0.5" in str(errors[0])
    # every valid event before the flood was predicted; the batch that crossed the limit was not committed
    assert len(read_topic(kafka_bootstrap, t.predictions, 200, timeout_s=20)) == 200
    committed = committed_total(kafka_bootstrap, settings.kafka.group_id, t.events)
    assert 200 <= committed < 200 + 300
    dead = read_topic(kafka_bootstrap, t.dead_letters, 300, timeout_s=5)
    assert len(dead) == committed - 200, "dead letters only for the committed part of the flood"


def test_a_flood_of_invalid_labels_stops_the_worker_too(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    """Invalid records on the labels topic count toward a cap of their own (the events' window is not theirs)."""
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url,
        models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}],
        limits={"dead_letter_max_ratio": 0.5, "dead_letter_window": 100},
        kafka={"max_poll_records": 50},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    events = [(f"e{i}".encode(), orjson.dumps({"id": f"e{i}", "features": {"x": float(i)}})) for i in range(50)]
    produce(kafka_bootstrap, t.events, events)
    produce(kafka_bootstrap, t.labels, [(f"e{i}".encode(), b"{not json") for i in range(300)])

    errors = run_until_it_stops(Worker(settings, registry=CollectorRegistry()))
    assert len(errors) == 1 and isinstance(errors[0], DeadLetterLimitExceeded), errors
    assert t.labels in str(errors[0]) and "dead_letter_max_ratio=0.5" in str(errors[0])
    # what was committed before the crossing batch is all a reader sees: the flood did not reach the DLQ
    dead = read_topic(kafka_bootstrap, t.dead_letters, 300, timeout_s=5)
    assert len(dead) < 100, "the cap stopped the flood before its window of 100 filled"
    assert all(dict(r.headers or [])[HEADER_REASON_CODE] == b"invalid_label" for r in dead)
