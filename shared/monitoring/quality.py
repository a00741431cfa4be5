"""Prequential model quality: a scoreboard per model, cumulative and over a rolling window, and baselines.

Label metrics come from River (a shared :class:`river.metrics.ConfusionMatrix` for classification, so the
cumulative accuracy is exactly River's ``metrics.Accuracy``; ``MAE``, ``RMSE`` and ``R2`` for regression).
Log loss and ROC AUC use the class probabilities; the AUC is read off a fixed-size score histogram that
can also revert (see ``docs/drift.md``). Every update is O(1); ``values`` is cached until the next update.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Hashable, Mapping, Sequence
from itertools import chain, islice
from operator import itemgetter
from typing import Final

import numpy as np
from river import metrics

from shared.learners.base import Target, Task

CUMULATIVE: Final = "cumulative"
ROLLING: Final = "rolling"
WINDOWS: Final = (CUMULATIVE, ROLLING)

CLASSIFICATION_METRICS: Final = ("accuracy", "precision", "recall", "f1", "log_loss", "roc_auc")
REGRESSION_METRICS: Final = ("mae", "rmse", "r2")

NO_CHANGE: Final = "no_change"
MAJORITY: Final = "majority"
MEAN: Final = "mean"

#: labels beyond this many distinct classes are scored as this one class (keeps the matrix bounded)
OTHER_CLASS: Final = "__other__"
DEFAULT_MAX_CLASSES: Final = 256
DEFAULT_AUC_BINS: Final = 1000
_PROBA_EPSILON: Final = 1e-15
#: batches of at most this many examples update the AUC histograms item by item, larger ones with numpy
_FEW: Final = 32


def metric_names(task: Task) -> tuple[str, ...]:
    """The metrics a :class:`Scoreboard` reports for ``task`` (none for anomaly detection)."""
    if task.is_classification:
        return CLASSIFICATION_METRICS
    if task is Task.REGRESSION:
        return REGRESSION_METRICS
    return ()


def _clamp(p: float) -> float:
    return min(max(p, _PROBA_EPSILON), 1.0 - _PROBA_EPSILON)


class BinnedROCAUC:
    """ROC AUC over fixed score bins in [0, 1]: O(1) update and revert, O(bins) ``get``.

    Scores in the same bin count as ties (half a pair), so the value is exact when no positive shares a
    bin with a negative, and otherwise off by at most half the share of such pairs.
    """

    def __init__(self, bins: int = DEFAULT_AUC_BINS) -> None:
        if bins < 2:
            raise ValueError("bins must be at least 2")
        self.bins = bins
        self._positives = np.zeros(bins, dtype=np.int64)
        self._negatives = np.zeros(bins, dtype=np.int64)
        self.n_positive = 0
        self.n_negative = 0

    def _bin(self, score: float) -> int:
        if not score > 0.0:
            return 0
        return min(int(score * self.bins), self.bins - 1)

    def update(self, is_positive: bool, score: float) -> None:
        """Count one example: its true class and its positive-class score."""
        if is_positive:
            self._positives[self._bin(score)] += 1
            self.n_positive += 1
        else:
            self._negatives[self._bin(score)] += 1
            self.n_negative += 1

    def revert(self, is_positive: bool, score: float) -> None:
        """Remove one example counted before."""
        if is_positive:
            self._positives[self._bin(score)] -= 1
            self.n_positive -= 1
        else:
            self._negatives[self._bin(score)] -= 1
            self.n_negative -= 1

    def add_many(self, is_positive: Sequence[bool], scores: Sequence[float], sign: int = 1) -> None:
        """Count (``sign`` 1) or remove (-1) a batch of examples: :meth:`update` / :meth:`revert` for each."""
        if len(scores) <= _FEW:  # a few examples: item by item (two histograms of ``bins`` each cost more)
            positives, negatives, n_positive = self._positives, self._negatives, 0
            for counts_as_positive, score in zip(is_positive, scores, strict=True):
                index = self._bin(score)
                if counts_as_positive:
                    positives[index] += sign
                    n_positive += 1
                else:
                    negatives[index] += sign
            self.n_positive += sign * n_positive
            self.n_negative += sign * (len(scores) - n_positive)
            return
        values = np.asarray(scores, dtype=float)
        bins = np.zeros(len(values), dtype=np.int64)
        above = values > 0.0  # NaN and non-positive scores go to bin 0, as in ``_bin``
        bins[above] = np.minimum(values[above] * self.bins, self.bins - 1).astype(np.int64)
        positive = np.asarray(is_positive, dtype=bool)
        n_positive = int(positive.sum())
        if n_positive:
            self._positives += sign * np.bincount(bins[positive], minlength=self.bins)
        if n_positive < len(values):
            self._negatives += sign * np.bincount(bins[~positive], minlength=self.bins)
        self.n_positive += sign * n_positive
        self.n_negative += sign * (len(values) - n_positive)

    def get(self) -> float | None:
        """The AUC, or ``None`` until both classes have been seen."""
        if self.n_positive == 0 or self.n_negative == 0:
            return None
        negatives_below = np.cumsum(self._negatives) - self._negatives
        pairs_won = float(np.dot(self._positives, negatives_below + 0.5 * self._negatives))
        return pairs_won / (self.n_positive * self.n_negative)


#: what one labelled example contributes, kept in the rolling window to be reverted later:
#: ``(y_true, y_pred, log loss or None, positive-class score or None)``
_Scored = tuple[Target, Target, float | None, float | None]
_PAIR = itemgetter(0, 1)


def _apply_pairs(cm: metrics.ConfusionMatrix, pairs: Counter[tuple[Target, Target]], sign: float) -> None:
    """Add (``sign`` 1.0) or remove (-1.0) ``count`` examples per ``(y_true, y_pred)`` pair.

    The same cells and sums as ``count`` calls of ``cm.update`` / ``cm.revert``: every weight is 1.0, so the
    float sums hold whole numbers and are exact in any order.
    """
    data, sum_row, sum_col = cm.data, cm.sum_row, cm.sum_col
    total = 0
    true_positives = 0.0
    for (y_true, y_pred), count in pairs.items():
        w = sign * count
        data[y_true][y_pred] += w
        sum_row[y_true] += w
        sum_col[y_pred] += w
        if y_true == y_pred:
            true_positives += w
        total += count
    cm.n_samples += int(sign) * total
    cm.total_weight = cm.total_weight + sign * total  # type: ignore[assignment]  # River starts it at int 0
    cm._total_true_positives += true_positives


class _Tally:
    """The metrics of one window: examples are added and removed, one at a time or a batch at a time."""

    def __init__(self, task: Task, positive: Target, auc: BinnedROCAUC) -> None:
        self.task = task
        self.positive = positive
        self.n = 0
        self.loss_sum = 0.0
        self.loss_n = 0
        self._auc = auc
        #: read on every update (an enum property costs more than the update's own arithmetic)
        self.classification = task.is_classification
        if task.is_classification:
            self.cm = metrics.ConfusionMatrix()
            self.accuracy = metrics.Accuracy(cm=self.cm)
            if task is Task.BINARY:
                self.precision: metrics.base.Metric = metrics.Precision(cm=self.cm, pos_val=positive)
                self.recall: metrics.base.Metric = metrics.Recall(cm=self.cm, pos_val=positive)
                self.f1: metrics.base.Metric = metrics.F1(cm=self.cm, pos_val=positive)
            else:
                self.precision = metrics.MacroPrecision(cm=self.cm)
                self.recall = metrics.MacroRecall(cm=self.cm)
                self.f1 = metrics.MacroF1(cm=self.cm)
        else:
            self.mae = metrics.MAE()
            self.rmse = metrics.RMSE()
            self.r2 = metrics.R2()

    # --- regression: one at a time (River's running statistics depend on the order) ------------------
    def update(self, item: _Scored) -> None:
        self.n += 1
        y_true, y_pred = float(item[0]), float(item[1])
        self.mae.update(y_true, y_pred)
        self.rmse.update(y_true, y_pred)
        self.r2.update(y_true, y_pred)

    def revert(self, item: _Scored) -> None:
        self.n -= 1
        y_true, y_pred = float(item[0]), float(item[1])
        self.mae.revert(y_true, y_pred)
        self.rmse.revert(y_true, y_pred)
        self.r2.revert(y_true, y_pred)

    # --- classification: counts, so a batch is added at once (the loss sums are kept by the scoreboard) --
    def add_counts(self, items: Sequence[_Scored], sign: float) -> None:
        """Add (``sign`` 1.0) or remove (-1.0) the confusion-matrix cells and AUC bins of ``items``."""
        if not items:
            return
        self.n += int(sign) * len(items)
        _apply_pairs(self.cm, Counter(map(_PAIR, items)), sign)
        scored = [(item[0] == self.positive, item[3]) for item in items if item[3] is not None]
        if scored:
            self._auc.add_many([s[0] for s in scored], [s[1] for s in scored], int(sign))

    def values(self) -> dict[str, float]:
        if self.n == 0:
            return {}
        if not self.task.is_classification:
            result = {"mae": float(self.mae.get()), "rmse": float(self.rmse.get())}
            if self.n >= 2:
                result["r2"] = float(self.r2.get())
            return result
        result = {
            "accuracy": float(self.accuracy.get()),
            "precision": float(self.precision.get()),
            "recall": float(self.recall.get()),
            "f1": float(self.f1.get()),
        }
        if self.loss_n > 0:
            result["log_loss"] = self.loss_sum / self.loss_n
        auc = self._auc.get()
        if auc is not None:
            result["roc_auc"] = auc
        return result


class Scoreboard:
    """Prequential quality of one model, cumulative and over the last ``window`` labelled examples.

    Call :meth:`update` with each label and the prediction made before learning it, or :meth:`update_many`
    with a batch of them (the same result as one call each, in order). A ``None`` prediction (an untrained
    model) is not scored, as in River's ``evaluate.progressive_val_score``. For binary tasks ``positive`` is
    the positive class (``True`` also matches ``1``); probabilities are looked up by class.
    """

    def __init__(
        self,
        task: Task,
        window: int,
        *,
        positive: Target = True,
        max_classes: int = DEFAULT_MAX_CLASSES,
        auc_bins: int = DEFAULT_AUC_BINS,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.task = task
        self.window = window
        self.positive = positive
        self.max_classes = max_classes
        self._classes: set[Hashable] = set()
        self._history: deque[_Scored] = deque(maxlen=window)
        self._cumulative = _Tally(task, positive, BinnedROCAUC(auc_bins))
        self._rolling = _Tally(task, positive, BinnedROCAUC(auc_bins))
        self._updates = 0
        self._cache: dict[tuple[str, str], float] | None = None

    @property
    def n_scored(self) -> int:
        """Labelled examples scored since the start."""
        return self._cumulative.n

    def update(self, y_true: Target, y_pred: Target | None, proba: Mapping[Target, float] | None = None) -> None:
        """Score one prediction against its label."""
        self.update_many((y_true,), (y_pred,), (proba,))

    def update_many(
        self,
        y_true: Sequence[Target],
        y_pred: Sequence[Target | None],
        probas: Sequence[Mapping[Target, float] | None] | None = None,
    ) -> None:
        """Score a batch of predictions against their labels: the same as :meth:`update` for each, in order."""
        if self.task is Task.ANOMALY:
            return
        if probas is None:
            probas = (None,) * len(y_true)
        if not self._cumulative.classification:
            self._update_regression([(t, p, None, None) for t, p in zip(y_true, y_pred, strict=True) if p is not None])
            return
        items = self._score_many(y_true, y_pred, probas)
        if items:
            self._update_classification(items)
            self._cache = None

    def _score_many(
        self, y_true: Sequence[Target], y_pred: Sequence[Target | None], probas: Sequence[Mapping[Target, float] | None]
    ) -> list[_Scored]:
        classes, max_classes = self._classes, self.max_classes
        binary, positive = self.task is Task.BINARY, self.positive
        low, high = _PROBA_EPSILON, 1.0 - _PROBA_EPSILON
        log = math.log
        items: list[_Scored] = []
        append = items.append
        for t, p, proba in zip(y_true, y_pred, probas, strict=True):
            if p is None:
                continue
            if t not in classes:  # the bounded class (labels beyond max_classes are one class)
                if len(classes) < max_classes:
                    classes.add(t)
                else:
                    t = OTHER_CLASS
            if p not in classes:
                if len(classes) < max_classes:
                    classes.add(p)
                else:
                    p = OTHER_CLASS
            if not proba:
                append((t, p, None, None))
                continue
            loss = -log(min(max(proba.get(t, 0.0), low), high))
            if binary:
                append((t, p, loss, min(max(proba.get(positive, 0.0), low), high)))
            else:
                append((t, p, loss, None))
        return items

    def _update_classification(self, items: list[_Scored]) -> None:
        """Add a batch in O(batch): the window is read only where items leave it (and once a window, to re-sum)."""
        window, history = self.window, self._history
        cumulative, rolling = self._cumulative, self._rolling
        k, n_old = len(items), len(history)
        n_removed = max(0, n_old + k - window)
        # the items that leave the window: the oldest of the history, then (a batch longer than the window) its own
        removed = list(islice(history, min(n_removed, n_old))) + items[: max(0, n_removed - n_old)]
        # counts: exact whole numbers, so one addition per batch equals one per example
        cumulative.add_counts(items, 1.0)
        rolling.add_counts(items, 1.0)
        rolling.add_counts(removed, -1.0)
        # cumulative log loss: the same additions in the same order
        loss_sum, loss_n = cumulative.loss_sum, cumulative.loss_n
        for item in items:
            loss = item[2]
            if loss is not None:
                loss_sum += loss
                loss_n += 1
        cumulative.loss_sum, cumulative.loss_n = loss_sum, loss_n
        # rolling log loss: replay the removals, additions and periodic re-sums in the order of one at a time;
        # counting positions over history + items, the item that leaves at position j is removed[j - window]
        loss_sum, loss_n = rolling.loss_sum, rolling.loss_n
        updates = self._updates
        for j in range(n_old, n_old + k):
            if j >= window:
                gone = removed[j - window][2]
                if gone is not None:
                    loss_sum -= gone
                    loss_n -= 1
            loss = items[j - n_old][2]
            if loss is not None:
                loss_sum += loss
                loss_n += 1
            updates += 1
            if updates % window == 0:  # re-add from scratch (float subtraction drifts over millions of reverts)
                loss_sum, loss_n = self._window_losses(items, j - n_old + 1)
        rolling.loss_sum, rolling.loss_n = loss_sum, loss_n
        self._updates = updates
        history.extend(items)

    def _window_losses(self, items: list[_Scored], taken: int) -> tuple[float, int]:
        """The exact sum and count of the losses in the window once the first ``taken`` of ``items`` are in it."""
        window, history = self.window, self._history
        from_items = items[max(0, taken - window): taken]
        from_history = islice(history, max(0, len(history) + len(from_items) - window), None)
        kept = [x[2] for x in chain(from_history, from_items) if x[2] is not None]
        return math.fsum(kept), len(kept)

    def _update_regression(self, items: list[_Scored]) -> None:
        history, window = self._history, self.window
        for item in items:
            self._cumulative.update(item)
            if len(history) == window:
                self._rolling.revert(history.popleft())
            self._rolling.update(item)
            history.append(item)
            self._updates += 1
        if items:
            self._cache = None

    def values(self) -> dict[tuple[str, str], float]:
        """``{(metric, window): value}`` with window ``cumulative`` or ``rolling``; undefined ones left out."""
        if self._cache is None:
            cache: dict[tuple[str, str], float] = {}
            for window, tally in ((CUMULATIVE, self._cumulative), (ROLLING, self._rolling)):
                for metric, value in tally.values().items():
                    cache[(metric, window)] = value
            self._cache = cache
        return dict(self._cache)


#: the baselines score what they predicted once this many labels wait (or when their values are read)
BASELINE_SCORE_EVERY: Final = 512


class Baselines:
    """Reference predictors scored on the same labels as the models.

    ``no_change`` predicts the previous label; ``majority`` (classification) the most frequent label so
    far; ``mean`` (regression) the running mean of the labels so far. Each predicts before it sees the
    label, like the models. Their predictions are made at once; they are scored in batches of
    ``BASELINE_SCORE_EVERY`` labels, or when their values are read: the same scores, without a scoreboard's
    per-batch cost on every small poll (only the gauges read them, at most every export interval).
    """

    def __init__(
        self, task: Task, window: int, *, positive: Target = True, max_classes: int = DEFAULT_MAX_CLASSES
    ) -> None:
        self.task = task
        self._scoreboards: dict[str, Scoreboard] = {}
        #: labels and what each baseline predicted for them, not scored yet (at most ``BASELINE_SCORE_EVERY``)
        self._waiting: tuple[list[Target], list[Target | None], list[Target | None]] = ([], [], [])
        if task is Task.ANOMALY:
            return
        second = MAJORITY if task.is_classification else MEAN
        for name in (NO_CHANGE, second):
            self._scoreboards[name] = Scoreboard(task, window, positive=positive, max_classes=max_classes)
        self.max_classes = max_classes
        self._previous: Target | None = None
        self._counts: dict[Target, int] = {}
        self._majority: Target | None = None
        self._mean = 0.0
        self._n = 0

    def predictions(self) -> dict[str, Target | None]:
        """What each baseline predicts for the next label."""
        if self.task is Task.ANOMALY:
            return {}
        if self.task.is_classification:
            return {NO_CHANGE: self._previous, MAJORITY: self._majority}
        return {NO_CHANGE: self._previous, MEAN: self._mean if self._n else None}

    def update(self, y_true: Target) -> None:
        """Score every baseline on ``y_true``, then let them learn it."""
        self.update_many((y_true,))

    def update_many(self, labels: Sequence[Target]) -> None:
        """:meth:`update` for each label in order: the predictions are made one by one, scored per batch."""
        if self.task is Task.ANOMALY or not labels:
            return
        no_change: list[Target | None] = []
        other: list[Target | None] = []
        previous = self._previous
        if self.task.is_classification:
            counts, majority, max_classes = self._counts, self._majority, self.max_classes
            for label in labels:
                no_change.append(previous)
                other.append(majority)
                previous = label
                count = counts.get(label)
                if count is None:
                    if len(counts) >= max_classes:
                        continue
                    count = 0
                count += 1
                counts[label] = count
                if majority is None or count > counts[majority]:
                    majority = label
            self._majority = majority
        else:
            n, mean = self._n, self._mean
            for label in labels:
                no_change.append(previous)
                other.append(mean if n else None)
                previous = label
                n += 1
                mean += (float(label) - mean) / n
            self._n, self._mean = n, mean
        self._previous = previous
        waiting_labels, waiting_no_change, waiting_other = self._waiting
        waiting_labels += labels
        waiting_no_change += no_change
        waiting_other += other
        if len(waiting_labels) >= BASELINE_SCORE_EVERY:
            self._score_waiting()

    def _score_waiting(self) -> None:
        labels, no_change, other = self._waiting
        if not labels:
            return
        self._waiting = ([], [], [])
        second = MAJORITY if self.task.is_classification else MEAN
        self._scoreboards[NO_CHANGE].update_many(labels, no_change)
        self._scoreboards[second].update_many(labels, other)

    @property
    def scoreboards(self) -> dict[str, Scoreboard]:
        """Each baseline's scoreboard, with every label seen so far scored."""
        self._score_waiting()
        return self._scoreboards

    def values(self) -> dict[tuple[str, str, str], float]:
        """``{(baseline, metric, window): value}``; log loss and AUC are left out (no probabilities)."""
        result: dict[tuple[str, str, str], float] = {}
        for name, board in self.scoreboards.items():
            for (metric, window), value in board.values().items():
                result[(name, metric, window)] = value
        return result
