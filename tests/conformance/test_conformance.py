"""One conformance harness for every registered learner kind (River estimators and the torch models).

The cases come from the registry listing: every kind in ``known_kinds()`` gets cases, so a kind whose module
is missing or broken fails here instead of being skipped.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from shared.learners import replay
from shared.learners.base import Learner, MergeMode, Output, Row, SnapshotError, Target, Task
from shared.learners.registry import build_learner, known_kinds, restore_learner
from shared.settings import ModelSettings, PreprocessingSettings
from tests.conformance.streams import make_shifting_rows, make_stream

PREPROCESSING = PreprocessingSettings()
SEED = 7
N_LEARN = 200
N_PROBE = 40
BUILTIN_KINDS = {"river", "torch.linear", "torch.mlp", "torch.gru", "torch.cnn"}
MEMORY_CEILING = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Case:
    """A representative model configuration of one kind for one task."""

    model: ModelSettings
    task: Task

    @property
    def id(self) -> str:
        return self.model.name


def _river(name: str, estimator: str, task: Task, **params: Any) -> Case:
    return Case(ModelSettings(name=name, estimator=f"river.{estimator}", params=params, task=task), task)


RIVER_CASES = [
    _river("river-logreg-binary", "linear_model.LogisticRegression", Task.BINARY),
    _river("river-pa-binary", "linear_model.PAClassifier", Task.BINARY),
    _river("river-gaussiannb-binary", "naive_bayes.GaussianNB", Task.BINARY),
    _river("river-hat-binary", "tree.HoeffdingAdaptiveTreeClassifier", Task.BINARY),
    _river("river-arf-binary", "forest.ARFClassifier", Task.BINARY, n_models=3),
    _river("river-arf-multiclass", "forest.ARFClassifier", Task.MULTICLASS, n_models=3),
    _river("river-hat-multiclass", "tree.HoeffdingAdaptiveTreeClassifier", Task.MULTICLASS),
    _river("river-gaussiannb-multiclass", "naive_bayes.GaussianNB", Task.MULTICLASS),
    _river("river-logreg-ovr-multiclass", "linear_model.LogisticRegression", Task.MULTICLASS),
    _river("river-linreg-regression", "linear_model.LinearRegression", Task.REGRESSION),
    _river("river-arf-regression", "forest.ARFRegressor", Task.REGRESSION, n_models=3),
    _river("river-hst-anomaly", "anomaly.HalfSpaceTrees", Task.ANOMALY, n_trees=5, height=5, window_size=50),
]
#: kinds other than "river" are checked on every task (anomaly scoring included) with their default options
GENERIC_TASKS = (Task.BINARY, Task.MULTICLASS, Task.REGRESSION, Task.ANOMALY)


def _cases_of(kind: str) -> list[Case]:
    if kind == "river":
        return RIVER_CASES
    return [Case(ModelSettings(name=f"{kind}-{task}", kind=kind, task=task), task) for task in GENERIC_TASKS]


CASES = [case for kind in known_kinds() for case in _cases_of(kind)]
KIND_PAIRS = list(itertools.permutations(known_kinds(), 2))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """The torch cases' tiny networks run fastest on one thread (and far faster on a loaded machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def _build(case: Case, seed: int = SEED) -> Learner:
    return build_learner(case.model, PREPROCESSING, seed)


def _stream(case: Case, seed: int = 11) -> tuple[list[Row], list[Target | None]]:
    return make_stream(case.task, N_LEARN + N_PROBE, seed)


def _with_gaps(task: Task, targets: Sequence[Target | None]) -> list[Target | None]:
    """Every fourth target withheld (unlabelled rows), except for anomaly detection where none exist."""
    return [None if task is not Task.ANOMALY and i % 4 == 3 else t for i, t in enumerate(targets)]


def _one_at_a_time(learner: Learner, rows: Sequence[Row], targets: Sequence[Target | None]) -> list[Output]:
    outputs = []
    for row, target in zip(rows, targets, strict=True):
        outputs.append(learner.predict_one(row))
        if target is not None or learner.task is Task.ANOMALY:
            learner.learn_one(row, target)
    return outputs


