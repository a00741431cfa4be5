"""The River side of the model engine: a River pipeline (preprocessing prefix | estimator) behind :class:`Learner`.

See ``docs/models.md`` for the preprocessing layout, task inference and the snapshot format.
"""

from __future__ import annotations

import array
import copyreg
import importlib
import inspect
import io
import json
import numbers
import pickle
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import orjson
import river
from river import base, compose, multiclass, preprocessing, stats

from shared.learners.base import Learner, MergeMode, Output, Row, SnapshotError, Target, Task
from shared.learners.registry import LearnerConfigError
from shared.learners.replay import ReplayLog, learn_replayed
from shared.learners.tree_reuse import TreePredictionReuse

if TYPE_CHECKING:
    from shared.settings import ModelSettings, PreprocessingSettings

KIND = "river"
#: 2: random.Random states pickled as packed 32-bit words (see :func:`_pickle_state`); 1: plain pickle
SNAPSHOT_FORMAT = 2
#: snapshot formats :meth:`RiverLearner.restore` reads
READABLE_SNAPSHOT_FORMATS = (1, 2)
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


#: exact value types for which :class:`Preprocessor` skips its per-value checks (``bool`` is not one of them)
_PLAIN_NUMBER_TYPES = frozenset({float, int})


class Preprocessor(base.Transformer):
    """The preprocessing prefix as one step: clean, then numbers [| scaler] and strings [| encoder], merged.

    It computes exactly what the former layout of River steps computes,
    ``FeatureCleaner | TransformerUnion(SelectType(Number) [| scaler], SelectType(str) [| encoder])``: the same
    state updates in the same order, the same output dict (the same keys in the same order, the same values), so
    predictions and learning are bit-for-bit those of that layout. It makes one pass where that layout makes
    four or five (clean, two type selections, the union's merge, the sub-pipelines' dispatch), and when every
    value is a plain ``float`` or ``int`` (the usual event) it skips the per-value checks: cleaning is then the
    identity, every value is a number and there are no strings.

    ``scaler`` sees the numbers (``None``: passed unscaled), ``encoder`` the strings (``None``: passed as they
    are). The cleaner's running means live in :attr:`cleaner`, a :class:`FeatureCleaner`.
    """

    def __init__(
        self,
        impute_missing: bool = True,
        scaler: base.Transformer | None = None,
        encoder: base.Transformer | None = None,
    ) -> None:
        self.impute_missing = impute_missing
        self.scaler = scaler
        self.encoder = encoder
        self.cleaner = FeatureCleaner(impute_missing=impute_missing)
        #: the encoder, given no strings, learns nothing and returns nothing, so need not be called
        self._skips_empty_strings = encoder is None or (
            type(encoder) is preprocessing.OneHotEncoder and encoder.drop_zeros and not encoder.drop_first
        )

    def _split(self, x: dict[base.typing.FeatureName, Any]) -> tuple[dict[base.typing.FeatureName, Any],
                                                                      dict[base.typing.FeatureName, Any]]:
        """The cleaned features' numbers and strings (as ``SelectType(numbers.Number)`` and ``SelectType(str)``)."""
        cleaned = self.cleaner.transform_one(x)
        return (
            {name: value for name, value in cleaned.items() if isinstance(value, numbers.Number)},
            {name: value for name, value in cleaned.items() if isinstance(value, str)},
        )

    def learn_one(self, x: dict[base.typing.FeatureName, Any]) -> None:
        cleaner, scaler, encoder = self.cleaner, self.scaler, self.encoder
        if _PLAIN_NUMBER_TYPES.issuperset(map(type, x.values())):
            if self.impute_missing:
                means = cleaner.means
                for name, value in x.items():
                    mean = means.get(name)
                    if mean is None:
                        mean = means[name] = stats.Mean()
                    mean.update(float(value))
            if scaler is not None:
                scaler.learn_one(x)
            if not self._skips_empty_strings:
                encoder.learn_one({})  # type: ignore[union-attr]
            return
        cleaner.learn_one(x)
        if scaler is None and encoder is None:
            return
        number_values, string_values = self._split(x)
        if scaler is not None:
            scaler.learn_one(number_values)
        if encoder is not None:
            encoder.learn_one(string_values)

    def transform_one(self, x: dict[base.typing.FeatureName, Any]) -> dict[base.typing.FeatureName, Any]:
        scaler, encoder = self.scaler, self.encoder
        if _PLAIN_NUMBER_TYPES.issuperset(map(type, x.values())):
            out: dict[base.typing.FeatureName, Any] = (
                {} if self._skips_empty_strings else encoder.transform_one({})  # type: ignore[union-attr]
            )
            if not out:
                return scaler.transform_one(x) if scaler is not None else dict(x)
            out.update(scaler.transform_one(x) if scaler is not None else x)
            return out
        if scaler is None and encoder is None:
            return self.cleaner.transform_one(x)
        number_values, string_values = self._split(x)
        # TransformerUnion merges its parts' outputs last to first: strings first, then numbers over them
        out = encoder.transform_one(string_values) if encoder is not None else string_values
        out = dict(out)
        out.update(scaler.transform_one(number_values) if scaler is not None else number_values)
        return out


