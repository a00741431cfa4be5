"""Issue 3 through the real stack (Kafka + worker): several models per stream, River and torch side by side.

* Phishing (binary): ARF >= 0.89, logistic regression >= 0.88, torch MLP >= 0.85, prequential accuracy
  recomputed from the records on ``predictions`` and ``predictions.shadow`` and checked against the gauges.
* Segment (multiclass, 7 classes) and Friedman (regression) end to end, with macro F1 / MAE, RMSE, R2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import torch
from prometheus_client import CollectorRegistry
from river import metrics

from services.replayer import replay
from shared.datasets import iter_source
from shared.kafka.admin import ensure_topics
from shared.settings import Settings
from tests.integration.helpers import make_settings, read_topic, running_worker, sample_value, wait_for

pytestmark = pytest.mark.integration

SEED = 7
PHISHING_MODELS: list[dict[str, Any]] = [
    {"name": "arf", "estimator": "river.forest.ARFClassifier", "task": "binary"},
    {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"},
    {"name": "mlp", "kind": "torch.mlp", "task": "binary"},
]
PHISHING_THRESHOLDS = {"arf": 0.89, "logreg": 0.88, "mlp": 0.85}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """The worker runs in this process: tiny networks are fastest on one thread on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _topics(bootstrap: str, settings: Settings) -> None:
    t = settings.kafka.topics
    ensure_topics(bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                              t.dead_letters: 1})


def run_through_kafka(
    bootstrap: str, unique_name: Callable[[str], str], source: str, n: int, models: list[dict[str, Any]],
    **overrides: Any,
) -> tuple[dict[str, list[Any]], list[Any], CollectorRegistry, Settings]:
    """Replay ``n`` events of ``source`` to a fresh topic, run one worker with ``models`` over them, and return
    each model's predictions (ordered by event), the labels, the worker's registry and its settings."""
    settings = make_settings(bootstrap, unique_name, models=models, **overrides)
    _topics(bootstrap, settings)
    stats = replay(source, bootstrap_servers=bootstrap, topic=settings.kafka.topics.events, limit=n, seed=SEED,
                   progress=False)
    assert stats.sent == n
    registry = CollectorRegistry()
    with running_worker(settings, registry):
        wait_for(lambda: sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == n,
                 150, f"{n} valid {source} events")
    names = [m["name"] for m in models]
    records = read_topic(bootstrap, settings.kafka.topics.predictions, n)
    records += read_topic(bootstrap, settings.kafka.topics.shadow_predictions, n * (len(names) - 1))
    by_model: dict[str, dict[str, Any]] = {name: {} for name in names}
    for record in records:
        payload = orjson.loads(record.value)
        assert payload["id"] not in by_model[payload["model"]], "one prediction per event and model"
        by_model[payload["model"]][payload["id"]] = payload["prediction"]
    ids = [f"{source}-{SEED}-{i:09d}" for i in range(n)]
    for name in names:
        assert set(by_model[name]) == set(ids), f"{name}: every event predicted once"
    labels = [s.label for s in iter_source(source, seed=SEED, limit=n)]
    return {name: [by_model[name][i] for i in ids] for name in names}, labels, registry, settings


def _gauge(registry: CollectorRegistry, model: str, metric: str, window: str = "cumulative") -> float | None:
    return sample_value(registry, "streamlearn_model_metric", {"model": model, "metric": metric, "window": window})


def _baseline(registry: CollectorRegistry, baseline: str, metric: str) -> float | None:
    return sample_value(registry, "streamlearn_baseline_metric",
                        {"baseline": baseline, "metric": metric, "window": "cumulative"})


