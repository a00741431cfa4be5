"""Drift: a concept-drift detector on each model's error stream, its reaction, and data drift.

Runs after the score step. For every labelled record each model's prequential error (0/1 for classifiers,
the absolute error for regression) goes to that model's :class:`ConceptDriftMonitor` (one per input
partition, since each partition has its own model objects). A detection is counted in
``streamlearn_drift_detections_total{model,detector}``, stamped in ``streamlearn_last_drift_timestamp_seconds``,
logged, and followed by the configured reaction: ``none``, ``reset`` (the drifted model starts again,
untrained) or ``promote`` (when the champion drifts, the challenger with the best rolling metric takes over).

Data drift: every valid record's cleaned features feed a :class:`DataDriftMonitor`; the labels and the
champion's predictions feed a :class:`DistributionDrift` each. Scores are exported as gauges at most every
``drift.export_interval_s`` (the top-K features by PSI). See ``docs/drift.md``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from shared.learners.base import FeatureValue, Output, Target, Task
from shared.monitoring.data_drift import KS, PSI, DataDriftMonitor, DistributionDrift
from shared.monitoring.drift import DETECTORS, ConceptDriftMonitor
from shared.monitoring.metrics import Metrics
from shared.settings import DriftSettings
from shared.steps.batch import Batch, Record
from shared.steps.champion import LOWER_IS_BETTER, Champion
from shared.steps.models import ModelStep
from shared.steps.score import FOLD_RECORDS

log = logging.getLogger("streamlearn.drift")

TopicPartition = tuple[str, int]
#: how many recent detections :attr:`DriftStep.detections` keeps (for logs, benchmarks and tests)
KEEP_DETECTIONS: Final = 1000
LABEL: Final = "label"
PREDICTION: Final = "prediction"


@dataclass(frozen=True, slots=True)
class DriftDetection:
    """One concept drift: which model, where in the stream, when, and what was done about it."""

    model: str
    detector: str
    topic: str
    partition: int
    #: offset of the record whose error triggered the detection
    offset: int
    at: float
    reaction: str


def prediction_error(task: Task, output: Output, label: Target) -> float | None:
    """The error fed to the detector: 0/1 for classification, absolute error for regression, else ``None``."""
    if output.prediction is None:
        return None
    if task.is_classification:
        return float(output.prediction != label)
    if task is Task.REGRESSION:
        try:
            error = abs(float(output.prediction) - float(label))
        except (TypeError, ValueError):
            return None
        return error if math.isfinite(error) else None
    return None


class DriftStep:
    """Concept and data drift for the models of one worker (see the module docstring)."""

    def __init__(
        self,
        settings: DriftSettings,
        metrics: Metrics,
        model_step: ModelStep,
        tasks: Mapping[str, Task],
        champion: Champion,
        rolling: Callable[[str], dict[str, float]],
        rank_metric: str = "accuracy",
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._model_step = model_step
        self.tasks = {name: task for name, task in tasks.items() if task is not Task.ANOMALY}
        self._champion = champion
        self._rolling = rolling
        self._rank_metric = rank_metric
        self._clock = clock
        self._monotonic = monotonic
        spec = DETECTORS.get(settings.detector)
        if spec is None:  # the settings' Literal should make this unreachable
            raise ValueError(f"unknown drift detector {settings.detector!r}")
        regression = sorted(name for name, task in self.tasks.items() if task is Task.REGRESSION)
        if spec.binary_only and regression:
            raise ValueError(f"drift.detector {settings.detector!r} takes 0/1 errors only; models "
                             f"{', '.join(regression)} are regressors (choose adwin, page_hinkley or kswin)")
        ConceptDriftMonitor(settings.detector, settings.params, settings.rise_only)  # fail at start-up, not later
        self._monitors: dict[tuple[TopicPartition, str], ConceptDriftMonitor] = {}
        self.detections: deque[DriftDetection] = deque(maxlen=KEEP_DETECTIONS)
        data = settings.data
        self._data: DataDriftMonitor | None = None
        #: the features of processed events not added to the data-drift windows yet (bounded: ``FOLD_RECORDS``
        #: plus one batch); added together, as the windows' ``update_many`` gives the same windows in any batching
        self._kept_features: list[Mapping[str, FeatureValue]] = []
        self._kept_gauge = metrics.kept_records.labels("drift")
        self.label_drift: DistributionDrift | None = None
        self.prediction_drift: DistributionDrift | None = None
        if data.enabled:
            self._data = DataDriftMonitor(data.reference_size, data.recent_size, data.max_features, data.bins,
                                         refresh_every=data.refresh_every)
            self.label_drift = DistributionDrift(data.reference_size, data.recent_size, data.bins,
                                                 refresh_every=data.refresh_every)
            self.prediction_drift = DistributionDrift(data.reference_size, data.recent_size, data.bins,
                                                      refresh_every=data.refresh_every)
        self._exported_features: set[str] = set()
        self._last_export = -math.inf
        for name in self.tasks:  # the counters exist (at 0) from the start, so increase() sees the first one
            metrics.drift_detections.labels(name, settings.detector)

    @property
    def data(self) -> DataDriftMonitor | None:
        """The feature-drift windows (with every event processed so far); ``None`` when data drift is off."""
        self._fold_features()
        return self._data

    def _fold_features(self) -> None:
        if self._kept_features and self._data is not None:
            kept, self._kept_features = self._kept_features, []
            self._kept_gauge.set(0)
            self._data.update_many(kept)

    # --- the step ----------------------------------------------------------------------------------
    def process(self, batch: Batch) -> None:
        if not self.settings.enabled:
            return
        champion = self._champion.current
        features: list[Mapping[str, FeatureValue]] = []
        predictions: list[Target] = []
        labelled: list[Record] = []
        for record in batch.records:
            event = record.event
            if event is None or record.rejection is not None or record.duplicate:
                continue
            if record.features is not None:
                features.append(record.features)
            output = record.outputs.get(champion)
            if output is not None and output.prediction is not None:
                predictions.append(output.prediction)
            if event.label is not None:
                labelled.append(record)
        # the windows are independent of each other and of the detectors: each takes its batch at once, and the
        # feature windows (a cost per feature and call) the features of several small batches together
        if self._data is not None and features:
            self._kept_features += features
            if len(self._kept_features) >= FOLD_RECORDS:
                self._fold_features()
            else:
                self._kept_gauge.set(len(self._kept_features))
        if self.prediction_drift is not None:
            self.prediction_drift.update_many(predictions)
        if labelled:
            self.observe_many(labelled)
        self.export()

    def observe_many(self, records: Sequence[Record]) -> None:
        """:meth:`observe` for each labelled record in order (the detectors see their errors one by one)."""
        if self.label_drift is not None:
            self.label_drift.update_many([r.event.label for r in records if r.event is not None])
        tasks, monitors = self.tasks, self._monitors
        classification = {name: task.is_classification for name, task in tasks.items()}
        for record in records:
            assert record.event is not None
            label = record.event.label
            tp = (record.topic, record.partition)
            for name, output in record.outputs.items():
                task = tasks.get(name)
                if task is None:
                    continue
                prediction = output.prediction
                if prediction is None:
                    continue
                if classification[name]:
                    error: float | None = float(prediction != label)
                else:
                    error = prediction_error(task, output, label)  # type: ignore[arg-type]
                    if error is None:
                        continue
                monitor = monitors.get((tp, name))
                if monitor is None:
                    monitor = monitors[(tp, name)] = ConceptDriftMonitor(
                        self.settings.detector, self.settings.params, self.settings.rise_only)
                if monitor.update(error):  # type: ignore[arg-type]
                    self._on_drift(tp, name, record.offset, monitor)

    def observe(self, tp: TopicPartition, offset: int, outputs: Mapping[str, Output], label: Target) -> None:
        """Feed one label (inline or joined later) against the outputs its event got."""
        if self.label_drift is not None:
            self.label_drift.update(label)
        for name, output in outputs.items():
            task = self.tasks.get(name)
            if task is None:
                continue
            error = prediction_error(task, output, label)
            if error is None:
                continue
            monitor = self._monitors.get((tp, name))
            if monitor is None:
                monitor = self._monitors[(tp, name)] = ConceptDriftMonitor(
                    self.settings.detector, self.settings.params, self.settings.rise_only)
            if monitor.update(error):
                self._on_drift(tp, name, offset, monitor)

    # --- reactions ---------------------------------------------------------------------------------
    def _on_drift(self, tp: TopicPartition, name: str, offset: int, monitor: ConceptDriftMonitor) -> None:
        detector = self.settings.detector
        now = self._clock()
        self._metrics.drift_detections.labels(name, detector).inc()
        self._metrics.last_drift.labels(name, detector).set(now)
        reaction = self._react(tp, name, monitor)
        if reaction != "none":
            self._metrics.drift_reactions.labels(name, reaction).inc()
        self.detections.append(DriftDetection(name, detector, tp[0], tp[1], offset, now, reaction))
        log.warning("concept drift: model=%s detector=%s partition=%s[%d] offset=%d reaction=%s",
                    name, detector, tp[0], tp[1], offset, reaction)

    def _react(self, tp: TopicPartition, name: str, monitor: ConceptDriftMonitor) -> str:
        reaction = self.settings.reaction
        if reaction == "reset":
            model_set = self._model_step.sets.get(tp)
            if model_set is None or name not in model_set.learners:
                return "none"
            model_set.learners[name] = model_set.learners[name].clone()
            monitor.reset()  # the new model's errors are not compared with the old model's
            return "reset"
        if reaction == "promote":
            if name != self._champion.current:
                return "none"
            challenger = self._best_challenger(name)
            if challenger is None or not self._champion.promote(challenger):
                return "none"
            self._metrics.champion_switches.inc()
            for model in self._model_step.model_names:
                self._metrics.champion.labels(model).set(1 if model == challenger else 0)
            return "promote"
        return "none"

    def _best_challenger(self, drifted: str) -> str | None:
        sign = -1.0 if self._rank_metric in LOWER_IS_BETTER else 1.0
        scores = {m: v for m, v in self._rolling(self._rank_metric).items() if m != drifted and math.isfinite(v)}
        if not scores:
            return None
        return max(sorted(scores), key=lambda m: sign * scores[m])

    # --- export ------------------------------------------------------------------------------------
    def export(self, force: bool = False) -> None:
        """Copy the data-drift scores into the gauges, at most every ``export_interval_s`` unless forced."""
        now = self._monotonic()
        if not force and now - self._last_export < self.settings.export_interval_s:
            return
        self._last_export = now
        self._forget_revoked()
        m = self._metrics
        data = self.data
        if data is not None:
            scores = data.scores()
            top = [feature for feature, _ in data.top_k(self.settings.data.top_k, PSI)]
            for feature in self._exported_features - set(top):
                for statistic in (PSI, KS):
                    with contextlib.suppress(KeyError):  # a feature with no ks (categorical)
                        m.feature_drift.remove(feature, statistic)
            for feature in top:
                for statistic in (PSI, KS):
                    value = scores.get((feature, statistic))
                    if value is not None:
                        m.feature_drift.labels(feature, statistic).set(value)
            self._exported_features = set(top)
        for distribution, monitor in ((LABEL, self.label_drift), (PREDICTION, self.prediction_drift)):
            if monitor is not None:
                for statistic, value in monitor.scores().items():
                    m.distribution_drift.labels(distribution, statistic).set(value)

    def _forget_revoked(self) -> None:
        assigned = self._model_step.sets
        for key in [key for key in self._monitors if key[0] not in assigned]:
            del self._monitors[key]

    def monitors(self) -> dict[tuple[TopicPartition, str], ConceptDriftMonitor]:
        """The live detectors, per (partition, model)."""
        return dict(self._monitors)
