"""The batched model path is prequential: a learner's ``process`` over a batch equals predict-then-learn one by one."""

from __future__ import annotations

from typing import Any

import pytest

from shared.datasets import iter_source
from shared.learners.base import Row
from shared.learners.registry import build_learner
from shared.settings import ModelSettings, PreprocessingSettings


@pytest.mark.parametrize(("source", "estimator", "params"), [
    ("phishing", "river.linear_model.LogisticRegression", {}),
    ("phishing", "river.forest.ARFClassifier", {"n_models": 3}),
    ("friedman", "river.forest.ARFRegressor", {"n_models": 3}),
    ("segment", "river.tree.HoeffdingTreeClassifier", {}),
    ("friedman", "river.linear_model.LinearRegression", {}),
    ("phishing", "river.anomaly.HalfSpaceTrees", {}),
])
def test_river_batch_process_equals_one_at_a_time(source: str, estimator: str, params: dict[str, Any]) -> None:
    model = ModelSettings(name="m", estimator=estimator, params=params)
    batched, single = (build_learner(model, PreprocessingSettings(), 42) for _ in range(2))
    samples = list(iter_source(source, seed=5, limit=600))
    rows = [Row(dict(s.features)) for s in samples]
    targets: list[Any] = [None if i % 7 == 3 else s.label for i, s in enumerate(samples)]
    before = [dict(r.features) for r in rows]
    outputs = []
    for start in range(0, len(rows), 250):  # batches that do not divide the stream evenly
        outputs += batched.process(rows[start:start + 250], targets[start:start + 250])
    expected = []
    for row, target in zip(rows, targets, strict=True):
        expected.append(single.predict_one(row))
        if target is not None or single.task.value == "anomaly":
            single.learn_one(row, target)
    assert outputs == expected
    assert [r.features for r in rows] == before, "the caller's features are not mutated"


@pytest.mark.parametrize(("source", "forest_class", "tree_class", "method"), [
    ("phishing", "ARFClassifier", "BaseTreeClassifier", "predict_proba_one"),
    ("friedman", "ARFRegressor", "BaseTreeRegressor", "predict_one"),
])
def test_forest_learn_reuses_the_tree_predictions_of_its_prediction(
    monkeypatch: pytest.MonkeyPatch, source: str, forest_class: str, tree_class: str, method: str,
) -> None:
    """Each tree predicts an event once in ``process`` (River's loop: twice), with River's own outputs."""
    from river import forest
    from river.forest import adaptive_random_forest as arf

    from shared.learners.base import Task
    from shared.learners.river_learner import RiverLearner

    calls = [0]
    original = getattr(getattr(arf, tree_class), method)

    def counted(self: Any, x: dict[str, Any], **kwargs: Any) -> Any:
        calls[0] += 1
        return original(self, x, **kwargs)

    monkeypatch.setattr(getattr(arf, tree_class), method, counted)
    task = Task.REGRESSION if forest_class == "ARFRegressor" else Task.BINARY
    samples = list(iter_source(source, seed=3, limit=300))
    rows = [Row(dict(s.features)) for s in samples]
    targets = [s.label for s in samples]

    def learner() -> RiverLearner:
        from river import compose

        return RiverLearner(compose.Pipeline(getattr(forest, forest_class)(n_models=3, seed=1)), task, forest_class)

    reused, plain = learner(), learner()
    outputs = reused.process(rows, targets)
    reused_calls, calls[0] = calls[0], 0
    expected = []
    for row, target in zip(rows, targets, strict=True):
        expected.append(plain.predict_one(row))
        plain.learn_one(row, target)
    assert outputs == expected
    assert calls[0] >= 2 * 3 * (len(rows) - 1), "River's own loop predicts every tree twice per event"
    assert reused_calls <= 3 * len(rows), "process predicts every tree once per event"
    trees = list(reused.pipeline[-1].data)
    assert all(method not in vars(tree) for tree in trees), "no remembered prediction outlives the step"
    assert type(reused).restore(reused.snapshot()).predict_one(rows[0]) == reused.predict_one(rows[0])


