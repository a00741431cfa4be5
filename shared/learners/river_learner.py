"""The River side of the model engine: a River pipeline (preprocessing prefix | estimator) behind :class:`Learner`.

See ``docs/models.md`` for the preprocessing layout, task inference and the snapshot format.
"""

from __future__ import annotations

import importlib
import inspect
import json
import numbers
import pickle
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import river
from river import base, compose, multiclass, preprocessing, stats

from shared.learners.base import Learner, Output, Row, SnapshotError, Target, Task
from shared.learners.registry import LearnerConfigError

if TYPE_CHECKING:
    from shared.settings import ModelSettings, PreprocessingSettings

KIND = "river"
SNAPSHOT_FORMAT = 1
#: a parameter value of this shape is built into an object: ``{"class": "river.optim.SGD", "params": {...}}``
NESTED_CLASS_KEY = "class"


class FeatureCleaner(base.Transformer):
    """First pipeline step: bools become 0.0/1.0, ``None`` becomes the feature's running mean (or is dropped).

    Unlike River's ``StatImputer`` it needs no feature list up front, so features may appear and vanish.
    A ``None`` for a feature never seen as a number is dropped; values of other types are dropped too.
    """

    def __init__(self, impute_missing: bool = True) -> None:
        self.impute_missing = impute_missing
        self.means: dict[base.typing.FeatureName, stats.Mean] = {}

    def learn_one(self, x: dict[base.typing.FeatureName, Any]) -> None:
        if not self.impute_missing:
            return
        means = self.means
        for name, value in x.items():
            if isinstance(value, numbers.Number):
                mean = means.get(name)
                if mean is None:
                    mean = means[name] = stats.Mean()
                mean.update(float(value))  # type: ignore[arg-type]

    def transform_one(self, x: dict[base.typing.FeatureName, Any]) -> dict[base.typing.FeatureName, Any]:
        out: dict[base.typing.FeatureName, Any] = {}
        for name, value in x.items():
            if isinstance(value, bool):
                out[name] = float(value)
            elif isinstance(value, numbers.Number | str):
                out[name] = value
            elif value is None and self.impute_missing:
                mean = self.means.get(name)
                if mean is not None and mean.n > 0:
                    out[name] = mean.get()
        return out


class UnitRangeScaler(base.Transformer):
    """Running min-max scaling clipped to [0, 1], for anomaly detectors such as ``HalfSpaceTrees``.

    River's ``MinMaxScaler`` gives NaN for a feature not yet learned and values outside [0, 1] for new
    extremes; this one gives 0.0 and clips, and never changes state while predicting.
    """

    def __init__(self) -> None:
        self.lows: dict[base.typing.FeatureName, float] = {}
        self.highs: dict[base.typing.FeatureName, float] = {}

    def learn_one(self, x: dict[base.typing.FeatureName, Any]) -> None:
        lows, highs = self.lows, self.highs
        for name, value in x.items():
            value = float(value)
            if name not in lows:
                lows[name] = highs[name] = value
            elif value < lows[name]:
                lows[name] = value
            elif value > highs[name]:
                highs[name] = value

    def transform_one(self, x: dict[base.typing.FeatureName, Any]) -> dict[base.typing.FeatureName, float]:
        out: dict[base.typing.FeatureName, float] = {}
        for name, value in x.items():
            low = self.lows.get(name)
            span = 0.0 if low is None else self.highs[name] - low
            if low is None or span <= 0.0:
                out[name] = 0.0
            else:
                out[name] = min(1.0, max(0.0, (float(value) - low) / span))
        return out


