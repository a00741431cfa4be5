"""The batched drift step and data-drift windows against the per-event implementation they replaced.

``tests/unit/reference/`` holds the modules as they were before (``data_drift.py``, and ``drift_step.py``, the old
``DriftStep``). On seeded streams of several thousand events the windows, scores, detections (model, offset,
reaction) and exported gauges must be the same.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shared.contract import Event
from shared.learners.base import Output, Task
from shared.learners.registry import build_learner
from shared.monitoring import data_drift
from shared.monitoring.metrics import Metrics
from shared.settings import ChampionSettings, DataDriftSettings, DriftSettings, ModelSettings, PreprocessingSettings
from shared.steps.batch import Batch, Record
from shared.steps.champion import ChampionSelector
from shared.steps.drift import DriftStep
from shared.steps.models import ModelStep
from tests.unit.reference import data_drift as reference
from tests.unit.reference.drift_step import DriftStep as ReferenceDriftStep

TP = ("events", 0)
MODELS = [ModelSettings(name="a", estimator="river.linear_model.LogisticRegression"),
          ModelSettings(name="b", estimator="river.linear_model.LogisticRegression")]


def _value(rng: random.Random, kind: str) -> Any:
    roll = rng.random()
    if roll < 0.03:
        return None
    if roll < 0.04:
        return rng.choice([float("nan"), float("inf"), -float("inf")])
    if kind == "float":
        return rng.gauss(0, 1)
    if kind == "int":
        return rng.randint(0, 5)
    if kind == "bool":
        return rng.random() < 0.3
    if kind == "str":
        return rng.choice(["u", "v", "w"])
    if kind == "mixed":
        return rng.choice([rng.gauss(0, 1), rng.randint(0, 3), "s", True])
    return rng.choice(["x", "y", "z", True, False, 1])


def _features(rng: random.Random, n_names: int) -> dict[str, Any]:
    kinds = ["float", "int", "mixed", "cat", "bool", "str"]
    features = {f"f{j}": _value(rng, kinds[j % 6] if j < 12 else "float") for j in range(n_names)}
    if rng.random() < 0.1:  # some events lack a feature, some bring a new one
        features.pop(f"f{rng.randrange(n_names)}", None)
    if rng.random() < 0.01:
        features[f"late{rng.randrange(20)}"] = 1.5
    return features


@pytest.mark.parametrize(("max_features", "refresh_every", "reference_size"),
                         [(100, None, 300), (12, None, 300), (100, 250, 300), (100, 2, 7), (5, 700, 100)])
def test_data_drift_monitor_per_batch_equals_per_event(
    max_features: int, refresh_every: int | None, reference_size: int
) -> None:
    rng = random.Random(f"{max_features}-{refresh_every}")
    new = data_drift.DataDriftMonitor(reference_size, 400, max_features, 10, refresh_every=refresh_every)
    old = reference.DataDriftMonitor(reference_size, 400, max_features, 10, refresh_every=refresh_every)
    total = 0
    while total < 6000:
        k = rng.choice([0, 1, 10, 500, 1200])
        batch = [_features(rng, 14) for _ in range(k)]
        total += k
        new.update_many(batch)
        for features in batch:
            old.update(features)
        assert new.tracked_features == old.tracked_features
        assert new.untracked_values == old.untracked_values
        assert new.kinds() == old.kinds()
        assert new.stored_values() == old.stored_values()
        assert new.scores() == old.scores()
        for name in old.tracked_features:
            a, b = new._variables[name], old._variables[name]
            assert (a.reference, list(a.recent), a.ignored) == (b.reference, list(b.recent), b.ignored)


def test_distribution_drift_per_batch_equals_per_event() -> None:
    rng = random.Random(5)
    new = data_drift.DistributionDrift(200, 300, refresh_every=450)
    old = reference.DistributionDrift(200, 300, refresh_every=450)
    for _ in range(40):
        kind = rng.choice(["float", "int", "bool", "str", "mixed"])
        values = [_value(rng, kind) for _ in range(rng.choice([0, 3, 250]))]
        new.update_many(values)
        for value in values:
            old.update(value)
        assert new.scores() == old.scores()
        assert new.stored_values() == old.stored_values()


def _stream(n: int, seed: int) -> list[Record]:
    """Labelled and unlabelled events; model ``a`` gets worse at a third of the stream, ``b`` at two thirds."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        record = Record(topic=TP[0], partition=TP[1], offset=i, key=None, value=b"", timestamp_ms=0)
        label = rng.random() < 0.5 if rng.random() < 0.9 else None
        features = {"x": rng.gauss(0 if i < n // 2 else 1, 1), "c": rng.choice(["u", "v"]), "k": rng.randint(0, 3)}
        record.event = Event(id=f"e{i}", features=features, label=label)
        if rng.random() < 0.02:
            record.duplicate = True
        record.features = dict(features)
        a_right = rng.random() < (0.9 if i < n // 3 else 0.4)
        b_right = rng.random() < (0.9 if i < 2 * n // 3 else 0.3)
        truth = bool(label)
        record.outputs = {"a": Output(truth if a_right else not truth), "b": Output(truth if b_right else not truth)}
        records.append(record)
    return records


class _Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _make(cls: Any, settings: DriftSettings) -> tuple[Any, Metrics, ChampionSelector]:
    metrics = Metrics(CollectorRegistry())
    model_step = ModelStep(MODELS, lambda m: build_learner(m, PreprocessingSettings(), 0))
    model_step.assign(TP)
    champion = ChampionSelector(["a", "b"], ChampionSettings.model_validate({}))
    clock = _Clock()
    step = cls(settings, metrics, model_step, {"a": Task.BINARY, "b": Task.BINARY}, champion,
               lambda metric: {"a": 0.5, "b": 0.7}, "accuracy", clock=clock, monotonic=clock)
    return step, metrics, champion


@pytest.mark.parametrize("reaction", ["none", "reset", "promote"])
@pytest.mark.parametrize("detector", ["adwin", "page_hinkley", "ddm"])
def test_drift_step_per_batch_equals_per_event(reaction: str, detector: str) -> None:
    settings = DriftSettings(detector=detector, reaction=reaction,
                             data=DataDriftSettings(reference_size=500, recent_size=500))
    new, new_metrics, new_champion = _make(DriftStep, settings)
    old, old_metrics, old_champion = _make(ReferenceDriftStep, settings)
    records = _stream(6000, seed=17)
    rng = random.Random(reaction + detector)
    start = 0
    while start < len(records):
        k = rng.choice([1, 50, 500])
        batch = records[start:start + k]
        start += k
        new.process(Batch(batch, 0.0))
        old.process(Batch(batch, 0.0))
        assert [(d.model, d.offset, d.reaction) for d in new.detections] == \
            [(d.model, d.offset, d.reaction) for d in old.detections]
        assert new_champion.current == old_champion.current
    assert len(old.detections) > 0
    new.export(force=True)
    old.export(force=True)
    assert new.data is not None and old.data is not None
    assert new.data.scores() == old.data.scores()
    for monitor in (new.label_drift, new.prediction_drift):
        assert monitor is not None
    assert new.label_drift.scores() == old.label_drift.scores()  # type: ignore[union-attr]
    assert new.prediction_drift.scores() == old.prediction_drift.scores()  # type: ignore[union-attr]
    samples = [(s.name, tuple(sorted(s.labels.items())), s.value)
               for m in (new_metrics, old_metrics) for metric in m.registry.collect() for s in metric.samples
               if ("drift" in s.name or "champion" in s.name) and not s.name.endswith("_created")]
    half = len(samples) // 2
    assert sorted(samples[:half]) == sorted(samples[half:])