def test_forest_predicts_again_when_preprocessing_changes_the_input_before_learning() -> None:
    """A scaler learns before it transforms in ``learn_one``: the trees see other values and predict again."""
    from river import compose, forest, preprocessing

    from shared.learners.base import Task
    from shared.learners.river_learner import RiverLearner

    samples = list(iter_source("friedman", seed=4, limit=300))
    rows = [Row(dict(s.features)) for s in samples]
    targets = [s.label for s in samples]

    def learner() -> RiverLearner:
        pipeline = compose.Pipeline(preprocessing.StandardScaler(), forest.ARFRegressor(n_models=3, seed=2))
        return RiverLearner(pipeline, Task.REGRESSION, "ARFRegressor")

    reused, plain = learner(), learner()
    expected = []
    for row, target in zip(rows, targets, strict=True):
        expected.append(plain.predict_one(row))
        plain.learn_one(row, target)
    assert reused.process(rows, targets) == expected


def test_model_memory_is_walked_at_most_every_interval_or_when_the_models_change() -> None:
    from shared.steps.models import MEMORY_INTERVAL_S, ModelStep

    now = [0.0]
    calls = []
    settings = [ModelSettings(name="m", estimator="river.linear_model.LogisticRegression")]

    def factory(model: ModelSettings) -> Any:
        learner = build_learner(model, PreprocessingSettings(), 1)
        walk = learner.memory_bytes

        def counted() -> int:
            calls.append(1)
            return walk()

        learner.memory_bytes = counted  # type: ignore[method-assign]
        return learner

    step = ModelStep(settings, factory, monotonic=lambda: now[0])
    step.assign(("events", 0))
    first = step.memory_bytes()
    assert first["m"] > 0 and len(calls) == 1
    now[0] += MEMORY_INTERVAL_S / 2
    assert step.memory_bytes() == first and len(calls) == 1, "reused within the interval"
    step.assign(("events", 1))
    assert step.memory_bytes()["m"] > first["m"] and len(calls) == 3, "a new partition's models: walked again"
    now[0] += MEMORY_INTERVAL_S
    step.memory_bytes()
    assert len(calls) == 5, "after the interval: walked again"


def test_publish_payload_names_classes_and_versions_as_of_each_prediction() -> None:
    import orjson
    from prometheus_client import CollectorRegistry

    from shared.contract import Event
    from shared.learners.base import Output
    from shared.monitoring.metrics import Metrics
    from shared.settings import TopicSettings
    from shared.steps.batch import Batch, Record
    from shared.steps.models import ModelStep
    from shared.steps.publish import PublishStep

    models = ModelStep([ModelSettings(name="a", estimator="river.linear_model.LogisticRegression"),
                        ModelSettings(name="b", estimator="river.linear_model.LogisticRegression")],
                       lambda m: build_learner(m, PreprocessingSettings(), 1))
    models.assign(("events", 0))
    sent: list[tuple[str, bytes, bytes | None]] = []
    publish = PublishStep(lambda topic, value, key, headers: sent.append((topic, value, key)), TopicSettings(),
                          models, lambda: "a", Metrics(CollectorRegistry()))
    records = []
    for i, (proba, learned) in enumerate([({True: 0.25, False: 0.75}, 3), ({1: 0.5, 2: 0.5}, 4)]):
        record = Record("events", 0, i, None, b"{}", 1_700_000_000_000,
                        event=Event(id=f"e{i}", key="k" if i else None, features={}))
        record.outputs = {"a": Output(max(proba, key=proba.__getitem__), proba), "b": Output(1.5)}
        record.learned_before = {"a": learned, "b": learned + 10}
        records.append(record)
    publish.process(Batch(records, polled_at=1_700_000_000.0))
    payloads = [(topic, orjson.loads(value), key) for topic, value, key in sent]
    topics = TopicSettings()
    assert [(t, p["id"], p["model"], p["model_version"].split(".")[1], k) for t, p, k in payloads] == [
        (topics.predictions, "e0", "a", "3", b"e0"), (topics.shadow_predictions, "e0", "b", "13", b"e0"),
        (topics.predictions, "e1", "a", "4", b"k"), (topics.shadow_predictions, "e1", "b", "14", b"k"),
    ]
    assert payloads[0][1]["proba"] == {"true": 0.25, "false": 0.75} and payloads[0][1]["prediction"] is False
    assert payloads[2][1]["proba"] == {"1": 0.5, "2": 0.5} and payloads[2][1]["prediction"] == 1
    assert payloads[1][1]["proba"] is None and payloads[1][1]["prediction"] == 1.5
    assert all(p["latency_ms"] >= 0 and p["score"] is None for _, p, _ in payloads)
