"""The one-step :class:`Preprocessor` is bit-for-bit the former layered prefix, and old snapshots still restore.

Former layout (snapshot format 1): ``FeatureCleaner | TransformerUnion(SelectType(Number) [| scaler],
SelectType(str) [| one-hot]) | estimator``, kept as ``build_layered_preprocessing``. Both pipelines run the same
prequential stream; every prediction, probability, transformed row (keys in order) and the final state must be
equal with ``==`` (no tolerance).
"""

from __future__ import annotations

import json
import pickle
import random
from typing import Any

import pytest
from river import compose, datasets

from shared.learners.base import Row, Task
from shared.learners.river_learner import (
    Preprocessor,
    RiverLearner,
    build_estimator,
    build_layered_preprocessing,
    build_river_pipeline,
    scales_numbers,
)
from shared.settings import PreprocessingSettings

ARF = ("river.forest.ARFClassifier", {"n_models": 10})
LOGREG = ("river.linear_model.LogisticRegression", {})
ALL_ON = PreprocessingSettings()
SETTINGS = [
    ALL_ON,
    PreprocessingSettings(scale_numbers=True, one_hot_categories=False, impute_missing=True),
    PreprocessingSettings(scale_numbers=False, one_hot_categories=True, impute_missing=False),
    PreprocessingSettings(scale_numbers=False, one_hot_categories=False, impute_missing=True),
]


def _layered(estimator: str, params: dict[str, Any], settings: PreprocessingSettings, seed: int = 42,
             task: Task | None = None) -> compose.Pipeline:
    model, resolved = build_estimator(estimator, params, seed, task)
    prefix = build_layered_preprocessing(settings, resolved, scale_numbers=scales_numbers(settings, model))
    return prefix | model


