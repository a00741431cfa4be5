"""The merges of group scope (shared/sync/river_state.py): exact for sufficient statistics, FedAvg for parameters
(the weighted mean of the members' parameters)."""

from __future__ import annotations

import math
import random

import orjson
import pytest
from river import linear_model, naive_bayes, preprocessing

from shared.learners.base import MergeMode, Row
from shared.learners.registry import build_learner
from shared.settings import ModelSettings, PreprocessingSettings
from shared.sync.river_state import _minus, _plus, pipeline_mode, step_mode


def _moments(values: list[float]) -> tuple[float, float, float]:
    n = float(len(values))
    mean = sum(values) / n
    return n, mean, sum((v - mean) ** 2 for v in values)


def test_chan_moments_add_and_subtract_exactly() -> None:
    rng = random.Random(3)
    values = [rng.gauss(5.0, 2.0) for _ in range(300)]
    head, tail = values[:120], values[120:]
    combined = _plus(_moments(head), _moments(tail))
    for got, want in zip(combined, _moments(values), strict=True):
        assert math.isclose(got, want, rel_tol=1e-9)
    for got, want in zip(_minus(_moments(values), _moments(head)), _moments(tail), strict=True):
        assert math.isclose(got, want, rel_tol=1e-9)


def test_steps_declare_how_they_merge() -> None:
    assert step_mode(naive_bayes.GaussianNB()) is MergeMode.EXACT
    assert step_mode(preprocessing.StandardScaler()) is MergeMode.EXACT
    assert step_mode(linear_model.LogisticRegression()) is MergeMode.AVERAGE
    assert step_mode(linear_model.PAClassifier()) is MergeMode.AVERAGE
    from river import forest

    assert step_mode(forest.ARFClassifier()) is None
    assert pipeline_mode(preprocessing.StandardScaler() | forest.ARFClassifier()) is MergeMode.VIEW
    assert pipeline_mode(preprocessing.StandardScaler() | linear_model.LogisticRegression()) is MergeMode.AVERAGE