def fuse_preprocessing(pipeline: compose.Pipeline) -> compose.Pipeline:
    """``pipeline`` with its former multi-step preprocessing prefix replaced by one :class:`Preprocessor`.

    The former layout (snapshot format 1) is ``FeatureCleaner [| TransformerUnion(SelectType(Number) [| scaler],
    SelectType(str) [| encoder])] | estimator``; its learned state (running means, scaler, encoder) moves into
    the :class:`Preprocessor`, which goes on exactly as the former steps would have. Any other pipeline is
    returned as it is.
    """
    steps = list(pipeline.steps.values())
    if len(steps) not in (2, 3) or type(steps[0]) is not FeatureCleaner:
        return pipeline
    cleaner, estimator = steps[0], steps[-1]
    scaler = encoder = None
    if len(steps) == 3:
        union = steps[1]
        if type(union) is not compose.TransformerUnion or len(union.transformers) != 2:
            return pipeline
        numbers_part, strings_part = union.transformers.values()
        number_types = _selected_types(numbers_part)
        string_types = _selected_types(strings_part)
        if number_types != (numbers.Number,) or string_types != (str,):
            return pipeline
        scaler, encoder = _after_select(numbers_part), _after_select(strings_part)
    fused = Preprocessor(impute_missing=cleaner.impute_missing, scaler=scaler, encoder=encoder)
    fused.cleaner = cleaner
    return compose.Pipeline(fused, estimator)


def _selected_types(part: Any) -> tuple[type, ...] | None:
    first = next(iter(part.steps.values())) if isinstance(part, compose.Pipeline) else part
    return first.types if type(first) is compose.SelectType else None


def _after_select(part: Any) -> base.Transformer | None:
    """The step after ``SelectType`` in a union part (``None`` when the part is the selection alone)."""
    if not isinstance(part, compose.Pipeline):
        return None
    steps = list(part.steps.values())
    if len(steps) != 2:
        raise SnapshotError(f"unexpected preprocessing part {part!r}")
    return steps[1]


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
) -> Preprocessor:
    """The preprocessing prefix, one step: clean | (numbers [| scaler]) + (strings [| one-hot]).

    ``scale_numbers`` overrides the setting of the same name (see :func:`scales_numbers`). Anomaly detectors
    always get numbers scaled to [0, 1] and one-hot categories, whatever the settings say.
    """
    numeric_scaler, encoder = _scaler_and_encoder(preprocessing_settings, task, scale_numbers)
    return Preprocessor(impute_missing=preprocessing_settings.impute_missing, scaler=numeric_scaler, encoder=encoder)


def _scaler_and_encoder(
    preprocessing_settings: PreprocessingSettings, task: Task, scale_numbers: bool | None
) -> tuple[base.Transformer | None, preprocessing.OneHotEncoder | None]:
    """The numeric scaler and the category encoder the prefix gets (either may be absent)."""
    numeric_scaler: base.Transformer | None = None
    scale = preprocessing_settings.scale_numbers if scale_numbers is None else scale_numbers
    if task is Task.ANOMALY:
        numeric_scaler = UnitRangeScaler()
    elif scale:
        numeric_scaler = preprocessing.StandardScaler()
    one_hot = preprocessing_settings.one_hot_categories or task is Task.ANOMALY
    return numeric_scaler, preprocessing.OneHotEncoder(drop_zeros=True) if one_hot else None


