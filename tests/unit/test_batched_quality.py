"""The batched scoreboards and baselines against the per-event implementation they replaced.

``tests/unit/reference/quality.py`` is the module as it was before scoring went per batch; a seeded stream of
several thousand labels, in batches of varied size (including empty ones and batches longer than the rolling
window), must give the same values: counts exactly, sums of floats within 1e-12.
"""

from __future__ import annotations

import random
from collections.abc import Hashable

import pytest
from prometheus_client import CollectorRegistry

from shared.contract import Event
from shared.learners.base import Output, Task
from shared.monitoring import quality
from shared.monitoring.metrics import Metrics
from shared.steps.batch import Batch, Record, Rejection
from shared.steps.score import ScoreStep
from tests.unit.reference import quality as reference
from tests.unit.reference.score import ScoreStep as ReferenceScoreStep

CLASSES: dict[Task, list[Hashable] | None] = {
    Task.BINARY: [True, False],
    Task.MULTICLASS: ["a", "b", "c", 1, 2],
    Task.REGRESSION: None,
}


def _stream(rng: random.Random, task: Task, k: int) -> tuple[list, list, list]:
    classes = CLASSES[task]
    y_true: list = []
    y_pred: list = []
    probas: list = []
    for _ in range(k):
        if classes is None:
            y_true.append(rng.gauss(0, 1))
            y_pred.append(None if rng.random() < 0.05 else rng.gauss(0, 1))
            probas.append(None)
            continue
        y_true.append(rng.choice(classes))
        y_pred.append(None if rng.random() < 0.05 else rng.choice(classes))
        roll = rng.random()
        if roll < 0.2:
            probas.append(None)
        elif roll < 0.25:
            probas.append({})
        elif roll < 0.3:
            probas.append({c: 0.0 for c in classes})
        else:
            probas.append({c: rng.random() for c in rng.sample(classes, 2)})
    return y_true, y_pred, probas


def _assert_same(new: dict, old: dict) -> None:
    assert new.keys() == old.keys()
    for key, value in old.items():
        assert new[key] == pytest.approx(value, rel=0, abs=1e-12), key


@pytest.mark.parametrize("task", list(CLASSES))
@pytest.mark.parametrize("window", [1, 7, 100, 1000])
def test_scoreboard_and_baselines_per_batch_equal_per_event(task: Task, window: int) -> None:
    if task is Task.REGRESSION and window == 1:
        pytest.skip("River's R2 cannot revert its only example (the same before and after)")
    rng = random.Random(f"{task}-{window}")
    board = quality.Scoreboard(task, window, max_classes=4)
    old_board = reference.Scoreboard(task, window, max_classes=4)
    base = quality.Baselines(task, window, max_classes=4)
    old_base = reference.Baselines(task, window, max_classes=4)
    total = 0
    while total < 6000:
        k = rng.choice([0, 1, 3, 50, 500, 1500])
        y_true, y_pred, probas = _stream(rng, task, k)
        total += k
        board.update_many(y_true, y_pred, probas)
        base.update_many(y_true)
        for t, p, proba in zip(y_true, y_pred, probas, strict=True):
            old_board.update(t, p, proba)
            old_base.update(t)
        _assert_same(board.values(), old_board.values())
        _assert_same(base.values(), old_base.values())
        assert board.n_scored == old_board.n_scored
    if task.is_classification:  # the counts are whole numbers: exact, not approximately equal
        for key in ("accuracy", "precision", "recall"):
            assert board.values()[(key, "rolling")] == old_board.values()[(key, "rolling")]


def test_single_updates_still_work() -> None:
    board, old_board = quality.Scoreboard(Task.BINARY, 5), reference.Scoreboard(Task.BINARY, 5)
    for i in range(40):
        proba = {True: i / 40, False: 1 - i / 40}
        board.update(i % 3 == 0, i % 2 == 0, proba)
        old_board.update(i % 3 == 0, i % 2 == 0, proba)
        assert board.values() == old_board.values()


def test_auc_add_many_equals_update_and_revert() -> None:
    rng = random.Random(3)
    batched, single = quality.BinnedROCAUC(50), quality.BinnedROCAUC(50)
    examples = [(rng.random() < 0.4, rng.choice([rng.random(), 0.0, 1.0, -1.0, float("nan")])) for _ in range(3000)]
    batched.add_many([e[0] for e in examples], [e[1] for e in examples])
    for is_positive, score in examples:
        single.update(is_positive, score)
    assert batched.get() == single.get()
    batched.add_many([e[0] for e in examples[:1000]], [e[1] for e in examples[:1000]], -1)
    for is_positive, score in examples[:1000]:
        single.revert(is_positive, score)
    assert batched.get() == single.get()
    assert (batched.n_positive, batched.n_negative) == (single.n_positive, single.n_negative)


