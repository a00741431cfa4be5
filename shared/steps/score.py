"""Score: count outcomes, and score every model and the baselines on the labels seen (prequentially).

The labelled records of small batches are kept and folded into the scoreboards together (``FOLD_RECORDS``, or when
anything reads the scores): a scoreboard's update costs about as much for one record as for dozens, and at
moderate rates every batch holds a record or two (docs/architecture.md, "Scores folded in together").
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from itertools import chain

from prometheus_client import Counter as PromCounter

from shared.learners.base import Output, Target, Task
from shared.monitoring.metrics import Metrics
from shared.monitoring.quality import Baselines, Scoreboard
from shared.state.group_scores import ScoreSums
from shared.steps.batch import Batch

#: ``role`` label values of the scored-prediction counters
CHAMPION = "champion"
CHALLENGER = "challenger"
#: labelled records kept before they are folded into the scoreboards (a read of the scores, an export that is due
#: or a commit folds them sooner); with a batch's records, the most the step keeps
FOLD_RECORDS = 256


class ScoreStep:
    """Keeps one scoreboard per model (over every partition of this worker) and the baselines.

    It also counts, for the predictions this worker published, what group-wide ratios need: the
    ``streamlearn_predictions_scored_total`` / ``..._correct_total`` / error-sum counters (labelled ``role``
    champion or challenger by ``champion()`` when their batch was processed), and the same sums per model for the
    group's champion (:meth:`take_sums`). Records replayed after a restart (``already_published``) are scored on
    the scoreboards as before, but not counted again. Counter increments wait for :meth:`publish_counts` (after the
    commit that makes their predictions visible) or :meth:`discard_counts`.

    The labelled records of :meth:`process` are scored in order, at most ``FOLD_RECORDS`` at a time (:meth:`fold`):
    every read of the scores (``scoreboards``, ``baselines``, :meth:`rolling`, a due :meth:`export`) and every
    commit (:meth:`publish_counts`, :meth:`discard_counts`) folds what was kept first, and so does a direct
    :meth:`score_many`, which keeps the prequential order. :meth:`take_labelled` and :meth:`take_sums` hand out
    what was folded so far.
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
        self._scoreboards = {name: Scoreboard(task, rolling_window) for name, task in tasks.items()}
        supervised = [t for t in tasks.values() if t is not Task.ANOMALY]
        self._baselines = Baselines(supervised[0], rolling_window) if supervised else None
        self._dirty = False
        #: labels scored since the last call of :meth:`take_labelled`
        self._labelled = 0
        #: the labelled records of processed batches not folded into the scores yet: their outputs, labels, whether
        #: they are counted, and their batch's champion (bounded: ``FOLD_RECORDS`` plus one batch)
        self._kept_outputs: list[Mapping[str, Output]] = []
        self._kept_labels: list[Target] = []
        self._kept_counted: list[bool] = []
        self._kept_champions: list[str | None] = []
        #: the counters' children by (counter, label value), as ``labels()`` returns them (bounded by the label values)
        self._children: dict[tuple[int, str], PromCounter] = {}
        self._kept_gauge = metrics.kept_records.labels("score")

    @property
    def scoreboards(self) -> dict[str, Scoreboard]:
        """Per model, its scoreboard (with every record processed so far)."""
        self.fold()
        return self._scoreboards

    @property
    def baselines(self) -> Baselines | None:
        """The baselines' scoreboards (with every record processed so far); ``None`` without a supervised model."""
        self.fold()
        return self._baselines

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
        invalid = duplicate = valid = 0
        reasons: Counter[str] | None = None
        #: the labelled records' outputs and labels, scored per batch (the same as one at a time, in order)
        outputs_list: list[dict[str, Output]] = []
        labels: list[Target] = []
        counted: list[bool] = []
        predicted: list[dict[str, Output]] = []
        for record in batch.records:
            rejection = record.rejection
            if rejection is not None:
                invalid += 1
                if reasons is None:
                    reasons = Counter()
                reasons[rejection.code] += 1
                continue
            if record.duplicate:
                duplicate += 1
                continue
            event = record.event
            if event is None:
                continue
            valid += 1
            predicted.append(record.outputs)
            label = event.label
            if label is not None:
                outputs_list.append(record.outputs)
                labels.append(label)
                counted.append(not record.already_published)
        if labels:
            self._kept_outputs += outputs_list
            self._kept_labels += labels
            self._kept_counted += counted
            self._kept_champions += [self._champion() if self._champion is not None else None] * len(labels)
            if len(self._kept_labels) >= FOLD_RECORDS:
                self.fold()
            else:
                self._kept_gauge.set(len(self._kept_labels))
        m = self._metrics
        for outcome, n in (("invalid", invalid), ("duplicate", duplicate), ("valid", valid)):
            if n:
                self._child(m.events, outcome).inc(n)
        if reasons:
            for reason, n in reasons.items():
                self._child(m.dead_letters, reason).inc(n)
        # per model, its outputs in the batch (iterating the outputs gives the model names)
        for counter, outputs in ((m.predictions, predicted), (m.learned, outputs_list)):
            if len(outputs) == 1:
                for name in outputs[0]:
                    self._child(counter, name).inc()
            elif outputs:
                for name, n in Counter(chain.from_iterable(outputs)).items():
                    self._child(counter, name).inc(n)

    def _child(self, counter: PromCounter, value: str) -> PromCounter:
        """``counter.labels(value)``, kept (one per label value: outcomes, rejection codes, model names)."""
        key = (id(counter), value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(value)
        return child

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
        self.fold()
        champion = self._champion() if self._champion is not None else None
        self._score(outputs_list, labels, [True] * len(labels) if counted is None else counted,
                    [champion] * len(labels))

    def fold(self) -> None:
        """Score the kept labelled records, in order, on the scoreboards, the sums and the counts."""
        if not self._kept_labels:
            return
        outputs_list, labels = self._kept_outputs, self._kept_labels
        counted, champions = self._kept_counted, self._kept_champions
        self._kept_outputs, self._kept_labels, self._kept_counted, self._kept_champions = [], [], [], []
        self._kept_gauge.set(0)
        self._score(outputs_list, labels, counted, champions)

    def _score(
        self, outputs_list: Sequence[Mapping[str, Output]], labels: Sequence[Target], counted: Sequence[bool],
        champions: Sequence[str | None],
    ) -> None:
        per_model: dict[str, tuple[list[Target], list[Target | None], list[dict[Target, float] | None]]] = {}
        for outputs, label in zip(outputs_list, labels, strict=True):
            for name, output in outputs.items():
                columns = per_model.get(name)
                if columns is None:
                    columns = per_model[name] = ([], [], [])
                columns[0].append(label)
                columns[1].append(output.prediction)
                columns[2].append(output.proba or None)
        all_counted = all(counted)
        one_champion = all(c == champions[0] for c in champions)
        for name, (y_true, y_pred, probas) in per_model.items():
            board = self._scoreboards.get(name)
            if board is not None and self.tasks[name] is not Task.ANOMALY:
                board.update_many(y_true, y_pred, probas)
                if all_counted and one_champion:
                    self._count(name, y_true, y_pred, probas, champions[0] == name)
                elif any(counted):
                    for role_is_champion in (True, False):
                        keep = [i for i, (outputs, c, champion) in enumerate(zip(outputs_list, counted, champions,
                                                                                   strict=True))
                                if c and name in outputs and (champion == name) is role_is_champion]
                        if keep:
                            self._count_subset(name, outputs_list, labels, keep, role_is_champion)
        if self._baselines is not None:
            self._baselines.update_many(labels)
        self._labelled += len(labels)
        self._dirty = True

    def _count_subset(
        self, name: str, outputs_list: Sequence[Mapping[str, Output]], labels: Sequence[Target], keep: list[int],
        is_champion: bool,
    ) -> None:
        outputs = [outputs_list[i][name] for i in keep]
        self._count(name, [labels[i] for i in keep], [o.prediction for o in outputs],
                    [o.proba or None for o in outputs], is_champion)

    def _count(
        self, name: str, y_true: Sequence[Target], y_pred: Sequence[Target | None],
        probas: Sequence[Mapping[Target, float] | None], is_champion: bool,
    ) -> None:
        """Add one model's scored predictions to its counters and to the pending group sums."""
        task = self.tasks[name]
        sums = ScoreSums.of_predictions(task, y_true, y_pred, probas, positive=self._scoreboards[name].positive)
        if sums.n <= 0:
            return
        pending = self._sums.get(name)
        if pending is None:
            self._sums[name] = sums
        else:
            pending.add(sums)
        role = CHAMPION if is_champion else CHALLENGER
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
        self.fold()
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
        """Forget the counts of predictions that will not be committed (a transaction given up); their scores
        stay on the scoreboards."""
        self.fold()
        self._uncommitted = {}

    def score(self, outputs: dict[str, Output], label: Target) -> None:
        """Score each model's output, and the baselines, on one label."""
        self.score_many((outputs,), (label,))

    def export(self, *, force: bool = False) -> None:
        """Copy the current scores into the gauges: when they changed, at most every ``export_interval_s`` unless
        ``force``d (the worker calls it on every turn of its loop, and forces it when it stops)."""
        if not self._dirty and not self._kept_labels:
            return
        now = self._monotonic()
        if not force and now - self._last_export < self._export_interval_s:
            return
        self._last_export = now
        self.fold()
        gauge = self._metrics.model_metric
        for name, board in self._scoreboards.items():
            for (metric, window), value in board.values().items():
                gauge.labels(name, metric, window).set(value)
        if self._baselines is not None:
            for (baseline, metric, window), value in self._baselines.values().items():
                self._metrics.baseline_metric.labels(baseline, metric, window).set(value)
        self._dirty = False