def test_phishing_accuracy_of_river_and_torch_models_side_by_side(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    n = 1250  # the whole dataset, once
    predictions, labels, registry, _ = run_through_kafka(kafka_bootstrap, unique_name, "phishing", n,
                                                         PHISHING_MODELS)
    measured: dict[str, float] = {}
    for name, preds in predictions.items():
        accuracy = metrics.Accuracy()
        for y, p in zip(labels, preds, strict=True):
            if p is not None:  # as River's progressive_val_score: a model with no answer yet is not scored
                accuracy.update(y, p)
        measured[name] = accuracy.get()
        gauge = _gauge(registry, name, "accuracy")
        assert gauge is not None and math.isclose(gauge, measured[name], abs_tol=1e-9), (name, gauge)
    print("phishing prequential accuracy through Kafka:", {k: round(v, 4) for k, v in measured.items()},
          "no_change:", _baseline(registry, "no_change", "accuracy"),
          "majority:", _baseline(registry, "majority", "accuracy"))
    for name, threshold in PHISHING_THRESHOLDS.items():
        assert measured[name] >= threshold, f"{name}: {measured[name]:.4f} < {threshold}"
    majority = _baseline(registry, "majority", "accuracy")
    assert majority is not None and all(value > majority + 0.2 for value in measured.values())
    assert sample_value(registry, "streamlearn_model_memory_bytes", {"model": "arf"}) is not None


def test_multiclass_segment_through_kafka_reports_macro_f1(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    n = 1500
    models = [
        {"name": "hat", "estimator": "river.tree.HoeffdingAdaptiveTreeClassifier", "task": "multiclass"},
        {"name": "nb", "estimator": "river.naive_bayes.GaussianNB", "task": "multiclass"},
        {"name": "mlp", "kind": "torch.mlp", "task": "multiclass"},
    ]
    predictions, labels, registry, _ = run_through_kafka(kafka_bootstrap, unique_name, "segment", n, models)
    assert len(set(labels)) == 7
    majority = _baseline(registry, "majority", "accuracy")
    assert majority is not None and majority < 0.3
    for name, preds in predictions.items():
        accuracy, macro_f1 = metrics.Accuracy(), metrics.MacroF1()
        for y, p in zip(labels, preds, strict=True):
            if p is not None:
                accuracy.update(y, p)
                macro_f1.update(y, p)
        gauge_f1 = _gauge(registry, name, "f1")
        print(f"segment {name}: accuracy={accuracy.get():.4f} macro_f1={macro_f1.get():.4f} gauge_f1={gauge_f1}")
        assert gauge_f1 is not None and math.isclose(gauge_f1, macro_f1.get(), abs_tol=1e-9), name
        assert macro_f1.get() > 0.6 and accuracy.get() > majority + 0.4, name
        for metric in ("accuracy", "precision", "recall", "f1", "log_loss"):
            assert _gauge(registry, name, metric) is not None, (name, metric)
            assert _gauge(registry, name, metric, "rolling") is not None, (name, metric)


def test_regression_friedman_through_kafka_reports_mae_rmse_r2(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    n = 1500
    models = [
        {"name": "linreg", "estimator": "river.linear_model.LinearRegression"},
        {"name": "arf", "estimator": "river.forest.ARFRegressor", "params": {"n_models": 5}},
        {"name": "mlp", "kind": "torch.mlp", "task": "regression"},
    ]
    predictions, labels, registry, _ = run_through_kafka(
        kafka_bootstrap, unique_name, "friedman", n, models, champion={"metric": "mae"},
    )
    mean_mae = _baseline(registry, "mean", "mae")
    assert mean_mae is not None
    for name, preds in predictions.items():
        mae, rmse, r2 = metrics.MAE(), metrics.RMSE(), metrics.R2()
        for y, p in zip(labels, preds, strict=True):
            for metric in (mae, rmse, r2):
                metric.update(y, p)
        print(f"friedman {name}: mae={mae.get():.3f} rmse={rmse.get():.3f} r2={r2.get():.3f} "
              f"(mean baseline mae={mean_mae:.3f})")
        for metric_name, metric in (("mae", mae), ("rmse", rmse), ("r2", r2)):
            gauge = _gauge(registry, name, metric_name)
            assert gauge is not None and math.isclose(gauge, metric.get(), rel_tol=1e-6, abs_tol=1e-6), (
                name, metric_name, gauge, metric.get())
        assert mae.get() < 0.8 * mean_mae and r2.get() > 0.3, name
