"""Semantic validation: what the schema lets through but no model should learn (docs/contract.md).

A label must fit the task of every configured model (``True``/``False`` or 0/1 for a binary classifier, a number for
a regressor; a new class for a multiclass model is fine), ``ts`` must lie within a window of now, numbers within
``limits.max_abs_value``, and an event needs at least one feature unless ``limits.allow_empty_features``. Each
failure is a :class:`~shared.steps.batch.Rejection` with its own code, so it is dead-lettered and counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from shared.contract import SEMANTIC_ERROR_CODES, Event
from shared.learners.base import Task
from shared.settings import LimitSettings, Settings
from shared.steps.batch import Batch, Rejection

LABEL_TASK, TS_OUT_OF_WINDOW, VALUE_OUT_OF_RANGE, NO_FEATURES = SEMANTIC_ERROR_CODES

_BINARY_VALUES = frozenset({0, 1})


class SemanticRules:
    """The checks, for one worker's limits and the tasks of its models."""

    def __init__(self, limits: LimitSettings, tasks: Iterable[Task], *, clock: Callable[[], float] = time.time) -> None:
        self._limits = limits
        self._tasks = sorted(set(tasks), key=lambda t: t.value)
        self._clock = clock

    def check_event(self, event: Event) -> Rejection | None:
        """Why ``event`` must not be learned or predicted, or ``None``."""
        limits = self._limits
        if not event.features and not limits.allow_empty_features:
            return Rejection(NO_FEATURES, "event has no features (set limits.allow_empty_features to accept it)")
        bound = limits.max_abs_value
        values = event.features.values()
        try:  # the common case: numbers only, checked at C speed
            in_range = not values or (-bound <= min(values) and max(values) <= bound)  # type: ignore[type-var,operator]
        except TypeError:  # strings or nulls among them
            in_range = False
        if not in_range:
            for name, value in event.features.items():
                if (type(value) is float or type(value) is int) and not -bound <= value <= bound:
                    # the value itself stays out of the reason: the header must not carry a masked feature
                    return Rejection(VALUE_OUT_OF_RANGE, f"feature {name!r} is beyond limits.max_abs_value={bound:g}")
        return self.check_ts(event.ts) or (None if event.label is None else self.check_label(event.label))

    def check_ts(self, ts: float | None) -> Rejection | None:
        """Why ``ts`` lies outside the accepted window of now, or ``None``."""
        if ts is None:
            return None
        limits, now = self._limits, self._clock()
        if limits.ts_max_future_s is not None and ts > now + limits.ts_max_future_s:
            return Rejection(TS_OUT_OF_WINDOW, f"ts {ts:g} is more than limits.ts_max_future_s="
                                               f"{limits.ts_max_future_s:g} s in the future")
        if limits.ts_max_age_s is not None and ts < now - limits.ts_max_age_s:
            return Rejection(TS_OUT_OF_WINDOW, f"ts {ts:g} is more than limits.ts_max_age_s="
                                               f"{limits.ts_max_age_s:g} s in the past")
        return None

    def check_label(self, label: Any) -> Rejection | None:
        """Why ``label`` does not fit the task of every configured model, or ``None``."""
        for task in self._tasks:
            rejection = _label_rejection(label, task, self._limits.max_abs_value)
            if rejection is not None:
                return rejection
        return None


def _label_rejection(label: Any, task: Task, bound: float) -> Rejection | None:
    kind = type(label)
    if task is Task.BINARY:
        if kind is bool or (kind in (int, float) and label in _BINARY_VALUES):
            return None
        return Rejection(LABEL_TASK, f"label {label!r} does not fit a binary classifier (true/false or 0/1)")
    if task is Task.REGRESSION:
        if kind not in (int, float):
            return Rejection(LABEL_TASK, f"label {label!r} does not fit a regressor (a number)")
        if not (math.isfinite(label) and -bound <= label <= bound):
            return Rejection(VALUE_OUT_OF_RANGE, f"label {label!r} is beyond limits.max_abs_value={bound:g}")
    return None  # multiclass: any class, a new one included


class SemanticCheckStep:
    """Rejects the decoded events that :class:`SemanticRules` refuses (right after decoding)."""

    def __init__(self, rules: SemanticRules) -> None:
        self._rules = rules

    def process(self, batch: Batch) -> None:
        check = self._rules.check_event
        for record in batch.records:
            if record.event is not None and record.rejection is None:
                record.rejection = check(record.event)


def rules_for(settings: Settings) -> SemanticRules:
    """The rules a worker with these settings applies (its limits and its models' tasks), for producers."""
    from shared.learners.registry import build_learner  # torch and River load only when a producer asks

    tasks = {build_learner(m, settings.preprocessing, settings.worker.seed).task for m in settings.models}
    return SemanticRules(settings.limits, tasks)
