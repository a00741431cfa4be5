"""EntityStore on a real Redis: last-N and last-T aggregates as of before each event, bounds, replay."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
import redis

from shared.learners.base import FeatureValue
from shared.state.entities import EntityEvent, EntityFeatureSpec, EntityStore

pytestmark = pytest.mark.integration


def _store(client: redis.Redis, **spec: object) -> EntityStore:
    options: dict = {"fields": ("amount",), **spec}
    return EntityStore(client, "sltest", "g", EntityFeatureSpec(**options))


def _reference(spec: EntityFeatureSpec, events: list[EntityEvent]) -> list[dict[str, float]]:
    """Aggregates computed the plain way, with unbounded history."""
    history: dict[str, list[tuple[float, Mapping[str, FeatureValue]]]] = {}
    results: list[dict[str, float]] = []
    for key, ts, features in events:
        assert key is not None
        past = history.setdefault(key, [])
        window = past[-spec.last_n:] if spec.last_n else list(past)
        if spec.last_seconds is not None:
            window = [(t, f) for t, f in window if t >= ts - spec.last_seconds]
        out = {"entity_count": float(len(window)), "entity_count_total": float(len(past))}
        if past:
            out["entity_seconds_since_last"] = max(0.0, ts - past[-1][0])
        for name in spec.fields:
            raw = [f.get(name) for _, f in window]
            values = [float(v) for v in raw if isinstance(v, int | float) and not isinstance(v, bool)]
            if values:
                out[f"entity_{name}_mean"] = sum(values) / len(values)
                out[f"entity_{name}_min"] = float(min(values))
                out[f"entity_{name}_max"] = float(max(values))
        results.append(out)
        past.append((ts, features))
    return results


def test_last_n_events_as_of_before_each_event(redis_client: redis.Redis) -> None:
    store = _store(redis_client, last_n=3)
    amounts = [1.0, 2.0, 3.0, 4.0, 10.0]
    out = store.update_and_get([("a", 100.0 + i, {"amount": x}) for i, x in enumerate(amounts)])
    assert out[0] == {"entity_count": 0.0, "entity_count_total": 0.0}, "nothing known before the first event"
    assert out[1]["entity_amount_mean"] == 1.0 and out[1]["entity_seconds_since_last"] == 1.0
    assert out[4] == {
        "entity_count": 3.0, "entity_count_total": 4.0, "entity_seconds_since_last": 1.0,
        "entity_amount_mean": 3.0, "entity_amount_min": 2.0, "entity_amount_max": 4.0,
    }
    nxt = store.update_and_get([("a", 110.0, {"amount": 0.0})])[0]
    assert nxt["entity_amount_max"] == 10.0 and nxt["entity_count_total"] == 5.0
    assert nxt["entity_seconds_since_last"] == 6.0


def test_last_seconds_window_with_explicit_timestamps(redis_client: redis.Redis) -> None:
    store = _store(redis_client, last_seconds=10.0)
    events: list[EntityEvent] = [("k", ts, {"amount": ts}) for ts in (0.0, 5.0, 12.0, 14.0, 30.0)]
    out = store.update_and_get(events)
    assert [o["entity_count"] for o in out] == [0.0, 1.0, 1.0, 2.0, 0.0]
    assert out[2]["entity_amount_mean"] == 5.0, "at 12 s only the event at 5 s is within 10 s"
    assert (out[3]["entity_amount_min"], out[3]["entity_amount_max"]) == (5.0, 12.0)
    assert "entity_amount_mean" not in out[4] and out[4]["entity_seconds_since_last"] == 16.0


def test_events_of_one_key_in_one_batch_see_each_other(redis_client: redis.Redis) -> None:
    store = _store(redis_client, last_n=10)
    out = store.update_and_get([("a", 1.0, {"amount": 5}), ("b", 1.5, {"amount": 7}), ("a", 2.0, {"amount": 1}),
                                (None, 2.0, {"amount": 3}), ("b", 3.0, {"amount": 1})])
    assert out[2]["entity_amount_mean"] == 5.0 and out[2]["entity_count"] == 1.0
    assert out[3] == {}, "no key, no entity features"
    assert out[4]["entity_amount_mean"] == 7.0
    assert store.size() == 2


def test_non_numeric_and_missing_values_are_skipped(redis_client: redis.Redis) -> None:
    store = EntityStore(redis_client, "sltest", "g", EntityFeatureSpec(fields=("amount", "score"), last_n=5))
    batch: list[EntityEvent] = [
        ("a", 1.0, {"amount": "12", "score": None}), ("a", 2.0, {"amount": True, "score": 2}),
        ("a", 3.0, {"amount": float("nan")}), ("a", 4.0, {"amount": 4, "score": 1.5}),
    ]
    out = store.update_and_get(batch)
    assert out[3]["entity_count"] == 3.0
    assert "entity_amount_mean" not in out[3], "strings, booleans and NaN are not numbers"
    assert out[3]["entity_score_mean"] == 2.0


def test_matches_a_plain_reference_on_a_random_stream(redis_client: redis.Redis) -> None:
    rng = random.Random(7)
    spec = EntityFeatureSpec(fields=("amount", "rate"), last_n=4, last_seconds=20.0, max_history=50)
    store = EntityStore(redis_client, "sltest", "g", spec)
    ts = 0.0
    events: list[EntityEvent] = []
    for _ in range(300):
        ts += rng.choice([0.0, 0.5, 3.0, 11.0])
        features = {"amount": rng.randint(-50, 50), "rate": rng.random() if rng.random() < 0.7 else None}
        events.append((f"k{rng.randrange(6)}", ts, features))
    got: list[dict[str, float]] = []
    for start in range(0, len(events), 37):
        got += store.update_and_get(events[start:start + 37])
    expected = _reference(spec, events)
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.keys() == theirs.keys()
        for name, value in theirs.items():
            assert mine[name] == pytest.approx(value, rel=1e-12, abs=1e-12)


def test_entities_are_bounded_least_recently_updated_first(redis_client: redis.Redis) -> None:
    store = _store(redis_client, last_n=5, max_entities=10)
    for batch in range(5):
        store.update_and_get([(f"user-{batch * 10 + i}", float(batch), {"amount": 1}) for i in range(10)])
        assert store.size() <= 10
    assert store.size() == 10
    assert store.evicted_total == 40
    assert store.update_and_get([("user-49", 9.0, {})])[0]["entity_count_total"] == 1.0, "recent one kept"
    assert store.update_and_get([("user-0", 9.0, {})])[0]["entity_count_total"] == 0.0, "oldest one evicted"


def test_history_per_entity_is_bounded(redis_client: redis.Redis) -> None:
    store = _store(redis_client, last_seconds=1_000.0, max_history=5)
    out = store.update_and_get([("a", float(i), {"amount": i}) for i in range(20)])
    assert out[-1]["entity_count"] == 5.0, "the time window is capped by max_history"
    assert out[-1]["entity_count_total"] == 19.0
    assert out[-1]["entity_amount_min"] == 14.0
    later = store.update_and_get([("a", 20.0, {"amount": 20})])[0]
    assert later["entity_count"] == 5.0 and later["entity_amount_min"] == 15.0, "same cap across batches"


def test_replayed_events_get_the_same_answers_and_are_not_applied_twice(redis_client: redis.Redis) -> None:
    store = _store(redis_client, last_n=3)
    events: list[EntityEvent] = [(f"k{i % 2}", float(i), {"amount": i * 1.5}) for i in range(10)]
    positions = [("events", 4, 100 + i) for i in range(10)]
    first = store.update_and_get(events, positions)
    replayed = store.update_and_get(events[3:], positions[3:])
    assert replayed == first[3:]
    nxt = store.update_and_get([("k0", 10.0, {"amount": 0})], [("events", 4, 110)])[0]
    assert nxt["entity_count_total"] == 5.0, "k0 had 5 events, each applied once"
    other_partition = store.update_and_get([("k0", 11.0, {"amount": 0})], [("events", 5, 0)])[0]
    assert other_partition["entity_count_total"] == 6.0, "offsets are tracked per partition"


def test_replay_beyond_the_kept_history_gets_no_features(redis_client: redis.Redis) -> None:
    store = _store(redis_client, last_n=2, max_history=4)
    events: list[EntityEvent] = [("a", float(i), {"amount": i}) for i in range(6)]
    positions = [("events", 0, i) for i in range(6)]
    first = store.update_and_get(events, positions)
    replayed = store.update_and_get(events, positions)
    assert replayed[:4] == [{}, {}, {}, {}], "their windows are gone: no features rather than wrong ones"
    assert replayed[4:] == first[4:]


def test_replay_with_a_time_window(redis_client: redis.Redis) -> None:
    store = _store(redis_client, last_seconds=5.0, max_history=3)
    events: list[EntityEvent] = [("a", 3.0 * i, {"amount": i}) for i in range(10)]
    positions = [("events", 0, i) for i in range(10)]
    first = store.update_and_get(events, positions)
    replayed = store.update_and_get(events, positions)
    assert replayed[-1] == first[-1] and replayed[-1]["entity_count"] == 1.0, "window (22, 27] is still kept"
    assert replayed[:-1] == [{}] * 9


def test_the_step_counts_evicted_entities(redis_client: redis.Redis) -> None:
    """``streamlearn_entity_evictions_total``: every entity dropped by the bound, counted once."""
    from prometheus_client import CollectorRegistry

    from shared.contract import Event
    from shared.monitoring.metrics import Metrics
    from shared.steps.batch import Batch, Record
    from shared.steps.entities import EntityFeaturesStep

    metrics = Metrics(CollectorRegistry())
    step = EntityFeaturesStep(_store(redis_client, last_n=5, max_entities=10), metrics)
    offset = 0
    for batch in range(5):
        records = []
        for i in range(10):
            event = Event(id=f"e-{offset}", key=f"user-{batch * 10 + i}", ts=float(batch), features={"amount": 1.0})
            records.append(Record("events", 0, offset, None, b"{}", 0, event=event, features={"amount": 1.0}))
            offset += 1
        step.process(Batch(records, 0.0))
    assert metrics.registry.get_sample_value("streamlearn_entity_evictions_total") == 40
    assert "entity_count_total" in records[-1].features  # type: ignore[operator]
