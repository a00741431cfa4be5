"""Scoreboard and baselines: River-exact accuracy, every metric against a plain reference, rolling windows."""

from __future__ import annotations

import math
import pickle
import random

import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing

from shared.learners.base import Task
from shared.monitoring.quality import (
    CLASSIFICATION_METRICS,
    OTHER_CLASS,
    REGRESSION_METRICS,
    Baselines,
    BinnedROCAUC,
    Scoreboard,
    metric_names,
)

# --- plain references --------------------------------------------------------------------------------


def ref_accuracy(ys: list, ps: list) -> float:
    return sum(y == p for y, p in zip(ys, ps, strict=True)) / len(ys)


def ref_precision_recall(ys: list, ps: list, label: object) -> tuple[float, float]:
    tp = sum(1 for y, p in zip(ys, ps, strict=True) if y == label and p == label)
    predicted = sum(1 for p in ps if p == label)
    actual = sum(1 for y in ys if y == label)
    return (tp / predicted if predicted else 0.0), (tp / actual if actual else 0.0)


def ref_f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def ref_macro(ys: list, ps: list) -> tuple[float, float, float]:
    classes = sorted(set(ys) | set(ps))
    prs = [ref_precision_recall(ys, ps, c) for c in classes]
    precision = sum(p for p, _ in prs) / len(classes)
    recall = sum(r for _, r in prs) / len(classes)
    f1 = sum(ref_f1(p, r) for p, r in prs) / len(classes)
    return precision, recall, f1


def ref_log_loss(ys: list, probas: list[dict]) -> float:
    clamp = lambda p: min(max(p, 1e-15), 1 - 1e-15)  # noqa: E731
    return sum(-math.log(clamp(proba.get(y, 0.0))) for y, proba in zip(ys, probas, strict=True)) / len(ys)


def ref_auc(ys: list[bool], scores: list[float]) -> float:
    pos = [s for y, s in zip(ys, scores, strict=True) if y]
    neg = [s for y, s in zip(ys, scores, strict=True) if not y]
    won = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return won / (len(pos) * len(neg))


def ref_regression(ys: list[float], ps: list[float]) -> dict[str, float]:
    n = len(ys)
    mean = sum(ys) / n
    sse = sum((y - p) ** 2 for y, p in zip(ys, ps, strict=True))
    sst = sum((y - mean) ** 2 for y in ys)
    return {"mae": sum(abs(y - p) for y, p in zip(ys, ps, strict=True)) / n, "rmse": math.sqrt(sse / n),
            "r2": 1 - sse / sst}


# --- seeded streams ----------------------------------------------------------------------------------