def _check_output(task: Task, output: Output, labels: set[Any]) -> None:
    assert isinstance(output, Output)
    if task.is_classification:
        assert output.prediction is None or output.prediction in labels, output
        if output.proba:
            assert set(output.proba) <= labels, output
            assert all(0.0 <= p <= 1.0 for p in output.proba.values()), output
            assert math.isclose(sum(output.proba.values()), 1.0, abs_tol=1e-6), output
    elif task is Task.REGRESSION:
        assert isinstance(output.prediction, int | float) and not isinstance(output.prediction, bool), output
        assert math.isfinite(output.prediction), output
    else:
        assert output.score is not None and math.isfinite(output.score), output


def test_every_builtin_kind_is_listed() -> None:
    assert set(known_kinds()) >= BUILTIN_KINDS


def test_builds_the_requested_kind_and_task(case: Case) -> None:
    learner = _build(case)
    assert isinstance(learner, Learner)
    assert learner.kind == case.model.kind
    assert learner.task is case.task
    assert learner.describe()["kind"] == case.model.kind


def test_input_is_neither_mutated_nor_retained(case: Case) -> None:
    rows, targets = _stream(case)
    targets = _with_gaps(case.task, targets)
    originals = copy.deepcopy([r.features for r in rows])
    learner, twin = _build(case), _build(case)
    half = len(rows) // 2
    learner.predict_many(rows[:half])
    learner.learn_many(
        [r for r, t in zip(rows[:half], targets[:half], strict=True) if t is not None or case.task is Task.ANOMALY],
        [t for t in targets[:half] if t is not None or case.task is Task.ANOMALY],
    )
    learner.process(rows[half:], targets[half:])
    assert [r.features for r in rows] == originals, "the learner changed the caller's feature dicts"

    twin_rows = [Row(copy.deepcopy(r.features), r.key) for r in rows]
    twin.predict_many(twin_rows[:half])
    twin.learn_many(
        [
            r
            for r, t in zip(twin_rows[:half], targets[:half], strict=True)
            if t is not None or case.task is Task.ANOMALY
        ],
        [t for t in targets[:half] if t is not None or case.task is Task.ANOMALY],
    )
    twin.process(twin_rows[half:], targets[half:])
    for row in rows:
        row.features.clear()
        row.features["poison"] = 1e9
    probe, _ = make_stream(case.task, N_PROBE, seed=99)
    assert learner.predict_many(probe) == twin.predict_many(probe), "the learner kept references to caller dicts"


def _assert_restored_equal(restored: Sequence[Output], original: Sequence[Output], what: str = "") -> None:
    """Outputs of a restored learner against the original's: the same predictions and classes, probabilities equal
    up to the last bits. Unpickling rebuilds River's sets of class labels, whose iteration (so the order in which
    votes are summed) may differ from the original's: a difference of a few ULPs, never a different answer.
    """
    assert len(restored) == len(original), what
    for index, (mine, theirs) in enumerate(zip(restored, original, strict=True)):
        assert mine.prediction == theirs.prediction, (what, index, mine, theirs)
        assert set(mine.proba) == set(theirs.proba), (what, index, mine, theirs)
        for label, p in theirs.proba.items():
            assert math.isclose(mine.proba[label], p, rel_tol=1e-12, abs_tol=1e-15), (what, index, mine, theirs)
        if theirs.score is None:
            assert mine.score is None, (what, index)
        else:
            assert mine.score is not None and math.isclose(mine.score, theirs.score, rel_tol=1e-12, abs_tol=1e-15)


def test_snapshot_round_trip_before_and_after_learning(case: Case) -> None:
    rows, targets = _stream(case)
    probe, _ = make_stream(case.task, N_PROBE, seed=99)
    learner = _build(case)

    fresh_copy = restore_learner(case.model.kind, learner.snapshot())
    assert fresh_copy.kind == learner.kind and fresh_copy.task is learner.task
    _assert_restored_equal(fresh_copy.predict_many(probe), learner.predict_many(probe), "untrained")

    learner.process(rows[:N_LEARN], targets[:N_LEARN])
    data = learner.snapshot()
    assert isinstance(data, bytes)
    restored = restore_learner(case.model.kind, data)
    by_class = type(learner).restore(data)
    expected = learner.predict_many(probe)
    _assert_restored_equal(restored.predict_many(probe), expected, "restored by kind")
    _assert_restored_equal(by_class.predict_many(probe), expected, "restored by class")

    tail_rows, tail_targets = rows[N_LEARN:], targets[N_LEARN:]
    _assert_restored_equal(restored.process(tail_rows, tail_targets), learner.process(tail_rows, tail_targets),
                           "learning after the restore")
    _assert_restored_equal(restored.predict_many(probe), learner.predict_many(probe),
                           "a restored learner learns differently")