def build_layered_preprocessing(
    preprocessing_settings: PreprocessingSettings, task: Task, *, scale_numbers: bool | None = None
) -> compose.Pipeline:
    """The former prefix (snapshot format 1) as separate River steps:
    ``FeatureCleaner [| TransformerUnion(SelectType(Number) [| scaler], SelectType(str) [| one-hot])]``.

    Kept as the reference that :class:`Preprocessor` is tested against (identical results), and to build the
    layout that old snapshots hold.
    """
    cleaner = compose.Pipeline(FeatureCleaner(impute_missing=preprocessing_settings.impute_missing))
    numeric_scaler, encoder = _scaler_and_encoder(preprocessing_settings, task, scale_numbers)
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
    return compose.Pipeline(build_preprocessing(preprocessing, resolved, scale_numbers=scale), estimator)


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
        #: group scope: the state at the last sync (mergeable pipelines only), and other members' models that vote
        self._base: list[dict[str, Any]] | None = None
        self._views: list[RiverLearner] = []
        self._merge_mode: MergeMode | None = None
        self._replay: ReplayLog | None = None

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
        prefix = build_preprocessing(preprocessing, task, scale_numbers=scales_numbers(preprocessing, estimator))
        return cls(compose.Pipeline(prefix, estimator), task, model.estimator, model.params)

    def predict_one(self, row: Row) -> Output:
        return self._predict(dict(row.features))

    def process(self, rows: Sequence[Row], targets: Sequence[Target | None]) -> list[Output]:
        """Prequential, one row at a time, as :meth:`Learner.process`, with less overhead per row.

        Each row's features are copied once and that copy is predicted, then learned, as River's own
        ``evaluate.progressive_val_score`` passes one dict to both. An adaptive random forest's ``learn_one``
        reuses the tree predictions its prediction just made (:mod:`shared.learners.tree_reuse`).
        """
        outputs: list[Output] = []
        predict, learn = self._predict, self.pipeline.learn_one
        anomaly = self.task is Task.ANOMALY
        record = self._replay.record if self._replay is not None else None
        reuse = TreePredictionReuse.for_estimator(self.pipeline[-1])  # River's adaptive random forests
        for row, target in zip(rows, targets, strict=True):
            x = dict(row.features)
            if anomaly:
                outputs.append(predict(x))
                learn(x)
            elif target is None:
                outputs.append(predict(x))
                continue
            elif reuse is None:
                outputs.append(predict(x))
                learn(x, target)
            else:  # the forest's learn_one reuses the tree predictions its prediction just made
                reuse.begin()
                try:
                    outputs.append(predict(x))
                    learn(x, target)
                finally:
                    reuse.end()
            if record is not None:
                record(row, target)
        return outputs

    def _predict(self, x: dict[str, Any]) -> Output:
        own = self._own_predict(x)
        return self._vote(x, own) if self._views else own

    def _vote(self, x: dict[str, Any], own: Output) -> Output:
        """This model's output combined with the views' (the other members' models as of their last sync):
        the mean of the class probabilities (a majority of predictions without them), of the regression values,
        of the anomaly scores."""
        outputs = [own, *(view._own_predict(dict(x)) for view in self._views)]
        if self.task is Task.ANOMALY:
            scores = [o.score for o in outputs if o.score is not None]
            return Output(None, score=sum(scores) / len(scores) if scores else None)
        if self.task is Task.REGRESSION:
            values = [float(o.prediction) for o in outputs if isinstance(o.prediction, int | float)]
            return Output(sum(values) / len(values) if values else own.prediction)
        if any(o.proba for o in outputs):
            proba: dict[Target, float] = {}
            for output in outputs:
                for label, p in output.proba.items():
                    proba[label] = proba.get(label, 0.0) + p / len(outputs)
            return Output(max(proba, key=proba.__getitem__), proba)
        votes: dict[Target, int] = {}
        for output in outputs:
            if output.prediction is not None:
                votes[output.prediction] = votes.get(output.prediction, 0) + 1
        return Output(max(votes, key=votes.__getitem__) if votes else None)

    def _own_predict(self, x: dict[str, Any]) -> Output:
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
        elif target is None:
            raise ValueError(f"a {self.task} learner needs a target to learn")
        else:
            self.pipeline.learn_one(x, target)
        if self._replay is not None:
            self._replay.record(row, target)

    def snapshot(self) -> bytes:
        """A JSON header line (kind, format, library versions) followed by the pickled state."""
        header = {"kind": KIND, "format": SNAPSHOT_FORMAT, **_library_versions()}
        state = {"pipeline": self.pipeline, "task": str(self.task), "estimator": self.estimator, "params": self.params}
        return json.dumps(header, sort_keys=True).encode() + b"\n" + _pickle_state(state)

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
        if header.get("format") not in READABLE_SNAPSHOT_FORMATS:
            raise SnapshotError(f"River snapshot format {header.get('format')!r}, expected one of "
                                f"{', '.join(map(str, READABLE_SNAPSHOT_FORMATS))}")
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
        return cls(fuse_preprocessing(pipeline), task, estimator, params)

    def clone(self) -> Self:
        """An untrained copy (River's ``clone``: same parameters, same seed)."""
        copy = type(self)(self.pipeline.clone(), self.task, self.estimator, self.params)
        if self._replay is not None:  # the same merge mode; nothing learned, so nothing recorded yet
            copy.replay(self._replay.max_examples)
        return copy

    def memory_bytes(self) -> int:
        """River's own estimate: the size of the pipeline's object graph, plus in group scope the copy taken at
        the last sync and the other workers' models that vote with this one."""
        total = int(self.pipeline._raw_memory_usage)
        if self._replay is not None:
            total += self._replay.memory_bytes()
        if self._base is not None:
            from shared.sync.river_state import base_memory

            total += base_memory(self._base)
        return total + sum(view.memory_bytes() for view in self._views)

    def merge_mode(self) -> MergeMode:
        """``exact``/``average`` when every pipeline step merges (:mod:`shared.sync.river_state`), else ``view``."""
        if self._replay is not None:
            return MergeMode.REPLAY
        if self._merge_mode is None:
            from shared.sync.river_state import pipeline_mode

            self._merge_mode = pipeline_mode(self.pipeline)
        return self._merge_mode

    def replay(self, max_examples: int) -> bool:
        if self._replay is None:
            self._replay = ReplayLog(max_examples)
        self._replay.max_examples = max_examples
        self._base = None
        self._views = []
        return True

    def mark_synced(self) -> None:
        if self._replay is not None:
            self._replay.clear()
        elif self.merge_mode() is not MergeMode.VIEW:
            from shared.sync.river_state import base_copy

            self._base = base_copy(self.pipeline)

    def sync_delta(self) -> bytes | None:
        if self._replay is not None:
            return self._replay.delta()
        if self.merge_mode() is MergeMode.VIEW:
            return None
        from shared.sync.river_state import base_copy, pipeline_delta

        if self._base is None:  # never synced (a model replaced by a drift reset): measured from untrained
            self._base = base_copy(self.pipeline.clone())
        return orjson.dumps(pipeline_delta(self.pipeline, self._base))

    def merge(self, own: bytes | None, own_weight: int, others: Sequence[tuple[bytes, int]]) -> None:
        if self._replay is not None:
            learn_replayed(self, self._replay, others)
            return
        if self.merge_mode() is MergeMode.VIEW or not others:
            return
        from shared.sync.river_state import base_copy, merge_pipeline, pipeline_delta

        if self._base is None:
            self._base = base_copy(self.pipeline.clone())
        if own is None:
            own = orjson.dumps(pipeline_delta(self.pipeline, self._base))
        merge_pipeline(self.pipeline, self._base, orjson.loads(own), own_weight,
                       [(orjson.loads(delta), weight) for delta, weight in others])

    def set_views(self, views: Sequence[Learner]) -> None:
        self._views = [view for view in views if isinstance(view, RiverLearner) and view.task is self.task]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "estimator": self.estimator,
            "params": self.params,
            "pipeline": str(self.pipeline),
        }


