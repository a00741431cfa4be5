"""Score: count outcomes, and score every model and the baselines on the labels seen (prequentially)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from itertools import chain

from shared.learners.base import Output, Target, Task
from shared.monitoring.metrics import Metrics
from shared.monitoring.quality import Baselines, Scoreboard
from shared.state.group_scores import ScoreSums
from shared.steps.batch import Batch

#: ``role`` label values of the scored-prediction counters
CHAMPION = "champion"
CHALLENGER = "challenger"


class ScoreStep:
    """Keeps one scoreboard per model (over every partition of this worker) and the baselines.

    It also counts, for the predictions this worker published, what group-wide ratios need: the
    ``streamlearn_predictions_scored_total`` / ``..._correct_total`` / error-sum counters (labelled ``role``
    champion or challenger by ``champion()`` at scoring time), and the same sums per model for the group's
    champion (:meth:`take_sums`). Records replayed after a restart (``already_published``) are scored on the
    scoreboards as before, but not counted again. Counter increments wait for :meth:`publish_counts` (after the
    commit that makes their predictions visible) or :meth:`discard_counts`.
    """

    def __init__(
        self, metrics: Metrics, tasks: dict[str, Task], rolling_window: int, *, export_interval_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic, champion: Callable[[], str] | None = None,
    ) -> None:
        self._metrics = metrics
        self._champion = champion
        #: per model, the sums of the predictions counted since the last :meth:`take_sums` (bounded: one per model)
        self._sums: dict[str, ScoreSums] = {}
        #: per (model, role), counter increments waiting for their predictions to be committed: scored, correct,
        #: absolute error, squared error (bounded: models x 2)
        self._uncommitted: dict[tuple[str, str], list[float]] = {}
        self._export_interval_s = export_interval_s
        self._monotonic = monotonic
        self._last_export = -float("inf")
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

    def take_sums(self) -> dict[str, ScoreSums]:
        """Each model's :class:`ScoreSums` counted since the last call (for the group's champion)."""
        sums, self._sums = self._sums, {}
        return sums

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
        #: the labelled records' outputs and labels, scored per batch (the same as one at a time, in order)
        outputs_list: list[dict[str, Output]] = []
        labels: list[Target] = []
        counted: list[bool] = []
        predicted: list[dict[str, Output]] = []
        for record in batch.records:
            if record.rejection is not None:
                outcomes["invalid"] += 1
                reasons[record.rejection.code] += 1
                continue
            if record.duplicate:
                outcomes["duplicate"] += 1
                continue
            event = record.event
            if event is None:
                continue
            outcomes["valid"] += 1
            predicted.append(record.outputs)
            label = event.label
            if label is not None:
                outputs_list.append(record.outputs)
                labels.append(label)
                counted.append(not record.already_published)
        # per model, its outputs in the batch (iterating the outputs gives the model names)
        predictions = Counter(chain.from_iterable(predicted))
        learned = Counter(chain.from_iterable(outputs_list))
        if labels:
            self.score_many(outputs_list, labels, counted=counted)
        m = self._metrics
        for outcome, n in outcomes.items():
            m.events.labels(outcome).inc(n)
        for reason, n in reasons.items():
            m.dead_letters.labels(reason).inc(n)
        for name, n in predictions.items():
            m.predictions.labels(name).inc(n)
        for name, n in learned.items():
            m.learned.labels(name).inc(n)

    def score_many(
        self, outputs_list: Sequence[Mapping[str, Output]], labels: Sequence[Target], *,
        counted: Sequence[bool] | None = None,
    ) -> None:
        """:meth:`score` for each ``(outputs, label)`` in order, each scoreboard updated once for the batch.

        ``counted`` (default: all) says which of them go into the counters and group sums: not a record
        replayed after a restart, whose prediction was published and counted before.
        """
        if not labels:
            return
        per_model: dict[str, tuple[list[Target], list[Target | None], list[dict[Target, float] | None]]] = {}
        for outputs, label in zip(outputs_list, labels, strict=True):
            for name, output in outputs.items():
                columns = per_model.get(name)
                if columns is None:
                    columns = per_model[name] = ([], [], [])
                columns[0].append(label)
                columns[1].append(output.prediction)
                columns[2].append(output.proba or None)
        all_counted = counted is None or all(counted)
        for name, (y_true, y_pred, probas) in per_model.items():
            board = self.scoreboards.get(name)
            if board is not None and self.tasks[name] is not Task.ANOMALY:
                board.update_many(y_true, y_pred, probas)
                if all_counted:
                    self._count(name, y_true, y_pred, probas)
                elif counted is not None and any(counted):
                    keep = [i for i, (outputs, c) in enumerate(zip(outputs_list, counted, strict=True))
                            if c and name in outputs]
                    self._count_subset(name, outputs_list, labels, keep)
        if self.baselines is not None:
            self.baselines.update_many(labels)
        self._labelled += len(labels)
        self._dirty = True

    def _count_subset(
        self, name: str, outputs_list: Sequence[Mapping[str, Output]], labels: Sequence[Target], keep: list[int]
    ) -> None:
        outputs = [outputs_list[i][name] for i in keep]
        self._count(name, [labels[i] for i in keep], [o.prediction for o in outputs],
                    [o.proba or None for o in outputs])

    def _count(
        self, name: str, y_true: Sequence[Target], y_pred: Sequence[Target | None],
        probas: Sequence[Mapping[Target, float] | None],
    ) -> None:
        """Add one model's scored predictions to its counters and to the pending group sums."""
        task = self.tasks[name]
        sums = ScoreSums.of_predictions(task, y_true, y_pred, probas, positive=self.scoreboards[name].positive)
        if sums.n <= 0:
            return
        pending = self._sums.get(name)
        if pending is None:
            self._sums[name] = sums
        else:
            pending.add(sums)
        role = CHAMPION if self._champion is not None and self._champion() == name else CHALLENGER
        counts = self._uncommitted.get((name, role))
        if counts is None:
            counts = self._uncommitted[(name, role)] = [0.0, 0.0, 0.0, 0.0]
        counts[0] += sums.n
        counts[1] += sums.correct
        counts[2] += sums.abs_error
        counts[3] += sums.sq_error

    def publish_counts(self) -> None:
        """Add the counts of the predictions committed now to the counters (the worker calls it after a commit, so
        an exactly-once transaction given up counts nothing, and the counters match what a reader sees)."""
        m = self._metrics
        for (name, role), (scored, correct, absolute, squared) in self._uncommitted.items():
            m.scored.labels(name, role).inc(scored)
            if self.tasks[name].is_classification:
                m.correct.labels(name, role).inc(correct)
            else:
                m.absolute_error.labels(name, role).inc(absolute)
                m.squared_error.labels(name, role).inc(squared)
        self._uncommitted = {}

    def discard_counts(self) -> None:
        """Forget the counts of predictions that will not be committed (a transaction given up)."""
        self._uncommitted = {}

    def score(self, outputs: dict[str, Output], label: Target) -> None:
        """Score each model's output, and the baselines, on one label."""
        self.score_many((outputs,), (label,))

    def export(self, *, force: bool = False) -> None:
        """Copy the current scores into the gauges: when they changed, at most every ``export_interval_s`` unless
        ``force``d (the worker calls it on every turn of its loop, and forces it when it stops)."""
        if not self._dirty:
            return
        now = self._monotonic()
        if not force and now - self._last_export < self._export_interval_s:
            return
        self._last_export = now
        gauge = self._metrics.model_metric
        for name, board in self.scoreboards.items():
            for (metric, window), value in board.values().items():
                gauge.labels(name, metric, window).set(value)
        if self.baselines is not None:
            for (baseline, metric, window), value in self.baselines.values().items():
                self._metrics.baseline_metric.labels(baseline, metric, window).set(value)
        self._dirty = False