def test_same_seed_same_predictions(case: Case) -> None:
    rows, targets = _stream(case)
    first, second = _build(case, seed=123), _build(case, seed=123)
    assert first.process(rows, targets) == second.process(rows, targets)


def test_features_may_appear_and_vanish(case: Case) -> None:
    rows, targets = _stream(case)
    learner = _build(case)
    labels = {t for t in targets if t is not None}
    learner.process(rows[:N_LEARN], targets[:N_LEARN])
    shifting = make_shifting_rows(60, seed=5)
    outputs = learner.predict_many(shifting)
    assert len(outputs) == len(shifting)
    for output in outputs:
        _check_output(case.task, output, labels)
        if case.task.is_classification:
            assert output.prediction is not None, "a trained classifier must predict a class"
    shifting_targets = [targets[i % len(targets)] for i in range(len(shifting))]
    for output in learner.process(shifting, shifting_targets):
        _check_output(case.task, output, labels)


def test_untrained_learner_still_predicts(case: Case) -> None:
    rows, targets = _stream(case)
    labels = {t for t in targets if t is not None}
    for output in _build(case).predict_many(rows[:5]):
        _check_output(case.task, output, labels)


def test_clone_is_untrained_and_independent(case: Case) -> None:
    rows, targets = _stream(case)
    other_rows, other_targets = _stream(case, seed=12)
    probe, _ = make_stream(case.task, N_PROBE, seed=99)
    learner = _build(case)
    learner.process(rows, targets)
    before = learner.predict_many(probe)

    clone = learner.clone()
    assert type(clone) is type(learner) and clone.kind == learner.kind and clone.task is learner.task
    assert clone.process(other_rows, other_targets) == _build(case).process(other_rows, other_targets)
    assert learner.predict_many(probe) == before, "learning in the clone changed the original"


def test_process_equals_one_at_a_time(case: Case) -> None:
    rows, targets = _stream(case)
    targets = _with_gaps(case.task, targets)
    batched, single = _build(case), _build(case)
    assert batched.process(rows, targets) == _one_at_a_time(single, rows, targets)

    probe, _ = make_stream(case.task, N_PROBE, seed=99)
    assert batched.predict_many(probe) == [single.predict_one(row) for row in probe]
    learn_rows, learn_targets = make_stream(case.task, 30, seed=98)
    batched.learn_many(learn_rows, learn_targets)
    for row, target in zip(learn_rows, learn_targets, strict=True):
        single.learn_one(row, target)
    assert batched.predict_many(probe) == single.predict_many(probe)


def test_memory_bytes_is_positive_and_bounded(case: Case) -> None:
    rows, targets = _stream(case)
    learner = _build(case)
    untrained = learner.memory_bytes()
    assert isinstance(untrained, int) and 0 < untrained < MEMORY_CEILING
    learner.process(rows, targets)
    trained = learner.memory_bytes()
    assert isinstance(trained, int) and 0 < trained < MEMORY_CEILING