def import_object(path: str, field: str) -> Any:
    """Import ``package.module.Name``; raise :class:`LearnerConfigError` naming ``field`` if it fails."""
    module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise LearnerConfigError(f"{field} {path!r} must be an import path such as 'river.forest.ARFClassifier'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LearnerConfigError(f"{field} {path!r} does not import: {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError as exc:
        raise LearnerConfigError(f"{field} {path!r} does not import: {module_name} has no {attribute!r}") from exc


def _accepts(cls: type, name: str) -> bool:
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


def _instantiate(cls: type, path: str, params: Mapping[str, Any], seed: int, field: str) -> Any:
    """Build ``cls(**params)``: nested ``{"class": ..., "params": ...}`` values first, ``seed`` if accepted."""
    kwargs = {name: _build_value(value, seed, f"{field}.{name}") for name, value in params.items()}
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        accepted = signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown and not takes_any:
            raise LearnerConfigError(
                f"{field}: {path} has no parameter {', '.join(map(repr, unknown))}; "
                f"it accepts {', '.join(sorted(accepted)) or 'none'}"
            )
    if "seed" not in kwargs and _accepts(cls, "seed"):
        kwargs["seed"] = seed
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise LearnerConfigError(f"{field} rejected by {path}: {exc}") from exc


def _build_value(value: Any, seed: int, field: str) -> Any:
    if isinstance(value, Mapping) and NESTED_CLASS_KEY in value and set(value) <= {NESTED_CLASS_KEY, "params"}:
        path = str(value[NESTED_CLASS_KEY])
        cls = import_object(path, f"{field}.{NESTED_CLASS_KEY}")
        nested = value.get("params") or {}
        if not isinstance(nested, Mapping):
            raise LearnerConfigError(f"{field}.params must be a mapping, got {type(nested).__name__}")
        return _instantiate(cls, path, nested, seed, f"{field}.params")
    return value


def _estimator_task(estimator: base.Estimator) -> Task | None:
    if isinstance(estimator, base.Classifier):
        return Task.MULTICLASS if estimator._multiclass else Task.BINARY
    if isinstance(estimator, base.Regressor):
        return Task.REGRESSION
    if isinstance(estimator, base.AnomalyDetector):
        return Task.ANOMALY
    return None


def build_estimator(
    estimator_path: str, params: Mapping[str, Any], seed: int, task: Task | None = None
) -> tuple[base.Estimator, Task]:
    """The River estimator named by ``estimator_path`` and the task it serves.

    Classifiers default to MULTICLASS when the estimator handles several classes, else BINARY; a binary-only
    classifier asked for MULTICLASS is wrapped in ``multiclass.OneVsRestClassifier``.
    """
    cls = import_object(estimator_path, "estimator")
    if not (isinstance(cls, type) and issubclass(cls, base.Estimator)):
        raise LearnerConfigError(f"estimator {estimator_path!r} is not a River estimator class")
    estimator = _instantiate(cls, estimator_path, params, seed, "params")
    natural = _estimator_task(estimator)
    if natural is None:
        raise LearnerConfigError(
            f"estimator {estimator_path!r} is neither a classifier, a regressor nor an anomaly detector"
        )
    if task is None or task is natural:
        return estimator, natural
    if natural.is_classification and task is Task.BINARY:
        return estimator, Task.BINARY
    if natural is Task.BINARY and task is Task.MULTICLASS:
        return multiclass.OneVsRestClassifier(estimator), Task.MULTICLASS
    raise LearnerConfigError(f"task {str(task)!r} does not fit estimator {estimator_path!r}, which serves {natural}")


#: estimators whose modules start so are trees or forests of trees (classifiers among them get numbers unscaled)
TREE_MODULES = ("river.tree", "river.forest")


def scales_numbers(preprocessing_settings: PreprocessingSettings, estimator: base.Estimator) -> bool:
    """Whether ``scale_numbers`` applies to ``estimator``: not to tree and forest classifiers.

    A tree splits on thresholds it learned; a running scaler keeps changing what a threshold means as its
    statistics move, which costs trees accuracy (ARF on Phishing: 0.891 scaled, 0.910 unscaled, seed 42).
    Tree regressors keep the scaler: their leaves hold linear models, which diverge on unscaled numbers.
    """
    is_tree_classifier = isinstance(estimator, base.Classifier) and type(estimator).__module__.startswith(
        TREE_MODULES
    )
    return preprocessing_settings.scale_numbers and not is_tree_classifier


def build_preprocessing(
    preprocessing_settings: PreprocessingSettings, task: Task, *, scale_numbers: bool | None = None
) -> compose.Pipeline:
    """The preprocessing prefix: clean | (numbers [| scaler]) + (strings [| one-hot]).

    ``scale_numbers`` overrides the setting of the same name (see :func:`scales_numbers`). Anomaly detectors
    always get numbers scaled to [0, 1] and one-hot categories, whatever the settings say.
    """
    cleaner = compose.Pipeline(FeatureCleaner(impute_missing=preprocessing_settings.impute_missing))
    numeric_scaler: base.Transformer | None = None
    scale = preprocessing_settings.scale_numbers if scale_numbers is None else scale_numbers
    if task is Task.ANOMALY:
        numeric_scaler = UnitRangeScaler()
    elif scale:
        numeric_scaler = preprocessing.StandardScaler()
    one_hot = preprocessing_settings.one_hot_categories or task is Task.ANOMALY
    encoder = preprocessing.OneHotEncoder(drop_zeros=True) if one_hot else None
    if numeric_scaler is None and encoder is None:
        return cleaner
    numbers_part: base.Transformer | compose.Pipeline = compose.SelectType(numbers.Number)
    if numeric_scaler is not None:
        numbers_part = numbers_part | numeric_scaler
    strings_part: base.Transformer | compose.Pipeline = compose.SelectType(str)
    if encoder is not None:
        strings_part = strings_part | encoder
    return cleaner | compose.TransformerUnion(numbers_part, strings_part)


def build_river_pipeline(
    estimator_path: str,
    params: Mapping[str, Any],
    preprocessing: PreprocessingSettings,
    seed: int,
    *,
    task: Task | None = None,
) -> compose.Pipeline:
    """The River pipeline a :class:`RiverLearner` runs: preprocessing prefix | estimator.

    Use it with ``river.evaluate.progressive_val_score`` to reproduce a worker's predictions exactly.
    """
    estimator, resolved = build_estimator(estimator_path, params, seed, task)
    scale = scales_numbers(preprocessing, estimator)
    return build_preprocessing(preprocessing, resolved, scale_numbers=scale) | estimator


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class RiverLearner(Learner):
    """A River pipeline as a :class:`Learner`; every prediction and update is River's own, one row at a time."""

    kind = KIND

    def __init__(
        self, pipeline: compose.Pipeline, task: Task, estimator: str, params: Mapping[str, Any] | None = None
    ) -> None:
        self.pipeline = pipeline
        self.task = task
        self.estimator = estimator
        self.params = dict(params or {})
        final_type = type(pipeline[-1])
        self._has_proba = issubclass(final_type, base.Classifier) and (
            final_type.predict_proba_one is not base.Classifier.predict_proba_one
        )
        self._argmax_predict = self._has_proba and final_type.predict_one is base.Classifier.predict_one

    @classmethod
    def from_settings(cls, model: ModelSettings, preprocessing: PreprocessingSettings, seed: int) -> RiverLearner:
        """Build from a model's settings; configuration problems raise :class:`LearnerConfigError`."""
        if not model.estimator:
            raise LearnerConfigError(
                f"model {model.name!r}: field 'estimator' is required for kind 'river' "
                "(a River import path such as 'river.linear_model.LogisticRegression')"
            )
        try:
            estimator, task = build_estimator(model.estimator, model.params, seed, model.task)
        except LearnerConfigError as exc:
            raise LearnerConfigError(f"model {model.name!r}: {exc}") from exc
        pipeline = build_preprocessing(preprocessing, task, scale_numbers=scales_numbers(preprocessing, estimator))
        pipeline = pipeline | estimator
        return cls(pipeline, task, model.estimator, model.params)

    def predict_one(self, row: Row) -> Output:
        return self._predict(dict(row.features))

    def process(self, rows: Sequence[Row], targets: Sequence[Target | None]) -> list[Output]:
        """Prequential, one row at a time, as :meth:`Learner.process`, with less overhead per row.

        Each row's features are copied once and that copy is predicted, then learned, as River's own
        ``evaluate.progressive_val_score`` passes one dict to both.
        """
        outputs: list[Output] = []
        predict, learn = self._predict, self.pipeline.learn_one
        anomaly = self.task is Task.ANOMALY
        for row, target in zip(rows, targets, strict=True):
            x = dict(row.features)
            outputs.append(predict(x))
            if anomaly:
                learn(x)
            elif target is not None:
                learn(x, target)
        return outputs

    def _predict(self, x: dict[str, Any]) -> Output:
        if self.task is Task.ANOMALY:
            return Output(None, score=float(self.pipeline.score_one(x)))
        if self.task is Task.REGRESSION:
            return Output(_plain(self.pipeline.predict_one(x)))
        proba: dict[Target, float] = {}
        if self._has_proba:
            proba = {_plain(label): float(p) for label, p in (self.pipeline.predict_proba_one(x) or {}).items()}
        if self._argmax_predict:
            prediction = max(proba, key=proba.__getitem__) if proba else None
        else:
            prediction = _plain(self.pipeline.predict_one(x))
        return Output(prediction, proba)

    def learn_one(self, row: Row, target: Target | None) -> None:
        x = dict(row.features)
        if self.task is Task.ANOMALY:
            self.pipeline.learn_one(x)
            return
        if target is None:
            raise ValueError(f"a {self.task} learner needs a target to learn")
        self.pipeline.learn_one(x, target)

    def snapshot(self) -> bytes:
        """A JSON header line (kind, format, library versions) followed by the pickled state."""
        header = {"kind": KIND, "format": SNAPSHOT_FORMAT, **_library_versions()}
        state = {"pipeline": self.pipeline, "task": str(self.task), "estimator": self.estimator, "params": self.params}
        return json.dumps(header, sort_keys=True).encode() + b"\n" + pickle.dumps(state, protocol=5)

    @classmethod
    def restore(cls, data: bytes) -> Self:
        """Rebuild from :meth:`snapshot`; the header is checked before anything is unpickled."""
        raw_header, newline, payload = bytes(data).partition(b"\n")
        try:
            header = json.loads(raw_header) if newline else None
        except (UnicodeDecodeError, ValueError):
            header = None
        if not isinstance(header, dict):
            raise SnapshotError("not a River learner snapshot (no valid header)")
        if header.get("kind") != KIND:
            raise SnapshotError(f"snapshot of kind {header.get('kind')!r} cannot be restored as {KIND!r}")
        if header.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"River snapshot format {header.get('format')!r}, expected {SNAPSHOT_FORMAT}")
        expected = _library_versions()
        for library, version in expected.items():
            if header.get(library) != version:
                raise SnapshotError(
                    f"River snapshot written with {library} {header.get(library)!r}, this process has {version!r}"
                )
        try:
            state = pickle.loads(payload)
            pipeline, task = state["pipeline"], Task(state["task"])
            estimator, params = str(state["estimator"]), dict(state["params"])
        except Exception as exc:
            raise SnapshotError(f"corrupt River snapshot: {exc!r}") from exc
        if not isinstance(pipeline, compose.Pipeline):
            raise SnapshotError(f"corrupt River snapshot: holds {type(pipeline).__name__}, not a River pipeline")
        return cls(pipeline, task, estimator, params)

    def clone(self) -> Self:
        """An untrained copy (River's ``clone``: same parameters, same seed)."""
        return type(self)(self.pipeline.clone(), self.task, self.estimator, self.params)

    def memory_bytes(self) -> int:
        """River's own estimate: the size of the pipeline's object graph."""
        return int(self.pipeline._raw_memory_usage)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "estimator": self.estimator,
            "params": self.params,
            "pipeline": str(self.pipeline),
        }


def _library_versions() -> dict[str, str]:
    return {"river": river.__version__, "numpy_major": np.__version__.split(".")[0]}


def build_river_learner(model: ModelSettings, preprocessing: PreprocessingSettings, seed: int) -> RiverLearner:
    """The registry factory for kind ``"river"``."""
    return RiverLearner.from_settings(model, preprocessing, seed)


def restore_river_learner(data: bytes) -> RiverLearner:
    """The registry restorer for kind ``"river"``."""
    return RiverLearner.restore(data)


__all__ = [
    "FeatureCleaner",
    "RiverLearner",
    "UnitRangeScaler",
    "build_estimator",
    "build_preprocessing",
    "build_river_learner",
    "build_river_pipeline",
    "restore_river_learner",
    "scales_numbers",
]
