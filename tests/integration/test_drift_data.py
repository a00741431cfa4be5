"""Issue 5, acceptance 3: through Kafka and the worker, data-drift gauges rise on the features that drifted
(one numeric, one categorical) and stay low on the others; the label and prediction distributions drift too."""

from __future__ import annotations

import random
from collections.abc import Callable

import orjson
import pytest
from prometheus_client import CollectorRegistry

from shared.kafka.admin import ensure_topics
from tests.integration.helpers import make_settings, produce, running_worker, sample_value, wait_for

pytestmark = pytest.mark.integration

N_EVENTS = 3000
SHIFT_AT = 1500
WINDOW = 1000
DRIFTED = ("amount", "channel")
STABLE = ("age", "noise", "country")


def _events(seed: int) -> list[tuple[bytes | None, bytes | None]]:
    """``amount`` moves from N(0, 1) to N(1.5, 1) and ``channel`` from web/app/store to mostly app at SHIFT_AT."""
    rng = random.Random(seed)
    items: list[tuple[bytes | None, bytes | None]] = []
    for i in range(N_EVENTS):
        shifted = i >= SHIFT_AT
        amount = rng.gauss(1.5 if shifted else 0.0, 1.0)
        features = {
            "amount": round(amount, 6),
            "age": round(rng.uniform(18, 90), 3),
            "noise": round(rng.gauss(0.0, 1.0), 6),
            "channel": rng.choices(["web", "app", "store"], weights=[1, 8, 1] if shifted else [1, 1, 1])[0],
            "country": rng.choice(["fr", "de", "it", "es"]),
        }
        event = {"id": f"e-{i}", "features": features, "label": amount > 0.0}
        items.append((f"e-{i}".encode(), orjson.dumps(event)))
    return items


def test_feature_drift_gauges_rise_on_the_drifted_features_and_stay_low_on_the_others(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    settings = make_settings(
        kafka_bootstrap, unique_name,
        models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}],
        drift={"export_interval_s": 0.0, "data": {"reference_size": WINDOW, "recent_size": WINDOW, "top_k": 5}},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    produce(kafka_bootstrap, t.events, _events(seed=5))
    registry = CollectorRegistry()
    with running_worker(settings, registry):
        wait_for(lambda: sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == N_EVENTS,
                 90, f"{N_EVENTS} events processed")

    def gauge(feature: str, statistic: str = "psi") -> float:
        value = sample_value(registry, "streamlearn_feature_drift", {"feature": feature, "statistic": statistic})
        assert value is not None, f"no {statistic} gauge for {feature}"
        return value

    for feature in DRIFTED:
        assert gauge(feature) > 0.25, f"{feature} drifted: PSI {gauge(feature):.3f}"
    assert gauge("amount", "ks") > 0.3
    for feature in STABLE:
        assert gauge(feature) < 0.1, f"{feature} is stable: PSI {gauge(feature):.3f}"
    for feature in ("age", "noise"):
        assert gauge(feature, "ks") < 0.1
    drifted_min = min(gauge(f) for f in DRIFTED)
    stable_max = max(gauge(f) for f in STABLE)
    assert drifted_min > 5 * stable_max, "the drifted features stand well clear of the stable ones"

    label = sample_value(registry, "streamlearn_distribution_drift", {"distribution": "label", "statistic": "psi"})
    prediction = sample_value(registry, "streamlearn_distribution_drift",
                              {"distribution": "prediction", "statistic": "psi"})
    assert label is not None and label > 0.25
    assert prediction is not None and prediction > 0.25
