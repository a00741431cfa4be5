"""Merging the state of River pipelines learned by several workers (docs/models.md, "Merging across workers").

A pipeline merges when every step does. Each supported step exports a *delta*: what it learned since the last sync,
as plain JSON-ready lists, computed from its state now and a copy taken at the last sync (the *base*):

- sufficient statistics merge exactly (``exact``): running means (the imputer), running mean/variance (the
  standard scaler, Gaussian naive Bayes) by Chan's parallel formulas, counts by addition, one-hot categories by
  union. Summing every member's delta gives exactly the state one learner would have after all their examples
  (up to floating-point rounding and the order of the examples).
- linear parameters (GLMs: logistic and linear regression, perceptron; passive-aggressive) are averaged
  (``average``, FedAvg): ``base + sum(n_i * delta_i) / sum(n_i)`` over the members' deltas, ``n_i`` the examples
  each learned since the last sync. The optimizer's state (SGD's step counter, schedules) stays local.

Every other estimator (trees, forests, anything with a model structure) does not merge: see
:mod:`shared.sync.group` for the prediction votes that stand in for a merge.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from river import compose, linear_model, naive_bayes, preprocessing, stats
from river.linear_model.base import GLM

from shared.learners.base import MergeMode

Delta = dict[str, Any]


def _is_preprocessor(step: Any) -> bool:
    return type(step).__name__ == "Preprocessor" and hasattr(step, "cleaner")


def step_mode(step: Any) -> MergeMode | None:
    """How one pipeline step merges, ``None`` when it cannot."""
    if _is_preprocessor(step):
        parts = [step_mode(step.cleaner)]
        if step.scaler is not None:
            parts.append(step_mode(step.scaler))
        if step.encoder is not None:
            parts.append(step_mode(step.encoder))
        return None if None in parts else MergeMode.EXACT
    if type(step).__name__ == "FeatureCleaner":
        return MergeMode.EXACT
    if type(step) is preprocessing.StandardScaler and step.window_size is None:
        return MergeMode.EXACT
    if type(step) is preprocessing.OneHotEncoder and step.categories is None:
        return MergeMode.EXACT
    if type(step) is naive_bayes.GaussianNB:
        return MergeMode.EXACT
    if isinstance(step, GLM) or type(step) in (linear_model.PAClassifier, linear_model.PARegressor):
        return MergeMode.AVERAGE
    return None


def pipeline_mode(pipeline: compose.Pipeline) -> MergeMode:
    """``exact`` when every step merges exactly, ``average`` when some average, ``view`` when one cannot merge."""
    modes = [step_mode(step) for step in pipeline.steps.values()]
    if any(mode is None for mode in modes):
        return MergeMode.VIEW
    return MergeMode.AVERAGE if MergeMode.AVERAGE in modes else MergeMode.EXACT


# --- running moments: (n, mean, M2) ------------------------------------------------------------------------
Moments = tuple[float, float, float]


def _minus(now: Moments, before: Moments) -> Moments:
    """The moments of the examples added between ``before`` and ``now`` (Chan's formula, inverted)."""
    n1, m1, s1 = now
    n0, m0, s0 = before
    n = n1 - n0
    if n <= 0:
        return (0.0, 0.0, 0.0)
    mean = (n1 * m1 - n0 * m0) / n
    m2 = s1 - s0 - (mean - m0) ** 2 * n0 * n / n1
    return (n, mean, max(0.0, m2))


def _plus(a: Moments, b: Moments) -> Moments:
    """Chan's parallel combination of two sets of moments."""
    na, ma, sa = a
    nb, mb, sb = b
    n = na + nb
    if n <= 0:
        return (0.0, 0.0, 0.0)
    delta = mb - ma
    return (n, ma + delta * nb / n, sa + sb + delta * delta * na * nb / n)


def _var_moments(var: stats.Var) -> Moments:
    return (float(var.mean.n), float(var.mean._mean), float(var._S))


def _set_var(var: stats.Var, moments: Moments) -> None:
    var.mean.n, var.mean._mean, var._S = moments


# --- per step: delta and merge ------------------------------------------------------------------------------
def step_delta(step: Any, base: Any) -> Delta:
    """What ``step`` learned since ``base`` (a copy of it taken at the last sync), JSON-ready."""
    if _is_preprocessor(step):
        return {
            "cleaner": step_delta(step.cleaner, base.cleaner),
            "scaler": None if step.scaler is None else step_delta(step.scaler, base.scaler),
            "encoder": None if step.encoder is None else step_delta(step.encoder, base.encoder),
        }
    if type(step).__name__ == "FeatureCleaner":
        out = []
        for name, mean in step.means.items():
            old = base.means.get(name)
            n0, m0 = (float(old.n), float(old._mean)) if old is not None else (0.0, 0.0)
            n, m, _ = _minus((float(mean.n), float(mean._mean), 0.0), (n0, m0, 0.0))
            if n > 0:
                out.append([name, n, m])
        return {"means": out}
    if type(step) is preprocessing.StandardScaler:
        out = []
        for name, count in step.counts.items():
            n0 = float(base.counts.get(name, 0))
            before = (n0, base.means.get(name, 0.0), base.vars.get(name, 0.0) * n0)
            now = (float(count), step.means[name], step.vars[name] * count)
            moments = _minus(now, before)
            if moments[0] > 0:
                out.append([name, *moments])
        return {"moments": out}
    if type(step) is preprocessing.OneHotEncoder:
        return {"values": [[name, sorted(values - base.values.get(name, set()), key=str)]
                           for name, values in step.values.items() if values - base.values.get(name, set())]}
    if type(step) is naive_bayes.GaussianNB:
        counts = [[label, count - base.class_counts.get(label, 0)] for label, count in step.class_counts.items()
                  if count != base.class_counts.get(label, 0)]
        gaussians = []
        for label, by_feature in step.gaussians.items():
            old_by_feature = base.gaussians.get(label, {})
            for name, gaussian in by_feature.items():
                old = old_by_feature.get(name)
                before = _var_moments(old._var) if old is not None else (0.0, 0.0, 0.0)
                moments = _minus(_var_moments(gaussian._var), before)
                if moments[0] > 0:
                    gaussians.append([label, name, *moments])
        return {"class_counts": counts, "gaussians": gaussians}
    if isinstance(step, GLM):
        weights = step._weights.to_dict() if hasattr(step._weights, "to_dict") else dict(step._weights)
        old = base._weights.to_dict() if hasattr(base._weights, "to_dict") else dict(base._weights)
        return {"weights": [[name, w - old.get(name, 0.0)] for name, w in weights.items() if w != old.get(name, 0.0)],
                "intercept": step.intercept - base.intercept}
    if type(step) in (linear_model.PAClassifier, linear_model.PARegressor):
        return {"weights": [[name, w - base.weights.get(name, 0.0)] for name, w in step.weights.items()
                            if w != base.weights.get(name, 0.0)],
                "intercept": step.intercept - base.intercept}
    raise TypeError(f"{type(step).__name__} does not merge")


def _add_exact(step: Any, delta: Delta) -> None:
    """Add one other member's delta to a step whose state is sufficient statistics."""
    if _is_preprocessor(step):
        _add_exact(step.cleaner, delta["cleaner"])
        if step.scaler is not None and delta.get("scaler") is not None:
            _add_exact(step.scaler, delta["scaler"])
        if step.encoder is not None and delta.get("encoder") is not None:
            _add_exact(step.encoder, delta["encoder"])
        return
    if type(step).__name__ == "FeatureCleaner":
        for name, n, m in delta["means"]:
            mean = step.means.get(name)
            if mean is None:
                mean = step.means[name] = stats.Mean()
            total, combined, _ = _plus((float(mean.n), float(mean._mean), 0.0), (n, m, 0.0))
            mean.n, mean._mean = total, combined
        return
    if type(step) is preprocessing.StandardScaler:
        for name, n, m, m2 in delta["moments"]:
            n0 = float(step.counts.get(name, 0))
            total, mean, s = _plus((n0, step.means.get(name, 0.0), step.vars.get(name, 0.0) * n0), (n, m, m2))
            step.counts[name] = round(total)
            step.means[name] = mean
            step.vars[name] = s / total if total > 0 else 0.0
        return
    if type(step) is preprocessing.OneHotEncoder:
        for name, values in delta["values"]:
            step.values[name].update(values)
            for value in values:
                step._zero_dict[f"{name}_{value}"] = 0
        return
    if type(step) is naive_bayes.GaussianNB:
        for label, count in delta["class_counts"]:
            step.class_counts[label] += count
        for label, name, n, m, m2 in delta["gaussians"]:
            gaussian = step.gaussians[label][name]
            _set_var(gaussian._var, _plus(_var_moments(gaussian._var), (n, m, m2)))
        return
    raise TypeError(f"{type(step).__name__} does not merge exactly")


def _average(step: Any, base: Any, deltas: Sequence[tuple[Delta, float]]) -> None:
    """Set a linear step's parameters to ``base + sum(n_i * delta_i) / sum(n_i)`` (FedAvg)."""
    total = sum(weight for _, weight in deltas)
    if total <= 0:
        return
    mean: dict[str, float] = {}
    intercept = 0.0
    for delta, weight in deltas:
        for name, value in delta["weights"]:
            mean[name] = mean.get(name, 0.0) + value * weight / total
        intercept += delta["intercept"] * weight / total
    if isinstance(step, GLM):
        old = base._weights.to_dict() if hasattr(base._weights, "to_dict") else dict(base._weights)
        current = step._weights.to_dict() if hasattr(step._weights, "to_dict") else dict(step._weights)
        for name in set(old) | set(current) | set(mean):
            step._weights[name] = old.get(name, 0.0) + mean.get(name, 0.0)
    else:
        for name in set(base.weights) | set(step.weights) | set(mean):
            step.weights[name] = base.weights.get(name, 0.0) + mean.get(name, 0.0)
    step.intercept = base.intercept + intercept


def pipeline_delta(pipeline: compose.Pipeline, base: compose.Pipeline) -> list[Delta]:
    """One delta per step (see :func:`step_delta`)."""
    return [step_delta(step, old) for step, old in zip(pipeline.steps.values(), base.steps.values(), strict=True)]


def merge_pipeline(
    pipeline: compose.Pipeline, base: compose.Pipeline, own: Sequence[Delta], own_weight: float,
    others: Sequence[tuple[Sequence[Delta], float]],
) -> None:
    """Merge the other members' deltas into ``pipeline`` (whose own delta since ``base`` is ``own``).

    Exact steps add the others' deltas; averaging steps become the base plus the weighted mean of every delta,
    this member's included.
    """
    for index, (step, old) in enumerate(zip(pipeline.steps.values(), base.steps.values(), strict=True)):
        if step_mode(step) is MergeMode.AVERAGE:
            _average(step, old, [(own[index], own_weight), *((delta[index], w) for delta, w in others)])
        else:
            for delta, _ in others:
                _add_exact(step, delta[index])


def base_copy(pipeline: compose.Pipeline) -> compose.Pipeline:
    """The copy a delta is measured from (only mergeable pipelines: they are small)."""
    return copy.deepcopy(pipeline)

