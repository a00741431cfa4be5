# Reference copy of shared/steps/score.py before the batched rewrite (commit a1093f2), for equality tests.
"""Score: count outcomes, and score every model and the baselines on the labels seen (prequentially)."""

from __future__ import annotations

from collections import Counter

from shared.learners.base import Output, Target, Task
from shared.monitoring.metrics import Metrics
from shared.monitoring.quality import Baselines, Scoreboard
from shared.steps.batch import Batch


class ScoreStep:
    """Keeps one scoreboard per model (over every partition of this worker) and the baselines."""

    def __init__(self, metrics: Metrics, tasks: dict[str, Task], rolling_window: int) -> None:
        self._metrics = metrics
        self.tasks = dict(tasks)
        self.scoreboards = {name: Scoreboard(task, rolling_window) for name, task in tasks.items()}
        supervised = [t for t in tasks.values() if t is not Task.ANOMALY]
        self.baselines = Baselines(supervised[0], rolling_window) if supervised else None
        self._dirty = False
        #: labels scored since the last call of :meth:`take_labelled`
        self._labelled = 0

    def take_labelled(self) -> int:
        """How many labels were scored since the last call (for the champion's hysteresis)."""
        count, self._labelled = self._labelled, 0
        return count

    def rolling(self, metric: str) -> dict[str, float]:
        """Each model's rolling value of ``metric``, for the models that have one."""
        result: dict[str, float] = {}
        for name, board in self.scoreboards.items():
            value = board.values().get((metric, "rolling"))
            if value is not None:
                result[name] = value
        return result

    def process(self, batch: Batch) -> None:
        outcomes: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        predictions: Counter[str] = Counter()
        learned: Counter[str] = Counter()
        for record in batch.records:
            if record.rejection is not None:
                outcomes["invalid"] += 1
                reasons[record.rejection.code] += 1
                continue
            if record.duplicate:
                outcomes["duplicate"] += 1
                continue
            if record.event is None:
                continue
            outcomes["valid"] += 1
            for name in record.outputs:
                predictions[name] += 1
            label = record.event.label
            if label is not None:
                self.score(record.outputs, label)
                for name in record.outputs:
                    learned[name] += 1
        m = self._metrics
        for outcome, n in outcomes.items():
            m.events.labels(outcome).inc(n)
        for reason, n in reasons.items():
            m.dead_letters.labels(reason).inc(n)
        for name, n in predictions.items():
            m.predictions.labels(name).inc(n)
        for name, n in learned.items():
            m.learned.labels(name).inc(n)

    def score(self, outputs: dict[str, Output], label: Target) -> None:
        """Score each model's output, and the baselines, on one label."""
        for name, output in outputs.items():
            board = self.scoreboards.get(name)
            if board is not None and self.tasks[name] is not Task.ANOMALY:
                board.update(label, output.prediction, output.proba or None)
        if self.baselines is not None:
            self.baselines.update(label)
        self._labelled += 1
        self._dirty = True

    def export(self) -> None:
        """Copy the current scores into the gauges (called once per batch, not per event)."""
        if not self._dirty:
            return
        gauge = self._metrics.model_metric
        for name, board in self.scoreboards.items():
            for (metric, window), value in board.values().items():
                gauge.labels(name, metric, window).set(value)
        if self.baselines is not None:
            for (baseline, metric, window), value in self.baselines.values().items():
                self._metrics.baseline_metric.labels(baseline, metric, window).set(value)
        self._dirty = False
