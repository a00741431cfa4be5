"""Data drift: how far each feature's recent values are from its reference values.

Each tracked variable keeps a reference window (its first ``reference_size`` values after the start or a
reset, optionally refreshed) and a recent window (its last ``recent_size`` values after the reference, a
deque). Numbers are scored with PSI over the reference's quantile bins and the two-sample KS statistic;
categories (strings, booleans) with PSI over the categories seen. Updates only append; scores are
computed when asked, and only for variables that changed since the last time. See ``docs/drift.md``.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Hashable, Mapping, Sequence
from itertools import chain
from typing import Final, cast

import numpy as np

from shared.learners.base import FeatureValue

PSI: Final = "psi"
KS: Final = "ks"
NUMERIC_STATISTICS: Final = (PSI, KS)
CATEGORICAL_STATISTICS: Final = (PSI,)

NUMERIC: Final = "numeric"
CATEGORICAL: Final = "categorical"

#: the types of values :meth:`_Variable.add_many` appends a batch at a time (``None`` is skipped)
_NUMBERS: Final = frozenset({float, int, type(None)})
#: and the types of categories
_CATEGORIES: Final = frozenset({str, bool, type(None)})

#: pseudo-count added to every bin, so an empty bin gives a finite PSI
_SMOOTHING: Final = 0.5


def population_stability_index(reference_counts: np.ndarray, recent_counts: np.ndarray) -> float:
    """PSI = sum over bins of (recent share - reference share) * ln(recent share / reference share)."""
    reference = (reference_counts + _SMOOTHING) / (reference_counts.sum() + _SMOOTHING * len(reference_counts))
    recent = (recent_counts + _SMOOTHING) / (recent_counts.sum() + _SMOOTHING * len(recent_counts))
    return float(np.sum((recent - reference) * np.log(recent / reference)))


def ks_statistic(sorted_reference: np.ndarray, sorted_recent: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    points = np.concatenate([sorted_reference, sorted_recent])
    reference_cdf = np.searchsorted(sorted_reference, points, side="right") / len(sorted_reference)
    recent_cdf = np.searchsorted(sorted_recent, points, side="right") / len(sorted_recent)
    return float(np.max(np.abs(reference_cdf - recent_cdf)))


class _Variable:
    """The reference and recent windows of one variable, and its cached scores."""

    def __init__(self, reference_size: int, recent_size: int, bins: int, min_recent: int,
                 refresh_every: int | None) -> None:
        self.reference_size = reference_size
        self.bins = bins
        self.min_recent = min_recent
        self.refresh_every = refresh_every
        self.kind: str | None = None
        self.reference: list[Hashable] = []
        self.recent: deque[Hashable] = deque(maxlen=recent_size)
        self.ignored = 0
        self._since_refresh = 0
        self._version = 0
        self._scored_version = -1
        self._scores: dict[str, float] = {}
        self._sorted_reference: np.ndarray | None = None
        self._edges: np.ndarray | None = None

    def add(self, value: FeatureValue) -> None:
        if value is None:
            return
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric and not math.isfinite(value):  # type: ignore[arg-type]
            self.ignored += 1
            return
        if self.kind is None:
            self.kind = NUMERIC if numeric else CATEGORICAL
        elif self.kind == NUMERIC and not numeric:
            self.ignored += 1
            return
        self._version += 1
        if len(self.reference) < self.reference_size:
            self.reference.append(value)
            return
        self.recent.append(value)
        if self.refresh_every is not None:
            self._since_refresh += 1
            if self._since_refresh >= self.refresh_every:
                self._refresh()

    def add_many(self, values: Sequence[FeatureValue]) -> None:
        """:meth:`add` for each value in order; a batch of finite numbers, or of categories, is appended at once."""
        if not values:
            return
        types = set(map(type, values))
        kept = [v for v in values if v is not None] if type(None) in types else list(values)
        if types <= _NUMBERS:
            numbers = cast(list[float], kept)  # the types were checked: every one is an int or a float
            try:
                total: float = sum(numbers)
            except OverflowError:
                total = math.inf
            if isinstance(total, float) and not math.isfinite(total):  # a NaN or infinity (or an overflow)
                for value in values:
                    self.add(value)
                return
            if not kept:
                return
            if self.kind is None:
                self.kind = NUMERIC
        elif types <= _CATEGORIES:
            if not kept:
                return
            if self.kind == NUMERIC:  # categories of a numeric variable are ignored
                self.ignored += len(kept)
                return
            if self.kind is None:
                self.kind = CATEGORICAL
        else:
            for value in values:
                self.add(value)
            return
        self._append(kept)

    def _append(self, kept: Sequence[FeatureValue]) -> None:
        self._version += len(kept)
        reference, recent = self.reference, self.recent
        i, n = 0, len(kept)
        while i < n:
            missing = self.reference_size - len(reference)
            if missing > 0:
                taken = kept[i:i + missing]
                reference.extend(taken)
                i += len(taken)
                continue
            if self.refresh_every is None:
                recent.extend(kept[i:])
                break
            room = max(1, self.refresh_every - self._since_refresh)
            taken = kept[i:i + room]
            recent.extend(taken)
            i += len(taken)
            self._since_refresh += len(taken)
            if self._since_refresh >= self.refresh_every:
                self._refresh()
                reference, recent = self.reference, self.recent

    def _refresh(self) -> None:
        self.reference = list(self.recent)[-self.reference_size:]
        self.recent.clear()
        self._since_refresh = 0
        self._sorted_reference = None
        self._edges = None

    def stored(self) -> int:
        return len(self.reference) + len(self.recent)

    def scores(self) -> dict[str, float]:
        if self._scored_version == self._version:
            return self._scores
        self._scored_version = self._version
        ready = len(self.reference) >= self.reference_size and len(self.recent) >= self.min_recent
        if not ready:
            self._scores = {}
        elif self.kind == NUMERIC:
            self._scores = self._numeric_scores()
        else:
            self._scores = self._categorical_scores()
        return self._scores

    def _numeric_scores(self) -> dict[str, float]:
        if self._sorted_reference is None or self._edges is None:
            self._sorted_reference = np.sort(np.asarray(self.reference, dtype=float))
            quantiles = np.linspace(0.0, 1.0, self.bins + 1)[1:-1]
            self._edges = np.unique(np.quantile(self._sorted_reference, quantiles))
        recent = np.sort(np.asarray(self.recent, dtype=float))
        n_bins = len(self._edges) + 1
        reference_counts = np.bincount(np.searchsorted(self._edges, self._sorted_reference, side="right"),
                                       minlength=n_bins)
        recent_counts = np.bincount(np.searchsorted(self._edges, recent, side="right"), minlength=n_bins)
        return {
            PSI: population_stability_index(reference_counts.astype(float), recent_counts.astype(float)),
            KS: ks_statistic(self._sorted_reference, recent),
        }

    def _categorical_scores(self) -> dict[str, float]:
        reference = Counter(self.reference)
        recent = Counter(self.recent)
        categories = list(reference.keys() | recent.keys())
        reference_counts = np.array([reference[c] for c in categories], dtype=float)
        recent_counts = np.array([recent[c] for c in categories], dtype=float)
        return {PSI: population_stability_index(reference_counts, recent_counts)}


class DistributionDrift:
    """Drift of one distribution (the labels, or a model's predictions) against its reference window."""

    def __init__(self, reference_size: int = 1000, recent_size: int = 1000, bins: int = 10, *,
                 min_recent: int | None = None, refresh_every: int | None = None) -> None:
        _check_sizes(reference_size, recent_size, bins)
        self._args = (reference_size, recent_size, bins, _min_recent(min_recent, recent_size), refresh_every)
        self._variable = _Variable(*self._args)

    def update(self, value: FeatureValue) -> None:
        """Add one value (``None`` is skipped)."""
        self._variable.add(value)

    def update_many(self, values: Sequence[FeatureValue]) -> None:
        """:meth:`update` for each value in order."""
        self._variable.add_many(values)

    def scores(self) -> dict[str, float]:
        """``{statistic: value}``: ``psi`` and ``ks`` for numbers, ``psi`` for categories; empty until ready."""
        return dict(self._variable.scores())

    def reset(self) -> None:
        """Forget both windows; the next values form a new reference."""
        self._variable = _Variable(*self._args)

    def stored_values(self) -> int:
        """Values held in memory (at most ``reference_size + recent_size``)."""
        return self._variable.stored()


class DataDriftMonitor:
    """Per-feature data drift between a reference window and the recent window.

    The first ``max_features`` feature names seen are tracked; values of others are counted in
    ``untracked_values`` and dropped. A feature is scored once its reference is full and its recent window
    holds ``min_recent`` values (default: ``recent_size // 2``, at most 100).
    """

    def __init__(self, reference_size: int = 1000, recent_size: int = 1000, max_features: int = 100,
                 bins: int = 10, *, min_recent: int | None = None, refresh_every: int | None = None) -> None:
        _check_sizes(reference_size, recent_size, bins)
        if max_features < 1:
            raise ValueError("max_features must be at least 1")
        self.reference_size = reference_size
        self.recent_size = recent_size
        self.max_features = max_features
        self.bins = bins
        self.min_recent = _min_recent(min_recent, recent_size)
        self.refresh_every = refresh_every
        self.untracked_values = 0
        self._variables: dict[str, _Variable] = {}

    @property
    def tracked_features(self) -> list[str]:
        """The feature names being tracked, in the order first seen."""
        return list(self._variables)

    def update(self, features: Mapping[str, FeatureValue]) -> None:
        """Add one event's features (``None`` values are skipped)."""
        variables = self._variables
        for name, value in features.items():
            variable = variables.get(name)
            if variable is None:
                if len(variables) >= self.max_features:
                    self.untracked_values += 1
                    continue
                variable = variables[name] = _Variable(self.reference_size, self.recent_size, self.bins,
                                                       self.min_recent, self.refresh_every)
            variable.add(value)

    def update_many(self, batch: Sequence[Mapping[str, FeatureValue]]) -> None:
        """:meth:`update` for each event's features in order, one column (feature) at a time.

        Variables are independent, so adding a feature's values of the whole batch at once gives the same windows.
        New names are tracked in the order of their first sighting (event by event), while there is room.
        """
        if not batch:
            return
        variables = self._variables
        names = set().union(*batch)
        if not names.issubset(variables):
            room = self.max_features - len(variables)
            for name in dict.fromkeys(chain.from_iterable(batch)):  # every name, in the order first seen
                if name in variables:
                    continue
                if room > 0:
                    variables[name] = _Variable(self.reference_size, self.recent_size, self.bins, self.min_recent,
                                                self.refresh_every)
                    room -= 1
                else:
                    self.untracked_values += sum(1 for features in batch if name in features)
        for name, variable in variables.items():
            if name in names:
                variable.add_many([features.get(name) for features in batch])

    def scores(self) -> dict[tuple[str, str], float]:
        """``{(feature, statistic): value}`` for the features that are ready."""
        result: dict[tuple[str, str], float] = {}
        for name, variable in self._variables.items():
            for statistic, value in variable.scores().items():
                result[(name, statistic)] = value
        return result

    def top_k(self, k: int, statistic: str = PSI) -> list[tuple[str, float]]:
        """The ``k`` features with the highest ``statistic``, highest first."""
        ranked = [(name, value) for (name, stat), value in self.scores().items() if stat == statistic]
        ranked.sort(key=lambda item: (-item[1], item[0]))
        return ranked[:k]

    def kinds(self) -> dict[str, str]:
        """``numeric`` or ``categorical`` for each tracked feature that has had a value."""
        return {name: v.kind for name, v in self._variables.items() if v.kind is not None}

    def reset(self) -> None:
        """Forget every window and tracked feature; the next values form new references."""
        self._variables.clear()
        self.untracked_values = 0

    def stored_values(self) -> int:
        """Values held in memory (at most ``max_features * (reference_size + recent_size)``)."""
        return sum(v.stored() for v in self._variables.values())


def _check_sizes(reference_size: int, recent_size: int, bins: int) -> None:
    if reference_size < 2 or recent_size < 2:
        raise ValueError("reference_size and recent_size must be at least 2")
    if bins < 2:
        raise ValueError("bins must be at least 2")


def _min_recent(min_recent: int | None, recent_size: int) -> int:
    if min_recent is None:
        return max(1, min(recent_size // 2, 100))
    if not 1 <= min_recent <= recent_size:
        raise ValueError("min_recent must be between 1 and recent_size")
    return min_recent
