"""The drift step: detections counted and stamped, reactions (none, reset, promote), data-drift gauges."""

from __future__ import annotations

import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shared.contract import Event
from shared.learners.base import Output, Task
from shared.learners.registry import build_learner
from shared.monitoring.metrics import Metrics
from shared.settings import ChampionSettings, DataDriftSettings, DriftSettings, ModelSettings, PreprocessingSettings
from shared.steps.batch import Batch, Record
from shared.steps.champion import ChampionSelector
from shared.steps.drift import DriftStep, prediction_error
from shared.steps.models import ModelStep
from shared.steps.score import FOLD_RECORDS

TP = ("events", 0)
MODELS = [ModelSettings(name="a", estimator="river.linear_model.LogisticRegression"),
          ModelSettings(name="b", estimator="river.linear_model.LogisticRegression")]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _model_step() -> ModelStep:
    step = ModelStep(MODELS, lambda m: build_learner(m, PreprocessingSettings(), 0))
    step.assign(TP)
    return step


def _step(settings: DriftSettings, *, rolling: dict[str, float] | None = None,
          tasks: dict[str, Task] | None = None) -> tuple[DriftStep, Metrics, ModelStep, ChampionSelector, FakeClock]:
    metrics = Metrics(CollectorRegistry())
    model_step = _model_step()
    champion = ChampionSelector(["a", "b"], ChampionSettings.model_validate({}))
    clock = FakeClock()
    step = DriftStep(settings, metrics, model_step, tasks or {"a": Task.BINARY, "b": Task.BINARY}, champion,
                     lambda metric: dict(rolling or {}), "accuracy", clock=clock, monotonic=clock)
    return step, metrics, model_step, champion, clock


def _record(offset: int, features: dict[str, Any], label: Any, predictions: dict[str, Any]) -> Record:
    record = Record(topic=TP[0], partition=TP[1], offset=offset, key=None, value=b"", timestamp_ms=0)
    record.event = Event(id=f"e{offset}", features=features, label=label)
    record.features = dict(features)
    record.outputs = {name: Output(prediction) for name, prediction in predictions.items()}
    return record


