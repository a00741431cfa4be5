"""The River adapter: exact River semantics, preprocessing, task inference, seeds, snapshot header checks."""

from __future__ import annotations

import json
import pickle
from collections.abc import Hashable
from typing import Any

import pytest
from river import datasets, evaluate, forest, linear_model, metrics, multiclass, optim, preprocessing

from shared.learners.base import Output, Row, SnapshotError, Task
from shared.learners.registry import LearnerConfigError
from shared.learners.river_learner import (
    FeatureCleaner,
    RiverLearner,
    UnitRangeScaler,
    build_river_pipeline,
)
from shared.settings import ModelSettings, PreprocessingSettings

LOGREG = "river.linear_model.LogisticRegression"
SCALE_ONLY = PreprocessingSettings(scale_numbers=True, one_hot_categories=False, impute_missing=False)
ALL_ON = PreprocessingSettings()
NOTHING = PreprocessingSettings(scale_numbers=False, one_hot_categories=False, impute_missing=False)


def _learner(
    estimator: str,
    task: Task | None = None,
    preprocessing_settings: PreprocessingSettings = ALL_ON,
    build_seed: int = 1,
    **params: object,
) -> RiverLearner:
    model = ModelSettings(name="m", estimator=estimator, params=params, task=task)
    return RiverLearner.from_settings(model, preprocessing_settings, build_seed)


@pytest.mark.parametrize("settings", [SCALE_ONLY, ALL_ON], ids=["scale-only", "all-on"])
def test_pipeline_behaves_exactly_like_standard_scaler_logreg_on_phishing(settings: PreprocessingSettings) -> None:
    ours = build_river_pipeline(LOGREG, {}, settings, seed=42)
    plain = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    compared = 0
    for x, y in datasets.Phishing():
        assert ours.predict_proba_one(x) == plain.predict_proba_one(x)
        assert ours.predict_one(x) == plain.predict_one(x)
        ours.learn_one(x, y)
        plain.learn_one(x, y)
        compared += 1
    assert compared == 1250


def test_learner_reproduces_progressive_val_score_on_phishing() -> None:
    samples = list(datasets.Phishing())
    reference = build_river_pipeline(LOGREG, {}, ALL_ON, seed=42)
    expected = [
        step["Prediction"]
        for step in evaluate.iter_progressive_val_score(
            dataset=samples, model=reference, metric=metrics.Accuracy(), step=1, yield_predictions=True
        )
    ]
    learner = _learner(LOGREG, build_seed=42)
    outputs = learner.process([Row(x) for x, _ in samples], [y for _, y in samples])
    assert [o.prediction for o in outputs] == expected


def test_bools_become_numbers_and_missing_values_take_the_running_mean() -> None:
    cleaner = FeatureCleaner(impute_missing=True)
    learned: list[dict[Hashable, Any]] = [{"a": 1.0, "flag": True}, {"a": 3.0, "flag": False}]
    for x in learned:
        cleaner.learn_one(x)
    assert cleaner.transform_one({"a": None, "flag": None, "new": None, "s": "x"}) == {"a": 2.0, "flag": 0.5, "s": "x"}
    assert cleaner.transform_one({"flag": True}) == {"flag": 1.0}


def test_missing_values_are_dropped_without_imputation() -> None:
    cleaner = FeatureCleaner(impute_missing=False)
    cleaner.learn_one({"a": 1.0})
    assert cleaner.transform_one({"a": None, "b": 2}) == {"b": 2}
    assert cleaner.means == {}


def test_strings_are_one_hot_encoded_and_numbers_scaled() -> None:
    pipeline = build_river_pipeline(LOGREG, {}, ALL_ON, seed=1)
    for x in ({"n": 1.0, "color": "red"}, {"n": 3.0, "color": "blue"}):
        pipeline.learn_one(x, True)
    assert pipeline.transform_one({"n": 2.0, "color": "green"}) == {"n": 0.0, "color_green": 1}


def test_without_one_hot_strings_reach_the_estimator_unchanged() -> None:
    settings = PreprocessingSettings(scale_numbers=True, one_hot_categories=False, impute_missing=True)
    pipeline = build_river_pipeline("river.tree.HoeffdingTreeClassifier", {}, settings, seed=1)
    pipeline.learn_one({"n": 1.0, "color": "red"}, True)
    assert pipeline.transform_one({"n": 1.0, "color": "red"}) == {"n": 1.0, "color": "red"}, "trees: unscaled"
    assert pipeline.predict_one({"n": 1.0, "color": "red"}) is True


