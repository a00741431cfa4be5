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