def test_corrupt_snapshot_is_refused(case: Case) -> None:
    learner = _build(case)
    rows, targets = _stream(case)
    learner.process(rows[:50], targets[:50])
    data = learner.snapshot()
    for bad in (b"", b"garbage", data[: len(data) // 2], data[:-8]):
        with pytest.raises(SnapshotError):
            type(learner).restore(bad)
        with pytest.raises(SnapshotError):
            restore_learner(case.model.kind, bad)


@pytest.mark.parametrize(("kind", "other_kind"), KIND_PAIRS, ids=[f"{a}<-{b}" for a, b in KIND_PAIRS])
def test_snapshot_of_another_kind_is_refused(kind: str, other_kind: str) -> None:
    mine = _build(_cases_of(kind)[0])
    other_case = _cases_of(other_kind)[0]
    other = _build(other_case)
    rows, targets = make_stream(other_case.task, 20, seed=3)
    other.process(rows, targets)
    data = other.snapshot()
    with pytest.raises(SnapshotError):
        restore_learner(kind, data)
    if type(mine) is not type(other):
        with pytest.raises(SnapshotError):
            type(mine).restore(data)


# --- merging across the workers of a group (sync.scope: group; docs/models.md) ---------------------------------
#: what each River case does in group scope: merge exactly, average, or vote (cannot merge)
EXPECTED_MERGE_MODES = {
    "river-logreg-binary": MergeMode.AVERAGE,
    "river-pa-binary": MergeMode.AVERAGE,
    "river-gaussiannb-binary": MergeMode.EXACT,
    "river-gaussiannb-multiclass": MergeMode.EXACT,
    "river-linreg-regression": MergeMode.AVERAGE,
    "river-hat-binary": MergeMode.VIEW,
    "river-hat-multiclass": MergeMode.VIEW,
    "river-arf-binary": MergeMode.VIEW,
    "river-arf-multiclass": MergeMode.VIEW,
    "river-arf-regression": MergeMode.VIEW,
    "river-hst-anomaly": MergeMode.VIEW,
    "river-logreg-ovr-multiclass": MergeMode.VIEW,
}


def _numbers_only(rows: Sequence[Row]) -> list[Row]:
    return [Row({k: v for k, v in row.features.items() if not isinstance(v, str)}, row.key) for row in rows]


def _learn(learner: Learner, rows: Sequence[Row], targets: Sequence[Target | None]) -> int:
    learner.process(rows, targets)
    return sum(t is not None for t in targets) if learner.task is not Task.ANOMALY else len(rows)


def test_merge_mode_is_declared(case: Case) -> None:
    """Every kind says how it merges; torch models average, River's as listed (a new case must be listed)."""
    mode = _build(case).merge_mode()
    expected = EXPECTED_MERGE_MODES.get(case.id, MergeMode.AVERAGE if case.model.kind != "river" else None)
    assert mode is expected, (case.id, mode)


def test_two_members_merge_into_the_same_model(case: Case) -> None:
    """Two members learn different halves of a stream, then each merges the other's delta: mergeable kinds end
    with the same model (the same predictions on a probe, still valid outputs, and a snapshot that round-trips);
    view-mode kinds publish no delta, merge nothing, and vote with the other member's model instead."""
    rows, targets = _stream(case)
    # without entity keys: a sequence model's per-entity histories are its own, never merged
    probe = [Row(row.features) for row in make_stream(case.task, N_PROBE, seed=99)[0]]
    if case.model.kind != "river":
        # torch: one-hot columns follow the order in which each member met the categories, not aligned by a
        # merge yet (docs/models.md): numbers only
        rows, probe = _numbers_only(rows), _numbers_only(probe)
    labels = {t for t in targets if t is not None}
    first, second = _build(case), _build(case)
    first.mark_synced()
    second.mark_synced()
    half = N_LEARN // 2
    n_first = _learn(first, rows[:half], targets[:half])
    n_second = _learn(second, rows[half:N_LEARN], targets[half:N_LEARN])
    first.train_if_due()
    second.train_if_due()
    for learner in (first, second):  # torch: the partial mini-batch trains before the sync
        while getattr(learner, "pending", 0):
            learner._train_pending()  # type: ignore[attr-defined]
    d_first, d_second = first.sync_delta(), second.sync_delta()
    mode = first.merge_mode()
    if mode is MergeMode.VIEW:
        assert d_first is None and d_second is None
        alone = first.predict_many(probe)
        first.merge(None, n_first, [])
        assert first.predict_many(probe) == alone, "merging nothing changes nothing"
        first.set_views([restore_learner(case.model.kind, first.snapshot())])
        voted = first.predict_many(probe)
        assert [o.prediction for o in voted] == [o.prediction for o in alone], "a vote with its own copy agrees"
        first.set_views([second])
        for output in first.predict_many(probe):
            _check_output(case.task, output, labels)
        return
    assert d_first is not None and d_second is not None
    first.merge(d_first, n_first, [(d_second, n_second)])
    second.merge(d_second, n_second, [(d_first, n_first)])
    merged_first, merged_second = first.predict_many(probe), second.predict_many(probe)
    # equal up to the order of float sums (torch: float32 parameters summed in each member's order)
    tolerance = 1e-9 if case.model.kind == "river" else 1e-2
    for mine, theirs in zip(merged_first, merged_second, strict=True):
        _check_output(case.task, mine, labels)
        if isinstance(mine.prediction, float):
            assert isinstance(theirs.prediction, float)
            assert math.isclose(mine.prediction, theirs.prediction, rel_tol=tolerance, abs_tol=tolerance), \
                (mine, theirs)
        elif max(theirs.proba.values(), default=1.0) - min(theirs.proba.values(), default=0.0) > 2 * tolerance:
            assert mine.prediction == theirs.prediction, (mine, theirs)
        if mine.score is not None and theirs.score is not None:
            assert math.isclose(mine.score, theirs.score, rel_tol=tolerance, abs_tol=tolerance), (mine, theirs)
        for label, p in theirs.proba.items():
            assert math.isclose(mine.proba.get(label, -1.0), p, abs_tol=tolerance), (mine, theirs)
    restored = restore_learner(case.model.kind, first.snapshot())
    _assert_restored_equal(restored.predict_many(probe), merged_first, "merged, then restored")
    first.mark_synced()
    assert first.sync_delta() is not None, "a synced learner measures its next delta from the merged state"


def test_replay_member_learns_the_others_examples_after_its_own(case: Case) -> None:
    """Every kind can replay (``sync.merge: replay``): a member that merges the other member's delta ends as one
    learner that learned its own examples and then the other's would (unlabelled rows are neither recorded nor
    replayed; entity keys travel with the examples), the merged examples are not recorded again, and a clone keeps
    the mode with nothing recorded."""
    rows, targets = _stream(case)
    targets = _with_gaps(case.task, targets)
    probe = [Row(row.features) for row in make_stream(case.task, N_PROBE, seed=99)[0]]
    first, second, oracle = _build(case), _build(case), _build(case)
    assert first.replay(10_000) and second.replay(10_000)
    assert first.merge_mode() is MergeMode.REPLAY
    first.mark_synced()
    second.mark_synced()
    half = N_LEARN // 2
    n_first = _learn(first, rows[:half], targets[:half])
    n_second = _learn(second, rows[half:N_LEARN], targets[half:N_LEARN])
    d_first, d_second = first.sync_delta(), second.sync_delta()
    assert d_first is not None and d_second is not None
    assert len(list(replay.examples(d_second))) == n_second
    first.merge(d_first, n_first, [(d_second, n_second)])
    first.mark_synced()
    assert list(replay.examples(first.sync_delta() or b"")) == [], "merged examples are never published again"

    oracle.process(rows[:half], targets[:half])
    learned = [(row, t) for row, t in zip(rows[half:N_LEARN], targets[half:N_LEARN], strict=True)
               if t is not None or case.task is Task.ANOMALY]
    oracle.learn_many([row for row, _ in learned], [t for _, t in learned])
    merged, expected = first.predict_many(probe), oracle.predict_many(probe)
    for output in merged:
        _check_output(case.task, output, {t for t in targets if t is not None})
    _assert_restored_equal(merged, expected, "replayed against learned in order")

    copy_ = first.clone()
    assert copy_.merge_mode() is MergeMode.REPLAY
    assert list(replay.examples(copy_.sync_delta() or b"")) == []


def test_replay_buffer_is_bounded_and_counts_what_it_drops(case: Case) -> None:
    rows, targets = _stream(case)
    learner = _build(case)
    learner.replay(5)
    learner.mark_synced()
    learned = _learn(learner, rows[:12], targets[:12])
    assert len(list(replay.examples(learner.sync_delta() or b""))) == 5
    assert learner.replay_dropped() == learned - 5
    before = learner.memory_bytes()
    learner.mark_synced()
    assert learner.memory_bytes() < before, "the published examples are let go"
