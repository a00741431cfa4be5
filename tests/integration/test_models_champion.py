"""Issue 3, acceptance 5: after an abrupt drift a challenger becomes better, the champion switches (once), and
the records on ``predictions`` follow it; the old champion's predictions move to ``predictions.shadow``."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.replayer import replay
from shared.kafka.admin import ensure_topics
from tests.integration.helpers import make_settings, read_topic, running_worker, sample_value, wait_for

pytestmark = pytest.mark.integration

SEED = 5
N = 3000
DRIFT_AT = 1500
#: GaussianNB's running class statistics follow the inverted label slowly (it is as good or better before the
#: drift); ARF's drift detectors replace its trees by background ones within a few hundred events
MODELS = [
    {"name": "nb", "estimator": "river.naive_bayes.GaussianNB", "task": "binary"},
    {"name": "arf", "estimator": "river.forest.ARFClassifier", "task": "binary", "params": {"n_models": 5}},
]


@pytest.mark.parametrize("scope", ["worker", "group"])
def test_challenger_takes_over_after_drift_and_predictions_follow(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], scope: str
) -> None:
    # group scope: the scores go through Redis (one worker: the group's window is its own, in label buckets)
    settings = make_settings(
        kafka_bootstrap, unique_name, models=MODELS, redis_url=redis_url if scope == "group" else None,
        champion={"metric": "accuracy", "margin": 0.05, "min_labels": 300, "scope": scope},
        metrics={"rolling_window": 300},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    replay("label-flip", bootstrap_servers=kafka_bootstrap, topic=t.events, limit=N, seed=SEED,
           drift_at=DRIFT_AT, progress=False)
    registry = CollectorRegistry()
    with running_worker(settings, registry) as worker:
        assert worker.champion == "nb", "the first model starts as champion"
        wait_for(lambda: sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == N,
                 120, f"{N} valid events")
        assert worker.champion == "arf"

    assert sample_value(registry, "streamlearn_champion_switches_total") == 1
    assert sample_value(registry, "streamlearn_champion", {"model": "arf"}) == 1
    assert sample_value(registry, "streamlearn_champion", {"model": "nb"}) == 0

    def index(payload: dict) -> int:
        return int(payload["id"].rsplit("-", 1)[1])

    champion_records = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, t.predictions, N)]
    shadow_records = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, t.shadow_predictions, N)]
    assert sorted(index(p) for p in champion_records) == list(range(N)), "one champion prediction per event"
    assert sorted(index(p) for p in shadow_records) == list(range(N)), "one shadow prediction per event"

    champion_by_event = [p["model"] for p in sorted(champion_records, key=index)]
    switch_at = champion_by_event.index("arf")
    print(f"label-flip seed={SEED} drift_at={DRIFT_AT} ({scope} scope): champion switched nb -> arf at event "
          f"{switch_at}")
    assert champion_by_event == ["nb"] * switch_at + ["arf"] * (N - switch_at), "one switch, and records follow it"
    assert DRIFT_AT < switch_at < DRIFT_AT + 600, "the switch follows the drift"
    shadow_by_event = [p["model"] for p in sorted(shadow_records, key=index)]
    assert shadow_by_event == ["arf"] * switch_at + ["nb"] * (N - switch_at), "the other model goes to shadow"