def _phishing(n: int) -> list[tuple[dict[str, Any], Any]]:
    samples = list(datasets.Phishing())
    return [(dict(x), y) for x, y in (samples * (n // len(samples) + 1))[:n]]


def _mixed(n: int, seed: int = 3) -> list[tuple[dict[str, Any], Any]]:
    """Every kind of value the cleaned events carry: floats, ints, bools, None, strings; features come and go."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x: dict[str, Any] = {"a": rng.gauss(0, 1), "n": rng.randint(0, 9)}
        if rng.random() < 0.7:
            x["flag"] = rng.random() < 0.5
        if rng.random() < 0.3:
            x["a"] = None
        if rng.random() < 0.6:
            x["color"] = rng.choice(["red", "green", "blue"])
        if rng.random() < 0.2:
            x["late"] = None if rng.random() < 0.5 else rng.uniform(-5, 5)
        if rng.random() < 0.1:
            x = {"a_b": 1.5, "a": "b", **x}  # a number and a one-hot key of the same name
        rows.append((x, (x.get("n") or 0) > 4))
    return rows


def _run_both(old: compose.Pipeline, new: compose.Pipeline, stream: list[tuple[dict[str, Any], Any]],
              *, anomaly: bool = False) -> int:
    """Prequential on both; every output must be identical. Returns the number of rows compared."""
    for x, y in stream:
        assert list(old.transform_one(dict(x)).items()) == list(new.transform_one(dict(x)).items())
        if anomaly:
            assert old.score_one(dict(x)) == new.score_one(dict(x))
            old.learn_one(dict(x))
            new.learn_one(dict(x))
        else:
            assert old.predict_proba_one(dict(x)) == new.predict_proba_one(dict(x))
            assert old.predict_one(dict(x)) == new.predict_one(dict(x))
            old.learn_one(dict(x), y)
            new.learn_one(dict(x), y)
    return len(stream)


@pytest.mark.parametrize(("estimator", "params"), [ARF, LOGREG], ids=["arf", "logreg"])
def test_identical_to_the_layered_prefix_on_phishing(estimator: str, params: dict[str, Any]) -> None:
    old = _layered(estimator, params, ALL_ON)
    new = build_river_pipeline(estimator, params, ALL_ON, 42)
    assert isinstance(new[0], Preprocessor) and len(new.steps) == 2
    assert _run_both(old, new, _phishing(2000)) == 2000
    # the learned state too: the running means, and the same next prediction on fresh rows
    assert {k: (m.n, m.get()) for k, m in old["FeatureCleaner"].means.items()} == {
        k: (m.n, m.get()) for k, m in new[0].cleaner.means.items()
    }


@pytest.mark.parametrize("settings", SETTINGS, ids=["all-on", "scale", "one-hot", "clean-only"])
@pytest.mark.parametrize(("estimator", "params"), [LOGREG, ("river.tree.HoeffdingTreeClassifier", {})],
                         ids=["logreg", "tree"])
def test_identical_on_mixed_values(estimator: str, params: dict[str, Any], settings: PreprocessingSettings) -> None:
    if estimator.endswith("LogisticRegression") and not settings.one_hot_categories:
        pytest.skip("a linear model cannot take strings unencoded")
    old = _layered(estimator, params, settings)
    new = build_river_pipeline(estimator, params, settings, 42)
    _run_both(old, new, _mixed(1500))


def test_identical_for_anomaly_detectors() -> None:
    old = _layered("river.anomaly.HalfSpaceTrees", {}, ALL_ON)
    new = build_river_pipeline("river.anomaly.HalfSpaceTrees", {}, ALL_ON, 42)
    _run_both(old, new, _mixed(800), anomaly=True)


def test_identical_through_the_learner_process_loop() -> None:
    """The worker's path (``RiverLearner.process``): the same outputs as with the layered pipeline."""
    stream = _phishing(1000)
    rows, targets = [Row(x) for x, _ in stream], [y for _, y in stream]
    old = RiverLearner(_layered(*ARF, ALL_ON), Task.BINARY, ARF[0], ARF[1])
    new = RiverLearner(build_river_pipeline(*ARF, ALL_ON, 42), Task.BINARY, ARF[0], ARF[1])
    assert old.process(rows, targets) == new.process(rows, targets)


def test_clone_and_pickle_keep_the_preprocessor() -> None:
    pipeline = build_river_pipeline(*LOGREG, ALL_ON, 42)
    for x, y in _phishing(50):
        pipeline.learn_one(x, y)
    clone = pipeline.clone()
    assert isinstance(clone[0], Preprocessor) and clone[0].cleaner.means == {}
    assert clone[0].scaler is not pipeline[0].scaler
    copy = pickle.loads(pickle.dumps(pipeline))
    x = _phishing(51)[-1][0]
    assert copy.predict_proba_one(x) == pipeline.predict_proba_one(x)


def _format_1_snapshot(learner: RiverLearner) -> bytes:
    """A snapshot as the former code wrote it: format 1, a plain pickle of the layered pipeline."""
    header = {"kind": "river", "format": 1, **json.loads(learner.snapshot().partition(b"\n")[0])}
    header["format"] = 1
    state = {"pipeline": learner.pipeline, "task": str(learner.task), "estimator": learner.estimator,
             "params": learner.params}
    return json.dumps(header, sort_keys=True).encode() + b"\n" + pickle.dumps(state, protocol=5)


@pytest.mark.parametrize("settings", SETTINGS[:2] + SETTINGS[3:], ids=["all-on", "scale", "clean-only"])
@pytest.mark.parametrize(("estimator", "params"), [ARF, LOGREG], ids=["arf", "logreg"])
def test_a_format_1_snapshot_restores_fused_and_goes_on_identically(
    estimator: str, params: dict[str, Any], settings: PreprocessingSettings
) -> None:
    stream = _phishing(1500)
    old = RiverLearner(_layered(estimator, params, settings), Task.BINARY, estimator, params)
    assert len(old.pipeline.steps) == (2 if settings is SETTINGS[3] or (settings is SETTINGS[1] and estimator == ARF[0])
                                       else 3)
    first, rest = stream[:700], stream[700:]
    old.process([Row(x) for x, _ in first], [y for _, y in first])
    restored = RiverLearner.restore(_format_1_snapshot(old))
    assert isinstance(restored.pipeline[0], Preprocessor) and len(restored.pipeline.steps) == 2
    rows, targets = [Row(x) for x, _ in rest], [y for _, y in rest]
    assert restored.process(rows, targets) == old.process(rows, targets)


def test_format_2_snapshots_pack_random_states_and_restore_them_exactly() -> None:
    learner = RiverLearner(build_river_pipeline(*ARF, ALL_ON, 42), Task.BINARY, *ARF)
    stream = _phishing(1500)
    first, rest = stream[:1000], stream[1000:]
    learner.process([Row(x) for x, _ in first], [y for _, y in first])
    data = learner.snapshot()
    assert json.loads(data.partition(b"\n")[0])["format"] == 2
    plain = pickle.dumps(learner.pipeline, protocol=5)
    assert len(data) < 0.8 * len(plain), "the leaves' random states are packed"
    restored = RiverLearner.restore(data)
    generators = [(m, getattr(m, "_rng", None)) for m in (learner.pipeline[-1], restored.pipeline[-1])]
    assert generators[0][1] is not None and generators[0][1].getstate() == generators[1][1].getstate()
    rows, targets = [Row(x) for x, _ in rest], [y for _, y in rest]
    assert restored.process(rows, targets) == learner.process(rows, targets)