def binary_stream(n: int, seed: int) -> list[tuple[bool, bool, dict]]:
    """Labels, predictions and probabilities; scores on a 1e-3 grid with distinct bins per value."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        y = rng.random() < 0.4
        p_true = round(min(max(rng.gauss(0.65 if y else 0.35, 0.2), 0.0005), 0.9995) - 0.0005, 3) + 0.0005
        rows.append((y, p_true >= 0.5, {True: p_true, False: 1 - p_true}))
    return rows


def multiclass_stream(n: int, seed: int) -> list[tuple[str, str, dict]]:
    rng = random.Random(seed)
    classes = ["a", "b", "c"]
    rows = []
    for _ in range(n):
        y = rng.choice(classes)
        pred = y if rng.random() < 0.6 else rng.choice(classes)
        weights = {c: rng.random() + (1.5 if c == pred else 0.0) for c in classes}
        total = sum(weights.values())
        rows.append((y, pred, {c: w / total for c, w in weights.items()}))
    return rows


def regression_stream(n: int, seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        y = rng.gauss(50.0, 10.0)
        rows.append((y, y + rng.gauss(0.0, 3.0)))
    return rows


# --- tests -------------------------------------------------------------------------------------------


def test_cumulative_accuracy_equals_river_progressive_validation_exactly() -> None:
    board = Scoreboard(Task.BINARY, window=100)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x, y in datasets.Phishing():
        board.update(y, model.predict_one(x), model.predict_proba_one(x))
        model.learn_one(x, y)
    reference = evaluate.progressive_val_score(
        datasets.Phishing(), preprocessing.StandardScaler() | linear_model.LogisticRegression(), metrics.Accuracy())
    assert board.values()[("accuracy", "cumulative")] == reference.get()


def test_cumulative_accuracy_equals_river_on_seeded_multiclass_stream() -> None:
    board = Scoreboard(Task.MULTICLASS, window=50)
    accuracy = metrics.Accuracy()
    for y, pred, proba in multiclass_stream(3000, seed=7):
        board.update(y, pred, proba)
        accuracy.update(y, pred)
    assert board.values()[("accuracy", "cumulative")] == accuracy.get()


@pytest.mark.parametrize("window", [1, 37, 5000])
def test_binary_metrics_match_reference_cumulative_and_rolling(window: int) -> None:
    rows = binary_stream(2000, seed=3)
    board = Scoreboard(Task.BINARY, window=window)
    for y, pred, proba in rows:
        board.update(y, pred, proba)
    values = board.values()
    for name, part in (("cumulative", rows), ("rolling", rows[-window:])):
        ys, ps, probas = [r[0] for r in part], [r[1] for r in part], [r[2] for r in part]
        precision, recall = ref_precision_recall(ys, ps, True)
        assert values[("accuracy", name)] == pytest.approx(ref_accuracy(ys, ps), abs=1e-12)
        assert values[("precision", name)] == pytest.approx(precision, abs=1e-12)
        assert values[("recall", name)] == pytest.approx(recall, abs=1e-12)
        assert values[("f1", name)] == pytest.approx(ref_f1(precision, recall), abs=1e-12)
        assert values[("log_loss", name)] == pytest.approx(ref_log_loss(ys, probas), abs=1e-9)
        if len(set(ys)) == 2:
            assert values[("roc_auc", name)] == pytest.approx(ref_auc(ys, [p[True] for p in probas]), abs=1e-9)
        else:
            assert ("roc_auc", name) not in values


def test_binary_with_integer_labels_and_custom_positive_class() -> None:
    rows = binary_stream(500, seed=11)
    as_int = Scoreboard(Task.BINARY, window=100)
    as_words = Scoreboard(Task.BINARY, window=100, positive="yes")
    word = {True: "yes", False: "no"}
    for y, pred, proba in rows:
        as_int.update(int(y), int(pred), {1: proba[True], 0: proba[False]})
        as_words.update(word[y], word[pred], {"yes": proba[True], "no": proba[False]})
    assert as_int.values() == pytest.approx(as_words.values(), abs=1e-12)
    assert set(as_int.values()) == {(m, w) for m in CLASSIFICATION_METRICS for w in ("cumulative", "rolling")}


def test_multiclass_macro_metrics_match_reference() -> None:
    rows = multiclass_stream(1500, seed=5)
    board = Scoreboard(Task.MULTICLASS, window=200)
    for y, pred, proba in rows:
        board.update(y, pred, proba)
    values = board.values()
    for name, part in (("cumulative", rows), ("rolling", rows[-200:])):
        ys, ps, probas = [r[0] for r in part], [r[1] for r in part], [r[2] for r in part]
        precision, recall, f1 = ref_macro(ys, ps)
        assert values[("accuracy", name)] == pytest.approx(ref_accuracy(ys, ps), abs=1e-12)
        assert values[("precision", name)] == pytest.approx(precision, abs=1e-12)
        assert values[("recall", name)] == pytest.approx(recall, abs=1e-12)
        assert values[("f1", name)] == pytest.approx(f1, abs=1e-12)
        assert values[("log_loss", name)] == pytest.approx(ref_log_loss(ys, probas), abs=1e-9)
        assert ("roc_auc", name) not in values


def test_regression_metrics_match_reference() -> None:
    rows = regression_stream(3000, seed=2)
    board = Scoreboard(Task.REGRESSION, window=250)
    for y, pred in rows:
        board.update(y, pred)
    values = board.values()
    assert {m for m, _ in values} == set(REGRESSION_METRICS)
    for name, part in (("cumulative", rows), ("rolling", rows[-250:])):
        reference = ref_regression([r[0] for r in part], [r[1] for r in part])
        for metric, expected in reference.items():
            assert values[(metric, name)] == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_rolling_window_equals_a_fresh_board_on_the_last_events() -> None:
    rows = binary_stream(1000, seed=9)
    board = Scoreboard(Task.BINARY, window=120)
    for y, pred, proba in rows:
        board.update(y, pred, proba)
    fresh = Scoreboard(Task.BINARY, window=120)
    for y, pred, proba in rows[-120:]:
        fresh.update(y, pred, proba)
    rolling = {m: v for (m, w), v in board.values().items() if w == "rolling"}
    fresh_cumulative = {m: v for (m, w), v in fresh.values().items() if w == "cumulative"}
    assert rolling == pytest.approx(fresh_cumulative, abs=1e-9)
    assert len(board._history) == 120


def test_rolling_reacts_to_a_change_and_cumulative_lags() -> None:
    board = Scoreboard(Task.BINARY, window=100)
    for _ in range(1000):
        board.update(True, True)
    for _ in range(100):
        board.update(True, False)
    values = board.values()
    assert values[("accuracy", "rolling")] == 0.0
    assert values[("accuracy", "cumulative")] == pytest.approx(1000 / 1100)


def test_untrained_predictions_and_anomaly_tasks_are_not_scored() -> None:
    board = Scoreboard(Task.BINARY, window=10)
    assert board.values() == {}
    board.update(True, None, None)
    assert board.values() == {} and board.n_scored == 0
    board.update(True, True, None)
    assert board.values()[("accuracy", "cumulative")] == 1.0
    assert ("log_loss", "cumulative") not in board.values()
    anomaly = Scoreboard(Task.ANOMALY, window=10)
    anomaly.update(True, True, None)
    assert anomaly.values() == {} and metric_names(Task.ANOMALY) == ()
    assert Baselines(Task.ANOMALY, 10).values() == {}


def test_classes_beyond_the_cap_are_pooled() -> None:
    board = Scoreboard(Task.MULTICLASS, window=10, max_classes=3)
    for i in range(50):
        board.update(f"c{i}", f"c{i}")
    assert board._classes == {"c0", "c1", "c2"}
    assert set(board._cumulative.cm.classes) == {"c0", "c1", "c2", OTHER_CLASS}


def test_values_are_cached_until_the_next_update() -> None:
    board = Scoreboard(Task.BINARY, window=10)
    board.update(True, True)
    first = board.values()
    first[("accuracy", "cumulative")] = -1.0
    assert board.values()[("accuracy", "cumulative")] == 1.0
    board.update(True, False)
    assert board.values()[("accuracy", "cumulative")] == 0.5


def test_binned_auc_counts_ties_as_half_and_reverts() -> None:
    auc = BinnedROCAUC(bins=10)
    auc.update(True, 0.91)
    auc.update(False, 0.95)  # same bin as the positive: a tie
    auc.update(False, 0.1)
    assert auc.get() == pytest.approx((1 + 0.5) / 2)
    auc.revert(False, 0.95)
    assert auc.get() == 1.0
    assert BinnedROCAUC().get() is None


def test_baselines_score_previous_label_and_majority() -> None:
    labels = ["a", "b", "b", "a", "b", "c", "c", "c", "c", "a"]
    baselines = Baselines(Task.MULTICLASS, window=4)
    no_change, majority = [], []
    counts: dict[str, int] = {}
    best: str | None = None
    for i, y in enumerate(labels):
        assert baselines.predictions() == {"no_change": labels[i - 1] if i else None, "majority": best}
        if i:
            no_change.append(labels[i - 1])
            majority.append(best)
        baselines.update(y)
        counts[y] = counts.get(y, 0) + 1
        if best is None or counts[y] > counts[best]:
            best = y
    values = baselines.values()
    scored = labels[1:]
    assert values[("no_change", "accuracy", "cumulative")] == pytest.approx(ref_accuracy(scored, no_change))
    assert values[("majority", "accuracy", "cumulative")] == pytest.approx(ref_accuracy(scored, majority))
    assert values[("majority", "accuracy", "rolling")] == pytest.approx(ref_accuracy(scored[-4:], majority[-4:]))
    assert {b for b, _, _ in values} == {"no_change", "majority"}
    assert {m for _, m, _ in values} == {"accuracy", "precision", "recall", "f1"}


def test_mean_baseline_for_regression() -> None:
    rows = regression_stream(500, seed=4)
    labels = [y for y, _ in rows]
    baselines = Baselines(Task.REGRESSION, window=100)
    for y in labels:
        baselines.update(y)
    means = [sum(labels[:i]) / i for i in range(1, len(labels))]
    reference = ref_regression(labels[1:], means)
    no_change = ref_regression(labels[1:], labels[:-1])
    values = baselines.values()
    for metric in REGRESSION_METRICS:
        assert values[("mean", metric, "cumulative")] == pytest.approx(reference[metric], rel=1e-9)
        assert values[("no_change", metric, "cumulative")] == pytest.approx(no_change[metric], rel=1e-9)


def test_scoreboard_survives_a_pickle_round_trip() -> None:
    rows = binary_stream(300, seed=1)
    board = Scoreboard(Task.BINARY, window=50)
    for y, pred, proba in rows[:200]:
        board.update(y, pred, proba)
    restored = pickle.loads(pickle.dumps(board))
    for y, pred, proba in rows[200:]:
        board.update(y, pred, proba)
        restored.update(y, pred, proba)
    assert restored.values() == board.values()


def test_baselines_score_in_batches_with_the_scores_of_one_at_a_time() -> None:
    from shared.monitoring.quality import BASELINE_SCORE_EVERY

    rng = random.Random(3)
    labels = [rng.choice(["a", "b", "c"]) for _ in range(2 * BASELINE_SCORE_EVERY + 37)]
    batched, single = Baselines(Task.MULTICLASS, window=100), Baselines(Task.MULTICLASS, window=100)
    for start in range(0, len(labels), 18):
        batched.update_many(labels[start:start + 18])
        assert len(batched._waiting[0]) < BASELINE_SCORE_EVERY, "the labels waiting to be scored are bounded"
    for label in labels:
        single.update(label)
    assert len(batched._waiting[0]) > 0, "the last labels wait (fewer than a batch)"
    assert batched.values() == single.values(), "reading the values scores what waits"
    assert len(batched._waiting[0]) == 0
    assert batched.scoreboards["no_change"].n_scored == len(labels) - 1  # the first label has no previous one
