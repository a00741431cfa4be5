# Reference copy of shared/monitoring/quality.py before the batched rewrite (commit a1093f2), for equality tests.
"""Prequential model quality: a scoreboard per model, cumulative and over a rolling window, and baselines.

Label metrics come from River (a shared :class:`river.metrics.ConfusionMatrix` for classification, so the
cumulative accuracy is exactly River's ``metrics.Accuracy``; ``MAE``, ``RMSE`` and ``R2`` for regression).
Log loss and ROC AUC use the class probabilities; the AUC is read off a fixed-size score histogram that
can also revert (see ``docs/drift.md``). Every update is O(1); ``values`` is cached until the next update.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
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

    def get(self) -> float | None:
        """The AUC, or ``None`` until both classes have been seen."""
        if self.n_positive == 0 or self.n_negative == 0:
            return None
        negatives_below = np.cumsum(self._negatives) - self._negatives
        pairs_won = float(np.dot(self._positives, negatives_below + 0.5 * self._negatives))
        return pairs_won / (self.n_positive * self.n_negative)


@dataclass(frozen=True, slots=True)
class _Scored:
    """What one labelled example contributes (kept in the rolling window to be reverted later)."""

    y_true: Target
    y_pred: Target
    loss: float | None = None
    positive_score: float | None = None


class _Tally:
    """The metrics of one window: ``update`` adds an example, ``revert`` removes it."""

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

    def update(self, item: _Scored) -> None:
        self.n += 1
        if self.classification:
            self.cm.update(item.y_true, item.y_pred)
            if item.loss is not None:
                self.loss_sum += item.loss
                self.loss_n += 1
            if item.positive_score is not None:
                self._auc.update(item.y_true == self.positive, item.positive_score)
        else:
            y_true, y_pred = float(item.y_true), float(item.y_pred)
            self.mae.update(y_true, y_pred)
            self.rmse.update(y_true, y_pred)
            self.r2.update(y_true, y_pred)

    def revert(self, item: _Scored) -> None:
        self.n -= 1
        if self.classification:
            self.cm.revert(item.y_true, item.y_pred)
            if item.loss is not None:
                self.loss_sum -= item.loss
                self.loss_n -= 1
            if item.positive_score is not None:
                self._auc.revert(item.y_true == self.positive, item.positive_score)
        else:
            y_true, y_pred = float(item.y_true), float(item.y_pred)
            self.mae.revert(y_true, y_pred)
            self.rmse.revert(y_true, y_pred)
            self.r2.revert(y_true, y_pred)

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

    def recompute_loss(self, items: deque[_Scored]) -> None:
        """Re-add the rolling loss from scratch (float subtraction drifts over millions of reverts)."""
        losses = [item.loss for item in items if item.loss is not None]
        self.loss_sum = math.fsum(losses)
        self.loss_n = len(losses)


class Scoreboard:
    """Prequential quality of one model, cumulative and over the last ``window`` labelled examples.

    Call :meth:`update` with each label and the prediction made before learning it. A ``None`` prediction
    (an untrained model) is not scored, as in River's ``evaluate.progressive_val_score``. For binary tasks
    ``positive`` is the positive class (``True`` also matches ``1``); probabilities are looked up by class.
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
        self._history: deque[_Scored] = deque()
        self._cumulative = _Tally(task, positive, BinnedROCAUC(auc_bins))
        self._rolling = _Tally(task, positive, BinnedROCAUC(auc_bins))
        self._updates = 0
        self._cache: dict[tuple[str, str], float] | None = None

    @property
    def n_scored(self) -> int:
        """Labelled examples scored since the start."""
        return self._cumulative.n

    def _bounded_class(self, label: Target) -> Target:
        if label in self._classes:
            return label
        if len(self._classes) < self.max_classes:
            self._classes.add(label)
            return label
        return OTHER_CLASS

    def update(self, y_true: Target, y_pred: Target | None, proba: dict[Target, float] | None = None) -> None:
        """Score one prediction against its label."""
        if y_pred is None or self.task is Task.ANOMALY:
            return
        item = self._score(y_true, y_pred, proba)
        self._cumulative.update(item)
        if len(self._history) == self.window:
            self._rolling.revert(self._history.popleft())
        self._rolling.update(item)
        self._history.append(item)
        self._updates += 1
        if self._updates % self.window == 0 and self._cumulative.classification:
            self._rolling.recompute_loss(self._history)
        self._cache = None

    def _score(self, y_true: Target, y_pred: Target, proba: dict[Target, float] | None) -> _Scored:
        if not self._cumulative.classification:
            return _Scored(y_true, y_pred)
        y_true = self._bounded_class(y_true)
        y_pred = self._bounded_class(y_pred)
        if not proba:
            return _Scored(y_true, y_pred)
        loss = -math.log(_clamp(proba.get(y_true, 0.0)))
        if self.task is not Task.BINARY:
            return _Scored(y_true, y_pred, loss)
        return _Scored(y_true, y_pred, loss, _clamp(proba.get(self.positive, 0.0)))

    def values(self) -> dict[tuple[str, str], float]:
        """``{(metric, window): value}`` with window ``cumulative`` or ``rolling``; undefined ones left out."""
        if self._cache is None:
            cache: dict[tuple[str, str], float] = {}
            for window, tally in ((CUMULATIVE, self._cumulative), (ROLLING, self._rolling)):
                for metric, value in tally.values().items():
                    cache[(metric, window)] = value
            self._cache = cache
        return dict(self._cache)


class Baselines:
    """Reference predictors scored on the same labels as the models.

    ``no_change`` predicts the previous label; ``majority`` (classification) the most frequent label so
    far; ``mean`` (regression) the running mean of the labels so far. Each predicts before it sees the
    label, like the models.
    """

    def __init__(
        self, task: Task, window: int, *, positive: Target = True, max_classes: int = DEFAULT_MAX_CLASSES
    ) -> None:
        self.task = task
        self.scoreboards: dict[str, Scoreboard] = {}
        if task is Task.ANOMALY:
            return
        second = MAJORITY if task.is_classification else MEAN
        for name in (NO_CHANGE, second):
            self.scoreboards[name] = Scoreboard(task, window, positive=positive, max_classes=max_classes)
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
        if self.task is Task.ANOMALY:
            return
        for name, prediction in self.predictions().items():
            self.scoreboards[name].update(y_true, prediction)
        self._previous = y_true
        if self.task.is_classification:
            self._learn_class(y_true)
        else:
            self._n += 1
            self._mean += (float(y_true) - self._mean) / self._n

    def _learn_class(self, label: Target) -> None:
        count = self._counts.get(label)
        if count is None:
            if len(self._counts) >= self.max_classes:
                return
            count = 0
        count += 1
        self._counts[label] = count
        if self._majority is None or count > self._counts[self._majority]:
            self._majority = label

    def values(self) -> dict[tuple[str, str, str], float]:
        """``{(baseline, metric, window): value}``; log loss and AUC are left out (no probabilities)."""
        result: dict[tuple[str, str, str], float] = {}
        for name, board in self.scoreboards.items():
            for (metric, window), value in board.values().items():
                result[(name, metric, window)] = value
        return result