def _errors_stream(n: int, drift_at: int, seed: int = 1, before: float = 0.9, after: float = 0.4) -> list[Record]:
    """Model ``a`` is right ``before`` of the time, then ``after`` from ``drift_at``; ``b`` stays at 90%."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        label = rng.random() < 0.5
        a_right = rng.random() < (before if i < drift_at else after)
        b_right = rng.random() < 0.9
        records.append(_record(i, {"x": rng.gauss(0, 1)}, label,
                               {"a": label if a_right else not label, "b": label if b_right else not label}))
    return records


def _feed(step: DriftStep, records: list[Record], batch_size: int = 100) -> None:
    for start in range(0, len(records), batch_size):
        step.process(Batch(records=records[start:start + batch_size], polled_at=0.0))


def _detections(metrics: Metrics, model: str, detector: str = "adwin") -> float:
    value = metrics.registry.get_sample_value("streamlearn_drift_detections_total",
                                              {"model": model, "detector": detector})
    assert value is not None
    return value


def test_prediction_error_per_task() -> None:
    assert prediction_error(Task.BINARY, Output(True), True) == 0.0
    assert prediction_error(Task.MULTICLASS, Output("x"), "y") == 1.0
    assert prediction_error(Task.REGRESSION, Output(2.5), 1.0) == 1.5
    assert prediction_error(Task.BINARY, Output(None), True) is None
    assert prediction_error(Task.ANOMALY, Output(None, score=0.3), True) is None


def test_a_rise_in_error_is_detected_counted_and_stamped_without_reaction() -> None:
    step, metrics, model_step, champion, clock = _step(DriftSettings())
    assert _detections(metrics, "a") == 0.0 and _detections(metrics, "b") == 0.0, "counters exist from the start"
    records = _errors_stream(4000, drift_at=2000)
    _feed(step, records[:2000])
    assert _detections(metrics, "a") == 0.0, "no drift before the drift point"
    clock.now = 2_000.0
    learner = model_step.sets[TP].learners["a"]
    _feed(step, records[2000:])
    assert _detections(metrics, "a") >= 1
    assert _detections(metrics, "b") == 0.0, "the model whose error did not rise"
    first = step.detections[0]
    assert first.model == "a" and first.reaction == "none" and first.detector == "adwin"
    assert 2000 <= first.offset < 2300, first
    assert metrics.registry.get_sample_value("streamlearn_last_drift_timestamp_seconds",
                                             {"model": "a", "detector": "adwin"}) == 2_000.0
    assert model_step.sets[TP].learners["a"] is learner, "reaction none keeps the model"
    assert champion.current == "a"
    assert metrics.registry.get_sample_value("streamlearn_drift_reactions_total",
                                             {"model": "a", "reaction": "reset"}) is None


def test_a_fall_in_error_is_not_a_drift() -> None:
    step, metrics, *_ = _step(DriftSettings())
    _feed(step, _errors_stream(4000, drift_at=2000, before=0.4, after=0.9))
    assert _detections(metrics, "a") == 0.0
    assert sum(m.ignored_drops for m in step.monitors().values()) >= 1, "ADWIN saw the change, and it was dropped"


def test_reset_reaction_replaces_the_model_with_an_untrained_clone() -> None:
    step, metrics, model_step, _, _ = _step(DriftSettings(reaction="reset"))
    learner = model_step.sets[TP].learners["a"]
    _feed(step, _errors_stream(4000, drift_at=2000))
    assert step.detections and step.detections[0].reaction == "reset"
    replaced = model_step.sets[TP].learners["a"]
    assert replaced is not learner and type(replaced) is type(learner)
    assert model_step.sets[TP].learners["b"] is not None
    assert metrics.registry.get_sample_value("streamlearn_drift_reactions_total",
                                             {"model": "a", "reaction": "reset"}) == len(step.detections)


def test_promote_reaction_hands_the_champion_to_the_best_challenger() -> None:
    step, metrics, _, champion, _ = _step(DriftSettings(reaction="promote"), rolling={"a": 0.6, "b": 0.9})
    _feed(step, _errors_stream(4000, drift_at=2000))
    assert champion.current == "b"
    assert step.detections[0].reaction == "promote"
    assert metrics.registry.get_sample_value("streamlearn_drift_reactions_total",
                                             {"model": "a", "reaction": "promote"}) == 1.0
    assert metrics.registry.get_sample_value("streamlearn_champion", {"model": "b"}) == 1.0
    assert metrics.registry.get_sample_value("streamlearn_champion", {"model": "a"}) == 0.0
    assert metrics.registry.get_sample_value("streamlearn_champion_switches_total") == 1.0


def test_selectable_detectors_and_a_binary_detector_refused_for_regression() -> None:
    for detector in ("page_hinkley", "hddm_a", "ddm", "kswin"):
        step, *_ = _step(DriftSettings(detector=detector))
        _feed(step, _errors_stream(1000, drift_at=500))
        assert all(key[1] in {"a", "b"} and m.name == detector for key, m in step.monitors().items())
    with pytest.raises(ValueError, match="0/1 errors"):
        _step(DriftSettings(detector="ddm"), tasks={"a": Task.REGRESSION, "b": Task.BINARY})
    with pytest.raises(ValueError, match="contradicts rise_only"):
        _step(DriftSettings(detector="page_hinkley", params={"mode": "both"}))


def test_data_drift_gauges_rise_on_the_drifted_features_only_and_keep_top_k() -> None:
    settings = DriftSettings(export_interval_s=0.0,
                             data=DataDriftSettings(reference_size=500, recent_size=500, top_k=2))
    step, metrics, *_ = _step(settings)
    rng = random.Random(3)
    records = []
    for i in range(1500):
        shifted = i >= 1000
        features = {"moved": rng.gauss(2.0 if shifted else 0.0, 1.0), "still": rng.gauss(0.0, 1.0),
                    "colour": rng.choice(["red", "blue"] if shifted else ["red", "green", "blue"]),
                    "calm": rng.choice(["x", "y"])}
        label = rng.random() < (0.8 if shifted else 0.5)
        records.append(_record(i, features, label, {"a": label, "b": label}))
    _feed(step, records)

    def gauge(feature: str, statistic: str = "psi") -> float | None:
        return metrics.registry.get_sample_value("streamlearn_feature_drift",
                                                 {"feature": feature, "statistic": statistic})

    assert (gauge("moved") or 0) > 1.0 and (gauge("moved", "ks") or 0) > 0.5
    assert (gauge("colour") or 0) > 0.25
    assert gauge("still") is None and gauge("calm") is None, "only the top 2 are exported"
    scores = step.data.scores() if step.data else {}
    assert scores[("still", "psi")] < 0.1 and scores[("calm", "psi")] < 0.1
    label_psi = metrics.registry.get_sample_value("streamlearn_distribution_drift",
                                                  {"distribution": "label", "statistic": "psi"})
    prediction_psi = metrics.registry.get_sample_value("streamlearn_distribution_drift",
                                                       {"distribution": "prediction", "statistic": "psi"})
    assert label_psi is not None and label_psi > 0.1
    assert prediction_psi is not None and prediction_psi > 0.1


def test_disabled_drift_does_nothing() -> None:
    step, metrics, *_ = _step(DriftSettings(enabled=False))
    _feed(step, _errors_stream(4000, drift_at=2000))
    assert _detections(metrics, "a") == 0.0 and not step.detections


def test_features_of_small_batches_go_to_the_drift_windows_together_with_the_same_scores() -> None:
    """The feature windows take the features of several small batches at once (``FOLD_RECORDS``, or a read of
    ``data``, or an export that is due): the windows and scores are those of adding each batch as it came."""
    settings = DriftSettings(export_interval_s=60.0, data=DataDriftSettings(reference_size=200, recent_size=200))
    kept, metrics, *_ = _step(settings)
    each, *_ = _step(settings)
    rng = random.Random(5)
    records = [_record(i, {"x": rng.gauss(0.0 if i < 300 else 3.0, 1.0), "c": rng.choice("pqr")}, None, {})
               for i in range(FOLD_RECORDS + 300)]
    kept.process(Batch(records=records[:1], polled_at=0.0))  # the first export is due at once
    assert metrics.registry.get_sample_value("streamlearn_feature_drift", {"feature": "x", "statistic": "psi"}) \
        is None, "not ready after one event"
    for record in records[1:]:
        kept.process(Batch(records=[record], polled_at=0.0))
    assert kept._data is not None and kept._data.scores() != {}, "folded by count before any read"
    in_gauge = metrics.registry.get_sample_value("streamlearn_kept_records", {"step": "drift"})
    assert in_gauge == (len(records) - 1) % FOLD_RECORDS, "the features kept since the last fold"
    assert kept.data is not None
    assert metrics.registry.get_sample_value("streamlearn_kept_records", {"step": "drift"}) == 0, "a read folds"
    _feed(each, records, batch_size=1)
    assert each.data is not None and kept.data is not None
    assert kept.data.scores() == each.data.scores()
    assert kept.data.scores()[("x", "psi")] > 1.0