def test_tree_and_forest_classifiers_get_numbers_unscaled_other_estimators_scaled() -> None:
    for path in ("river.tree.HoeffdingAdaptiveTreeClassifier", "river.forest.ARFClassifier"):
        pipeline = build_river_pipeline(path, {"n_models": 2} if "forest" in path else {}, ALL_ON, seed=1)
        for x in ({"n": 1.0}, {"n": 3.0}):
            pipeline.learn_one(x, True)
        assert pipeline.transform_one({"n": 2.0}) == {"n": 2.0}, path
    for path in (LOGREG, "river.naive_bayes.GaussianNB", "river.linear_model.LinearRegression",
                 "river.forest.ARFRegressor"):
        pipeline = build_river_pipeline(path, {"n_models": 2} if "forest" in path else {}, ALL_ON, seed=1)
        for x in ({"n": 1.0}, {"n": 3.0}):
            pipeline.learn_one(x, True if path in (LOGREG, "river.naive_bayes.GaussianNB") else 1.0)
        assert pipeline.transform_one({"n": 2.0}) == {"n": 0.0}, path


def test_without_any_preprocessing_only_cleaning_remains() -> None:
    pipeline = build_river_pipeline(LOGREG, {}, NOTHING, seed=1)
    assert len(pipeline.steps) == 2
    assert pipeline.transform_one({"n": 5, "b": True, "s": "x", "m": None}) == {"n": 5, "b": 1.0, "s": "x"}


def test_anomaly_detectors_see_features_in_the_unit_range() -> None:
    pipeline = build_river_pipeline("river.anomaly.HalfSpaceTrees", {}, NOTHING, seed=1)
    for x in ({"a": 0.0, "b": 10.0}, {"a": 4.0, "b": 20.0}):
        pipeline.learn_one(x)
    assert pipeline.transform_one({"a": 1.0, "b": 100.0, "unseen": 7.0, "s": "x"}) == {
        "a": 0.25,
        "b": 1.0,
        "unseen": 0.0,
        "s_x": 1,
    }


def test_unit_range_scaler_does_not_change_while_predicting() -> None:
    scaler = UnitRangeScaler()
    scaler.learn_one({"a": 1.0})
    assert scaler.transform_one({"a": 5.0, "b": 1.0}) == {"a": 0.0, "b": 0.0}
    assert (scaler.lows, scaler.highs) == ({"a": 1.0}, {"a": 1.0})


@pytest.mark.parametrize(
    ("estimator", "requested", "expected"),
    [
        (LOGREG, None, Task.BINARY),
        ("river.linear_model.PAClassifier", None, Task.BINARY),
        ("river.forest.ARFClassifier", None, Task.MULTICLASS),
        ("river.forest.ARFClassifier", Task.BINARY, Task.BINARY),
        ("river.naive_bayes.GaussianNB", Task.MULTICLASS, Task.MULTICLASS),
        ("river.forest.ARFRegressor", None, Task.REGRESSION),
        ("river.linear_model.LinearRegression", Task.REGRESSION, Task.REGRESSION),
        ("river.anomaly.HalfSpaceTrees", None, Task.ANOMALY),
    ],
)
def test_task_is_inferred_from_the_estimator(estimator: str, requested: Task | None, expected: Task) -> None:
    assert _learner(estimator, requested).task is expected


def test_binary_only_classifier_asked_for_multiclass_is_wrapped_one_vs_rest() -> None:
    learner = _learner(LOGREG, Task.MULTICLASS)
    assert learner.task is Task.MULTICLASS
    assert isinstance(learner.pipeline[-1], multiclass.OneVsRestClassifier)
    for i in range(30):
        learner.learn_one(Row({"x": float(i % 3)}), ["a", "b", "c"][i % 3])
    assert learner.predict_one(Row({"x": 2.0})).prediction in {"a", "b", "c"}


@pytest.mark.parametrize(
    ("estimator", "task"),
    [
        (LOGREG, Task.REGRESSION),
        ("river.forest.ARFRegressor", Task.BINARY),
        ("river.anomaly.HalfSpaceTrees", Task.MULTICLASS),
        ("river.forest.ARFClassifier", Task.ANOMALY),
    ],
)
def test_a_task_the_estimator_cannot_serve_is_rejected(estimator: str, task: Task) -> None:
    with pytest.raises(LearnerConfigError, match=r"model 'm'.*task"):
        _learner(estimator, task)


def test_seed_is_passed_to_estimators_that_accept_it_unless_params_set_it() -> None:
    assert _learner("river.forest.ARFClassifier", build_seed=5).pipeline[-1].seed == 5
    assert _learner("river.forest.ARFClassifier", build_seed=5, seed=9).pipeline[-1].seed == 9
    assert isinstance(_learner(LOGREG, build_seed=5).pipeline[-1], linear_model.LogisticRegression)