def _stream(n: int, seed: int) -> list[tuple[dict[str, float], bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {"a": rng.gauss(0.0, 1.0), "b": rng.uniform(0.0, 10.0)}
        out.append((x, x["a"] + 0.3 * x["b"] + rng.gauss(0.0, 1.0) > 1.5))
    return out


@pytest.mark.parametrize("scale", [False, True], ids=["raw", "scaled"])
def test_naive_bayes_and_scaler_merge_exactly(scale: bool) -> None:
    """Three members learn thirds of a stream, each merges the others' deltas: every member holds exactly the
    statistics of one learner over the whole stream (naive Bayes over raw numbers; the scaler in any case)."""
    model = ModelSettings(name="nb", estimator="river.naive_bayes.GaussianNB")
    prep = PreprocessingSettings(scale_numbers=scale)
    members = [build_learner(model, prep, 1) for _ in range(3)]
    whole = build_learner(model, prep, 1)
    data = _stream(600, 1)
    for member in members:
        member.mark_synced()
    for index, (x, y) in enumerate(data):
        members[index % 3].learn_one(Row(x), y)
        whole.learn_one(Row(x), y)
    deltas = [member.sync_delta() for member in members]
    assert all(delta is not None for delta in deltas)
    for index, member in enumerate(members):
        member.merge(deltas[index], 200, [(d, 200) for j, d in enumerate(deltas) if j != index])  # type: ignore[misc]
    reference = whole.pipeline  # type: ignore[attr-defined]
    for member in members:
        pipeline = member.pipeline  # type: ignore[attr-defined]
        nb, want = pipeline[-1], reference[-1]
        assert nb.class_counts == want.class_counts
        if scale:
            scaler, want_scaler = pipeline[0].scaler, reference[0].scaler
            assert scaler.counts == want_scaler.counts
            for name in want_scaler.means:
                assert math.isclose(scaler.means[name], want_scaler.means[name], rel_tol=1e-9)
                assert math.isclose(scaler.vars[name], want_scaler.vars[name], rel_tol=1e-9)
        else:  # the statistics naive Bayes keeps are those of the whole stream
            for label, by_feature in want.gaussians.items():
                for name, gaussian in by_feature.items():
                    mine = nb.gaussians[label][name]
                    assert math.isclose(mine._var.mean.n, gaussian._var.mean.n)
                    assert math.isclose(mine._var.mean.get(), gaussian._var.mean.get(), rel_tol=1e-9)
                    assert math.isclose(mine._var.get(), gaussian._var.get(), rel_tol=1e-9)
            probe = [Row(x) for x, _ in _stream(50, 9)]
            assert [o.prediction for o in member.predict_many(probe)] == \
                   [o.prediction for o in whole.predict_many(probe)]


def test_linear_models_average_their_deltas_by_examples() -> None:
    """FedAvg: base + (n1 * d1 + n2 * d2) / (n1 + n2), the same on both members."""
    model = ModelSettings(name="lr", estimator="river.linear_model.LogisticRegression")
    prep = PreprocessingSettings(scale_numbers=False)
    first, second = build_learner(model, prep, 1), build_learner(model, prep, 1)
    first.mark_synced()
    second.mark_synced()
    data = _stream(400, 2)
    for x, y in data[:300]:
        first.learn_one(Row(x), y)
    for x, y in data[300:]:
        second.learn_one(Row(x), y)
    d1, d2 = first.sync_delta(), second.sync_delta()
    assert d1 is not None and d2 is not None
    w1 = dict(orjson.loads(d1)[-1]["weights"])
    w2 = dict(orjson.loads(d2)[-1]["weights"])
    first.merge(d1, 300, [(d2, 100)])
    second.merge(d2, 100, [(d1, 300)])
    lr1, lr2 = first.pipeline[-1], second.pipeline[-1]  # type: ignore[attr-defined]
    for name in ("a", "b"):
        want = (300 * w1.get(name, 0.0) + 100 * w2.get(name, 0.0)) / 400
        assert math.isclose(lr1._weights[name], want, rel_tol=1e-9)
        assert math.isclose(lr2._weights[name], want, rel_tol=1e-9)


def test_members_with_different_bases_average_their_parameters_not_their_deltas() -> None:
    """Members sync at different times, so their bases differ: a merge averages the models themselves (weighted
    by examples since each one's last sync), never ``my base + the other's delta``, which would add the difference
    of the two bases to every merge (docs/architecture.md, "Designs measured")."""
    model = ModelSettings(name="lr", estimator="river.linear_model.LinearRegression", task="regression")
    prep = PreprocessingSettings(scale_numbers=False)
    first, second = build_learner(model, prep, 1), build_learner(model, prep, 1)
    rng = random.Random(7)
    data = [({"a": rng.random(), "b": rng.random()}, 0.0) for _ in range(600)]
    data = [(x, 3 * x["a"] - 2 * x["b"] + 1) for x, _ in data]
    for x, y in data[:200]:  # the first member learns alone, then both mark a sync at different states
        first.learn_one(Row(x), y)
    first.mark_synced()
    second.mark_synced()
    first_base = dict(first.pipeline[-1]._weights)  # type: ignore[attr-defined]
    for x, y in data[200:500]:
        first.learn_one(Row(x), y)
    for x, y in data[500:]:
        second.learn_one(Row(x), y)
    d_first, d_second = first.sync_delta(), second.sync_delta()
    assert d_first is not None and d_second is not None
    state = orjson.loads(d_second)[-1]["state"]
    theirs, their_intercept = dict(state["weights"]), state["intercept"]
    lr1 = first.pipeline[-1]  # type: ignore[attr-defined]
    mine, my_intercept = dict(lr1._weights), lr1.intercept
    first.merge(d_first, 300, [(d_second, 100)])
    for name in ("a", "b"):
        assert math.isclose(lr1._weights[name], (300 * mine[name] + 100 * theirs[name]) / 400, rel_tol=1e-9)
    assert math.isclose(lr1.intercept, (300 * my_intercept + 100 * their_intercept) / 400, rel_tol=1e-9)
    own_change = {name: mine[name] - first_base.get(name, 0.0) for name in mine}
    their_change = dict(orjson.loads(d_second)[-1]["weights"])
    by_deltas = {name: first_base.get(name, 0.0) + (300 * own_change[name] + 100 * their_change.get(name, 0.0)) / 400
                 for name in ("a", "b")}
    assert all(abs(lr1._weights[name] - by_deltas[name]) > 0.01 for name in ("a", "b")), \
        "the bases differ, so averaging the deltas would give another model"


def test_a_delta_without_parameters_stands_for_base_plus_delta() -> None:
    """A member of an older version publishes only its change: it is merged as ``base + delta``."""
    model = ModelSettings(name="lr", estimator="river.linear_model.LogisticRegression")
    prep = PreprocessingSettings(scale_numbers=False)
    first, second = build_learner(model, prep, 1), build_learner(model, prep, 1)
    first.mark_synced()
    second.mark_synced()
    data = _stream(200, 3)
    for x, y in data[:100]:
        first.learn_one(Row(x), y)
    for x, y in data[100:]:
        second.learn_one(Row(x), y)
    d_first, d_second = first.sync_delta(), second.sync_delta()
    assert d_first is not None and d_second is not None
    legacy = orjson.loads(d_second)
    del legacy[-1]["state"]
    lr1 = first.pipeline[-1]  # type: ignore[attr-defined]
    mine = dict(lr1._weights)
    first.merge(d_first, 100, [(orjson.dumps(legacy), 100)])
    change = dict(legacy[-1]["weights"])
    for name in ("a", "b"):
        assert math.isclose(lr1._weights[name], (mine[name] + change.get(name, 0.0)) / 2, rel_tol=1e-9)


def test_a_learner_never_synced_measures_its_delta_from_an_untrained_copy() -> None:
    """A model replaced by a drift reset (a clone, never synced) still syncs: its delta is all it learned."""
    model = ModelSettings(name="nb", estimator="river.naive_bayes.GaussianNB")
    learner = build_learner(model, PreprocessingSettings(scale_numbers=False), 1).clone()
    for x, y in _stream(50, 4):
        learner.learn_one(Row(x), y)
    delta = learner.sync_delta()
    assert delta is not None
    counts = dict((label, n) for label, n in orjson.loads(delta)[-1]["class_counts"])
    assert sum(counts.values()) == 50


@pytest.mark.parametrize("estimator", ["river.linear_model.LogisticRegression", "river.naive_bayes.GaussianNB"])
def test_the_state_kept_for_the_next_delta_is_plain_numbers_within_the_models_size(estimator: str) -> None:
    """Acceptance 3 of issue 12: a worker's model memory in group scope is at most 2x the model's; the base a
    delta is measured from is plain containers and numbers, not a second copy of the pipeline."""
    learner = build_learner(ModelSettings(name="m", estimator=estimator, task="binary"), PreprocessingSettings(), 1)
    stream = _stream(400, 5)
    learner.process([Row(x) for x, _ in stream], [y for _, y in stream])
    alone = learner.memory_bytes()
    learner.mark_synced()
    synced = learner.memory_bytes()
    assert alone < synced <= 2 * alone, (alone, synced)
    assert orjson.loads(learner.sync_delta() or b"null") is not None


def test_a_later_parameter_delta_of_the_same_member_supersedes_its_earlier_one() -> None:
    """Averaged models publish their whole parameters: two syncs of one member read at once count as its latest
    parameters with the examples of both; replay deltas (lists of examples) are all kept, in order."""
    from shared.sync.group import _latest_per_member

    deltas = [("a", b"a1", 100, True), ("b", b"b1", 50, True), ("a", b"a2", 200, True),
              ("c", b"c1", 10, False), ("c", b"c2", 20, False)]
    assert _latest_per_member(deltas) == [(b"a2", 300), (b"b1", 50), (b"c1", 10), (b"c2", 20)]
