"""The batched path is prequential: a stream through polls of 500 records gives the same predictions as one by one,
also where a batch's model-and-after steps run in parts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.replayer import event_record
from shared.datasets import iter_source
from shared.kafka.admin import ensure_topics
from shared.settings import Settings
from tests.integration.helpers import make_settings, produce, read_topic, running_worker, sample_value, wait_for

pytestmark = pytest.mark.integration

MODELS = [
    {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"},
    {"name": "arf", "estimator": "river.forest.ARFClassifier", "params": {"n_models": 3}},
]
N = 800
#: every 97th record is unusable (dead-lettered), every 13th event comes without a label (predicted, not learned)
BAD_EVERY, UNLABELLED_EVERY = 97, 13


def _stream() -> list[tuple[bytes | None, bytes | None]]:
    items: list[tuple[bytes | None, bytes | None]] = []
    for i, sample in enumerate(iter_source("phishing", seed=7, limit=N)):
        if i % BAD_EVERY == 50:
            items.append((b"bad", b'{"id": "bad", "features": {"x": NaN}}' if i % 2 else b"not json"))
        items.append(event_record(sample, f"e{i:05d}", with_label=i % UNLABELLED_EVERY != 5, ts=1_700_000_000.0 + i))
    return items


def _run(settings: Settings, expected: int) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """The predictions and shadow predictions published, and the batches the worker ran in parts."""
    t = settings.kafka.topics
    registry = CollectorRegistry()
    with running_worker(settings, registry) as worker:
        wait_for(lambda: sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == expected,
                 180, f"{expected} valid events")
    published = {topic: [orjson.loads(r.value) for r in read_topic(settings.kafka.bootstrap_servers, topic, expected)]
                 for topic in (t.predictions, t.shadow_predictions)}
    return published, worker.parts.split_batches


def _without_timing(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in p.items() if k not in ("ts", "latency_ms")} for p in payloads]


def test_polls_of_500_predict_exactly_as_polls_of_one(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    events = unique_name("events")
    items = _stream()
    ensure_topics(kafka_bootstrap, {events: 1})
    produce(kafka_bootstrap, events, items)
    results = []
    for poll_size in (1, 500):
        topics = {"events": events, "labels": unique_name("labels"), "predictions": unique_name("predictions"),
                  "shadow_predictions": unique_name("shadow"), "dead_letters": unique_name("dlq")}
        settings = make_settings(kafka_bootstrap, unique_name, redis_url=redis_url, models=MODELS,
                                 kafka={"max_poll_records": poll_size, "topics": topics})
        t = settings.kafka.topics
        ensure_topics(kafka_bootstrap, {t.predictions: 1, t.shadow_predictions: 1, t.dead_letters: 1, t.labels: 1})
        published, split = _run(settings, N)
        results.append((settings, published))
        if poll_size == 500:
            # the model-and-after steps of a large batch run in parts (docs/architecture.md, "Parts of a batch"):
            # the parts too must predict as one by one
            assert split > 0, "no batch ran in parts"
    (one_settings, one), (batch_settings, batched) = results
    for one_topic, batch_topic in ((one_settings.kafka.topics.predictions, batch_settings.kafka.topics.predictions),
                                   (one_settings.kafka.topics.shadow_predictions,
                                    batch_settings.kafka.topics.shadow_predictions)):
        assert len(one[one_topic]) == N, "one prediction per valid event"
        assert [p["prediction"] for p in batched[batch_topic]] == [p["prediction"] for p in one[one_topic]]
        # the whole payload but its clock readings: ids, keys, model versions (examples learned), probabilities
        assert _without_timing(batched[batch_topic]) == _without_timing(one[one_topic])
    assert {p["model"] for p in one[one_settings.kafka.topics.shadow_predictions]} == {"arf"}
