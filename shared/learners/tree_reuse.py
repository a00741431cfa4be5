"""Prequential steps of River's adaptive random forests without predicting every tree twice.

``ARFClassifier.learn_one`` starts each tree's update with that tree's prediction of ``x`` (for its accuracy and
its drift detectors), which the forest's prediction of the same ``x`` has just computed: a worker that predicts
and then learns each event pays every tree's prediction twice. :class:`TreePredictionReuse` remembers each tree's
prediction during the forest's prediction and serves it again to ``learn_one`` when the tree has not changed and
its input is equal, so the predictions and every update stay River's own (docs/models.md, "Adaptive random
forests"; checked against River's one-at-a-time loop in ``tests/unit/test_fast_path.py``).

Why it is sound: a tree's prediction is a function of the tree and ``x``; between the forest's prediction and the
tree's own update in ``learn_one`` nothing changes the tree (``learn_one`` asks tree *i* for its prediction before
it updates tree *i* or its background tree), and the input is compared by value (a preprocessing step that learns
before it transforms may hand ``learn_one`` other values: the tree then predicts again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from river.forest.adaptive_random_forest import ARFClassifier, ARFRegressor, BaseForest

#: the tree method each forest calls in both its prediction and its ``learn_one``
_TREE_METHOD: dict[type, str] = {ARFClassifier: "predict_proba_one", ARFRegressor: "predict_one"}


class _Remembered:
    """One tree's prediction method, answering again for an equal input without predicting."""

    __slots__ = ("_predict", "_value", "_x")

    def __init__(self, predict: Callable[..., Any]) -> None:
        self._predict = predict
        self._x: dict[Any, Any] | None = None
        self._value: Any = None

    def __call__(self, x: dict[Any, Any], **kwargs: Any) -> Any:
        if not kwargs and self._x is not None and x == self._x:
            return self._value
        value = self._predict(x, **kwargs)
        if not kwargs:
            self._x, self._value = dict(x), value  # a copy: equal values, whatever happens to the caller's dict
        return value


class TreePredictionReuse:
    """For one forest: remember its trees' predictions from :meth:`begin` to :meth:`end` (one event's predict and
    learn). Outside that span the trees are River's own objects, untouched (so snapshots never hold a memo)."""

    __slots__ = ("_forest", "_method", "_trees")

    def __init__(self, forest: BaseForest, method: str) -> None:
        self._forest = forest
        self._method = method
        self._trees: list[Any] = []

    @classmethod
    def for_estimator(cls, estimator: Any) -> TreePredictionReuse | None:
        """For River's ``ARFClassifier`` and ``ARFRegressor`` (exact types: a subclass may predict otherwise)."""
        method = _TREE_METHOD.get(type(estimator))
        return None if method is None else cls(estimator, method)

    def begin(self) -> None:
        """Remember the predictions of the forest's trees as they are now (none before its first prediction)."""
        self._trees = list(self._forest.data) if len(self._forest) else []
        method = self._method
        for tree in self._trees:
            setattr(tree, method, _Remembered(getattr(tree, method)))

    def end(self) -> None:
        """Forget them (always called, also when the step raised)."""
        method = self._method
        for tree in self._trees:
            tree.__dict__.pop(method, None)
        self._trees = []