def test_nested_parameter_objects_are_built() -> None:
    learner = _learner(LOGREG, optimizer={"class": "river.optim.SGD", "params": {"lr": 0.5}})
    optimizer = learner.pipeline[-1].optimizer
    assert isinstance(optimizer, optim.SGD)
    assert optimizer.learning_rate == 0.5


def test_classifier_that_has_seen_no_class_predicts_nothing() -> None:
    output = _learner("river.forest.ARFClassifier", n_models=2).predict_one(Row({"x": 1.0}))
    assert output == Output(None, {})


def test_outputs_are_plain_python_values() -> None:
    regressor = _learner("river.linear_model.LinearRegression")
    regressor.learn_one(Row({"x": 1.0}), 2.0)
    assert type(regressor.predict_one(Row({"x": 1.0})).prediction) is float
    classifier = _learner("river.naive_bayes.GaussianNB")
    for i in range(20):
        classifier.learn_one(Row({"x": float(i % 2) + 0.1 * i}), "ab"[i % 2])
    output = classifier.predict_one(Row({"x": 4.0}))
    assert output.prediction in {"a", "b"}
    assert set(output.proba) == {"a", "b"}
    assert all(type(p) is float for p in output.proba.values())


def test_anomaly_detector_scores_and_learns_without_labels() -> None:
    learner = _learner("river.anomaly.HalfSpaceTrees", n_trees=3, height=3, window_size=10)
    outputs = learner.process([Row({"x": float(i % 5)}) for i in range(40)], [None] * 40)
    assert all(o.prediction is None and isinstance(o.score, float) for o in outputs)
    assert outputs[-1].score != outputs[0].score


def test_supervised_learning_needs_a_target() -> None:
    with pytest.raises(ValueError, match="needs a target"):
        _learner(LOGREG).learn_one(Row({"x": 1.0}), None)


def test_memory_grows_as_a_forest_learns() -> None:
    learner = _learner("river.forest.ARFClassifier", n_models=2)
    before = learner.memory_bytes()
    learner.process([Row({"x": float(i), "y": float(i % 7)}) for i in range(200)], [i % 3 == 0 for i in range(200)])
    assert learner.memory_bytes() > before > 0


def _resnapshot(data: bytes, **header_changes: object) -> bytes:
    raw_header, _, payload = data.partition(b"\n")
    header = {**json.loads(raw_header), **header_changes}
    return json.dumps(header).encode() + b"\n" + payload


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"kind": "torch.mlp"}, "kind 'torch.mlp'"), ({"format": 99}, "format 99"), ({"river": "0.1.0"}, "river '0.1.0'")],
)
def test_snapshot_header_is_checked(changes: dict[str, object], message: str) -> None:
    data = _resnapshot(_learner(LOGREG).snapshot(), **changes)
    with pytest.raises(SnapshotError, match=message):
        RiverLearner.restore(data)


def test_snapshot_that_does_not_hold_a_pipeline_is_refused() -> None:
    header = _learner(LOGREG).snapshot().partition(b"\n")[0]
    state = {"pipeline": forest.ARFClassifier(), "task": "binary", "estimator": LOGREG, "params": {}}
    with pytest.raises(SnapshotError, match="not a River pipeline"):
        RiverLearner.restore(header + b"\n" + pickle.dumps(state))


def test_snapshot_keeps_task_estimator_and_params() -> None:
    learner = _learner("river.forest.ARFClassifier", Task.BINARY, n_models=2)
    restored = RiverLearner.restore(learner.snapshot())
    assert restored.describe() == learner.describe()
    assert restored.describe()["params"] == {"n_models": 2}


def test_caller_dict_is_copied_before_river_sees_it() -> None:
    learner = _learner(LOGREG)
    features = {"x": 1.0, "flag": True, "missing": None, "color": "red"}
    learner.learn_one(Row(features), True)
    learner.predict_one(Row(features))
    assert features == {"x": 1.0, "flag": True, "missing": None, "color": "red"}


def test_classifier_without_probabilities_still_predicts() -> None:
    learner = _learner(
        "river.multiclass.OneVsOneClassifier", classifier={"class": "river.linear_model.LogisticRegression"}
    )
    for i in range(30):
        learner.learn_one(Row({"x": float(i % 3)}), "abc"[i % 3])
    output = learner.predict_one(Row({"x": 1.0}))
    assert output.prediction in {"a", "b", "c"}
    assert output.proba == {}
