"""Issue 14, acceptance 4: 1,000 produced events and every published prediction (and the labels and dead letters
of the run) validate against the committed JSON Schemas (schemas/*.json) with the ``jsonschema`` validator."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import orjson
import pytest
from prometheus_client import CollectorRegistry

from shared.client import EventProducer, RawRecord, dead_letter_from_record
from shared.datasets import iter_source
from shared.kafka.admin import ensure_topics
from tests.integration.helpers import make_settings, produce, read_topic, running_worker, sample_value, wait_for

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
N = 1000
DELAYED = 100  # the last events go without their label, which follows on the labels topic
MODELS = [
    {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"},
    {"name": "nb", "estimator": "river.naive_bayes.GaussianNB"},
]


def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def _all_valid(kind: str, documents: list[object]) -> None:
    validator = _validator(kind)
    problems = [(i, error.message) for i, document in enumerate(documents) for error in validator.iter_errors(document)]
    assert not problems, f"{len(problems)} {kind} records break the schema, first: {problems[:3]}"


def test_produced_events_and_published_predictions_match_the_schemas(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name, redis_url=redis_url, models=MODELS)
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 2, t.labels: 2, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    with EventProducer.from_settings(settings) as producer:
        for i, sample in enumerate(iter_source("phishing", limit=N)):
            event = {"id": f"e-{i}", "ts": 1_767_323_045.0 + i if i % 2 else "2026-11-24T12:00:00Z",
                     "key": f"site-{i % 17}", "features": sample.features}
            if i < N - DELAYED:
                event["label"] = sample.label
            key = producer.send_event(event)
            if i >= N - DELAYED:
                producer.send_label({"id": event["id"], "label": sample.label}, key=key.decode())
        producer.flush()
    produce(kafka_bootstrap, t.events, [(b"bad", b'{"id": "x"}'), (b"worse", b"\xff")])

    registry = CollectorRegistry()
    with running_worker(settings, registry):
        wait_for(lambda: sample_value(registry, "streamlearn_labels_total", {"outcome": "joined"}) == DELAYED, 120,
                 f"{DELAYED} delayed labels joined")
        wait_for(lambda: sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == N, 60,
                 f"{N} valid events")

    events = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, t.events, N + 2, to_end=True)
              if r.key not in (b"bad", b"worse")]
    labels = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, t.labels, DELAYED, to_end=True)]
    champion = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, t.predictions, N, to_end=True)]
    shadow = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, t.shadow_predictions, N, to_end=True)]
    letters = [
        dead_letter_from_record(RawRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value,
                                          tuple(r.headers)))
        for r in read_topic(kafka_bootstrap, t.dead_letters, 2, to_end=True)
    ]

    assert len(events) == N and len(labels) == DELAYED
    assert len(champion) == N and len(shadow) == N, "one champion and one shadow prediction per event"
    assert sorted(letter.error_code for letter in letters) == ["invalid_utf8", "schema"]
    _all_valid("event", events)
    _all_valid("label", labels)
    _all_valid("prediction", champion + shadow)
    _all_valid("dead_letter", [letter.model_dump(mode="json") for letter in letters])
    # the schema refuses what the worker dead-lettered
    assert not _validator("event").is_valid({"id": "x"})