@pytest.mark.parametrize("size", [1, 2, quality._FEW, quality._FEW + 1])
def test_auc_small_and_large_batches_equal_update_and_revert(size: int) -> None:
    """Batches up to ``_FEW`` examples take the item-by-item path, larger ones numpy's: both equal ``update``."""
    rng = random.Random(size)
    batched, single = quality.BinnedROCAUC(20), quality.BinnedROCAUC(20)
    examples = [(rng.random() < 0.4, rng.choice([rng.random(), 0.0, 1.0, 1.5, -1.0, float("nan")])) for _ in range(400)]
    for start in range(0, len(examples), size):
        chunk = examples[start:start + size]
        batched.add_many([e[0] for e in chunk], [e[1] for e in chunk])
        for is_positive, score in chunk:
            single.update(is_positive, score)
        if start % (3 * size) == 0:  # take some back out, as the rolling window does
            batched.add_many([e[0] for e in chunk], [e[1] for e in chunk], -1)
            for is_positive, score in chunk:
                single.revert(is_positive, score)
        assert batched.get() == single.get()
        assert (batched.n_positive, batched.n_negative) == (single.n_positive, single.n_negative)
    assert batched._positives.tolist() == single._positives.tolist()
    assert batched._negatives.tolist() == single._negatives.tolist()


def _record(i: int, rng: random.Random) -> Record:
    record = Record("events", 0, i, None, b"{}", 0)
    roll = rng.random()
    if roll < 0.05:
        record.rejection = Rejection("schema", "bad")
        return record
    label = rng.choice([True, False]) if rng.random() < 0.8 else None
    record.event = Event(id=f"e{i}", features={"x": 1.0}, label=label)
    if roll < 0.1:
        record.duplicate = True
        return record
    for name in ("a", "b"):
        p = rng.random()
        record.outputs[name] = Output(rng.choice([True, False, None]), {True: p, False: 1 - p})
    return record


def test_score_step_per_batch_equals_per_event() -> None:
    rng = random.Random(11)
    tasks = {"a": Task.BINARY, "b": Task.BINARY}
    batched = ScoreStep(Metrics(CollectorRegistry()), tasks, 200)
    single = ScoreStep(Metrics(CollectorRegistry()), tasks, 200)
    offset = 0
    for k in [1, 500, 37, 0, 500, 500, 2000]:
        records = [_record(offset + i, rng) for i in range(k)]
        offset += k
        batched.process(Batch(records, 0.0))
        for record in records:
            if record.is_valid and record.event is not None and record.event.label is not None:
                single.score(record.outputs, record.event.label)
        for name in tasks:
            assert batched.scoreboards[name].values() == single.scoreboards[name].values()
        assert batched.baselines is not None and single.baselines is not None
        assert batched.baselines.values() == single.baselines.values()
        assert batched.take_labelled() == single.take_labelled()


#: series the reference step predates: counters checked against a plain count in tests/unit/test_group_champion.py,
#: and the records kept to be scored together (tests/unit/test_score_fold.py)
_NEWER = ("streamlearn_predictions_scored", "streamlearn_predictions_correct", "streamlearn_prediction_",
          "streamlearn_kept_records")


def _samples(metrics: Metrics) -> list[tuple[str, tuple, float]]:
    return [(s.name, tuple(sorted(s.labels.items())), s.value) for metric in metrics.registry.collect()
            for s in metric.samples if not s.name.endswith("_created") and not s.name.startswith(_NEWER)]


def test_score_step_metrics_equal_reference_step() -> None:
    rng = random.Random(12)
    tasks = {"a": Task.BINARY, "b": Task.BINARY}
    new_metrics, old_metrics = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    new, old = ScoreStep(new_metrics, tasks, 100), ReferenceScoreStep(old_metrics, tasks, 100)
    offset = 0
    for k in [3, 500, 0, 1200, 77]:
        records = [_record(offset + i, rng) for i in range(k)]
        offset += k
        new.process(Batch(records, 0.0))
        old.process(Batch(records, 0.0))
        new.export()
        old.export()
        assert _samples(new_metrics) == _samples(old_metrics)
    assert new.take_labelled() == old.take_labelled() > 1000


def test_score_step_exports_at_most_every_interval_unless_forced() -> None:
    rng = random.Random(13)
    now = [100.0]
    metrics = Metrics(CollectorRegistry())
    step = ScoreStep(metrics, {"a": Task.BINARY, "b": Task.BINARY}, 50, export_interval_s=1.0,
                     monotonic=lambda: now[0])
    labels = {"model": "a", "metric": "accuracy", "window": "cumulative"}

    def exported() -> float | None:
        return metrics.registry.get_sample_value("streamlearn_model_metric", labels)

    step.process(Batch([_record(i, rng) for i in range(40)], 0.0))
    step.export()
    first = exported()
    assert first is not None  # the first export is never held back
    step.process(Batch([_record(40 + i, rng) for i in range(200)], 0.0))
    now[0] += 0.5
    step.export()
    assert exported() == first  # within the interval: the gauges keep their values
    now[0] += 0.5
    step.export()
    current = step.scoreboards["a"].values()[("accuracy", "cumulative")]
    assert exported() == current != first
    step.process(Batch([_record(240 + i, rng) for i in range(200)], 0.0))
    step.export(force=True)  # the worker forces the last export when it stops
    assert exported() == step.scoreboards["a"].values()[("accuracy", "cumulative")]
