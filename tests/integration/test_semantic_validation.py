"""Semantic validation on the real broker: records that fit the schema but make no sense are dead-lettered with
their own code, counted by reason, and neither predicted nor learned; labels on the labels topic too."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import orjson
import pytest
from prometheus_client import CollectorRegistry

from shared.kafka.admin import ensure_topics
from tests.integration.helpers import make_settings, produce, read_topic, running_worker, sample_value, wait_for

pytestmark = pytest.mark.integration

LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}


def test_nonsense_records_are_dead_lettered_with_their_code(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG])
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    now = time.time()
    bad = {
        "label-3.5": ({"features": {"x": 1.0}, "label": 3.5}, "label_task"),
        "ts-1e30": ({"features": {"x": 1.0}, "label": 1, "ts": 1e30}, "ts_out_of_window"),
        "huge": ({"features": {"x": 1.2e29}, "label": 0}, "value_out_of_range"),
        "empty": ({"features": {}, "label": 1}, "no_features"),
    }
    good = [{"id": f"good-{i}", "features": {"x": float(i)}, "label": i % 2, "ts": now} for i in range(6)]
    good.append({"id": "pending", "features": {"x": 1.0}, "ts": now})  # its label comes on the labels topic
    events = [{"id": name, **body} for name, (body, _) in bad.items()] + good
    produce(kafka_bootstrap, t.events, [(e["id"].encode(), orjson.dumps(e)) for e in events])
    produce(kafka_bootstrap, t.labels, [(b"pending", orjson.dumps({"id": "pending", "label": 3.5}))])
    registry = CollectorRegistry()
    with running_worker(settings, registry):
        wait_for(lambda: sum(sample_value(registry, "streamlearn_dead_letters_total", {"reason": code}) or 0
                             for code in ("label_task", "ts_out_of_window", "value_out_of_range", "no_features"))
                 == 5, 60, "five dead letters")
        valid = sample_value(registry, "streamlearn_events_total", {"outcome": "valid"})
        by_reason = {code: sample_value(registry, "streamlearn_dead_letters_total", {"reason": code})
                     for code in ("label_task", "ts_out_of_window", "value_out_of_range", "no_features")}
    assert by_reason == {"label_task": 2, "ts_out_of_window": 1, "value_out_of_range": 1, "no_features": 1}
    assert valid == len(good)

    dead = read_topic(kafka_bootstrap, t.dead_letters, 5)
    codes = Counter()
    for record in dead:
        headers = dict(record.headers)
        source = headers["source_topic"].decode()
        name = orjson.loads(record.value)["id"]
        codes[(source, name, headers["error_code"].decode())] += 1
    expected = {(t.events, name, code) for name, (_, code) in bad.items()} | {(t.labels, "pending", "label_task")}
    assert set(codes) == expected and all(count == 1 for count in codes.values())
    predicted = {orjson.loads(r.value)["id"] for r in read_topic(kafka_bootstrap, t.predictions, len(good))}
    assert predicted == {e["id"] for e in good}, "no prediction for a refused event"
