"""Dedup and per-entity features in a real worker (Kafka + Redis).

Duplicates (an id seen again, in the same poll or later) are counted, get no prediction and do not touch the
entity aggregates. Every other event's features, as stored for its delayed label (what the models saw), hold its
entity's aggregates as of before the event, equal to a direct computation.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from shared.kafka.admin import ensure_topics
from tests.integration.helpers import make_settings, produce, read_topic, running_worker, sample_value, wait_for

pytestmark = pytest.mark.integration

LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}


def _expected(history: list[tuple[float, float]], ts: float, last_n: int) -> dict[str, float]:
    if not history:
        return {"entity_count": 0.0, "entity_count_total": 0.0}
    window = [amount for _, amount in history[-last_n:]]
    return {
        "entity_count": float(len(window)), "entity_count_total": float(len(history)),
        "entity_seconds_since_last": ts - history[-1][0],
        "entity_amount_mean": sum(window) / len(window), "entity_amount_min": min(window),
        "entity_amount_max": max(window),
    }


def test_duplicates_are_dropped_and_entity_aggregates_reach_the_models(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    last_n = 3
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG],
        entities={"enabled": True, "fields": ["amount"], "last_n": last_n},
        dedup={"window_s": 600},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    events: list[dict[str, object]] = []
    for i in range(60):
        events.append({"id": f"e{i}", "key": f"k{i % 4}", "ts": 1000.0 + 7 * i,
                       "features": {"amount": float((i * 37) % 11), "other": i}})
    repeats = [events[5], events[5], events[20], events[59]]  # a repeat right away, and later ones
    stream = [*events[:6], repeats[0], *events[6:30], *repeats[1:3], *events[30:], repeats[3]]
    produce(kafka_bootstrap, t.events, [(str(e["key"]).encode(), orjson.dumps(e)) for e in stream])

    registry = CollectorRegistry()
    with running_worker(settings, registry):
        wait_for(lambda: (sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) or 0)
                 + (sample_value(registry, "streamlearn_events_total", {"outcome": "duplicate"}) or 0)
                 == len(stream), 60, f"{len(stream)} events")

    assert sample_value(registry, "streamlearn_events_total", {"outcome": "duplicate"}) == len(repeats)
    assert sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == len(events)
    predictions = read_topic(kafka_bootstrap, t.predictions, len(events))
    assert sorted(orjson.loads(r.value)["id"] for r in predictions) == sorted(str(e["id"]) for e in events)

    client = redis.Redis.from_url(redis_url)
    stored = client.hgetall(f"{settings.redis.namespace}:{settings.kafka.group_id}:join:pending")
    features = {}
    for value in stored.values():
        payload = orjson.loads(value.split(b"\n", 1)[1])
        features[payload[0]] = payload[4]
    assert len(features) == len(events)
    histories: dict[str, list[tuple[float, float]]] = {}
    for event in events:
        key, ts = str(event["key"]), float(event["ts"])  # type: ignore[arg-type]
        history = histories.setdefault(key, [])
        got = {k: v for k, v in features[event["id"]].items() if k.startswith("entity_")}
        assert got == pytest.approx(_expected(history, ts, last_n)), event["id"]
        assert features[event["id"]]["other"] == event["features"]["other"]  # type: ignore[index]
        history.append((ts, float(event["features"]["amount"])))  # type: ignore[index]
    assert sample_value(registry, "streamlearn_entity_keys") == 4
    assert (sample_value(registry, "streamlearn_dedup_entries") or 0) >= 1