def _random_from_state(version: int, words: bytes, gauss_next: float | None) -> random.Random:
    """Unpickle a ``random.Random`` pickled by :func:`_reduce_random`: the same generator state."""
    generator = random.Random.__new__(random.Random)
    generator.setstate((version, tuple(array.array("I", words)), gauss_next))
    return generator


def _reduce_random(generator: random.Random) -> tuple[Any, tuple[int, bytes, float | None]]:
    version, internal, gauss_next = random.Random.getstate(generator)
    return _random_from_state, (version, array.array("I", internal).tobytes(), gauss_next)


#: pickling overrides for snapshots: River trees keep one ``random.Random`` per leaf (thousands in a forest), whose
#: 625-integer states pickled one int at a time were most of an ARF snapshot's bytes and time
_SNAPSHOT_DISPATCH = copyreg.dispatch_table.copy()
_SNAPSHOT_DISPATCH[random.Random] = _reduce_random


def _pickle_state(state: Any) -> bytes:
    """``pickle.dumps(state, protocol=5)``, with ``random.Random`` states packed (snapshot format 2)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=5)
    pickler.dispatch_table = _SNAPSHOT_DISPATCH
    pickler.dump(state)
    return buffer.getvalue()


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
    "Preprocessor",
    "RiverLearner",
    "UnitRangeScaler",
    "build_estimator",
    "build_layered_preprocessing",
    "build_preprocessing",
    "build_river_learner",
    "build_river_pipeline",
    "fuse_preprocessing",
    "restore_river_learner",
    "scales_numbers",
]
