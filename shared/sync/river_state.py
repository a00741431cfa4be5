"""Merging the state of River pipelines learned by several workers (docs/models.md, "Merging across workers").

A pipeline merges when every step does. Each supported step exports a *delta*: what it learned since the last sync,
as plain JSON-ready lists, computed from its state now and its state at the last sync (the *base*, plain numbers:
:func:`step_base`):

- sufficient statistics merge exactly (``exact``): running means (the imputer), running mean/variance (the
  standard scaler, Gaussian naive Bayes) by Chan's parallel formulas, counts by addition, one-hot categories by
  union. Summing every member's delta gives exactly the state one learner would have after all their examples
  (up to floating-point rounding and the order of the examples).
- linear parameters (GLMs: logistic and linear regression, perceptron; passive-aggressive) are averaged
  (``average``): each delta also carries the member's parameters as they are (its ``state``), and a merge sets
  them to ``sum(n_i * w_i) / sum(n_i)`` over this member's parameters and the others' published ones, ``n_i`` the
  examples each learned since its last sync (FedAvg over the models, not over the deltas: the members' bases
  differ, docs/architecture.md, "Designs measured"). A delta without a state (an older member) stands for
  ``base + delta``. The optimizer's state (SGD's step counter, schedules) stays local.

Every other estimator (trees, forests, anything with a model structure) does not merge: see
:mod:`shared.sync.group` for the prediction votes that stand in for a merge.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from river import compose, linear_model, naive_bayes, preprocessing, stats
from river.linear_model.base import GLM

from shared.learners.base import MergeMode

Delta = dict[str, Any]
#: a step's state at the last sync, as plain containers and numbers (:func:`step_base`)
Base = dict[str, Any]


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


# --- per step: the base, a delta and a merge ----------------------------------------------------------------
def _weights(step: Any) -> dict[str, float]:
    if isinstance(step, GLM):
        return step._weights.to_dict() if hasattr(step._weights, "to_dict") else dict(step._weights)
    return dict(step.weights)


def step_base(step: Any) -> Base:
    """What a delta is measured from: the step's state now, as plain numbers (no River objects: a third to a
    half of a deep copy's size)."""
    if _is_preprocessor(step):
        return {
            "cleaner": step_base(step.cleaner),
            "scaler": None if step.scaler is None else step_base(step.scaler),
            "encoder": None if step.encoder is None else step_base(step.encoder),
        }
    if type(step).__name__ == "FeatureCleaner":
        return {"means": {name: (float(mean.n), float(mean._mean)) for name, mean in step.means.items()}}
    if type(step) is preprocessing.StandardScaler:
        return {"counts": dict(step.counts), "means": dict(step.means), "vars": dict(step.vars)}
    if type(step) is preprocessing.OneHotEncoder:
        return {"values": {name: set(values) for name, values in step.values.items()}}
    if type(step) is naive_bayes.GaussianNB:
        return {"class_counts": dict(step.class_counts),
                "gaussians": {label: {name: _var_moments(gaussian._var) for name, gaussian in by_feature.items()}
                              for label, by_feature in step.gaussians.items()}}
    if isinstance(step, GLM) or type(step) in (linear_model.PAClassifier, linear_model.PARegressor):
        return {"weights": _weights(step), "intercept": float(step.intercept)}
    raise TypeError(f"{type(step).__name__} does not merge")


def step_delta(step: Any, base: Base) -> Delta:
    """What ``step`` learned since ``base`` (its :func:`step_base` at the last sync), JSON-ready."""
    if _is_preprocessor(step):
        return {
            "cleaner": step_delta(step.cleaner, base["cleaner"]),
            "scaler": None if step.scaler is None else step_delta(step.scaler, base["scaler"]),
            "encoder": None if step.encoder is None else step_delta(step.encoder, base["encoder"]),
        }
    if type(step).__name__ == "FeatureCleaner":
        out = []
        for name, mean in step.means.items():
            n0, m0 = base["means"].get(name, (0.0, 0.0))
            n, m, _ = _minus((float(mean.n), float(mean._mean), 0.0), (n0, m0, 0.0))
            if n > 0:
                out.append([name, n, m])
        return {"means": out}
    if type(step) is preprocessing.StandardScaler:
        out = []
        for name, count in step.counts.items():
            n0 = float(base["counts"].get(name, 0))
            before = (n0, base["means"].get(name, 0.0), base["vars"].get(name, 0.0) * n0)
            now = (float(count), step.means[name], step.vars[name] * count)
            moments = _minus(now, before)
            if moments[0] > 0:
                out.append([name, *moments])
        return {"moments": out}
    if type(step) is preprocessing.OneHotEncoder:
        old_values = base["values"]
        return {"values": [[name, sorted(values - old_values.get(name, set()), key=str)]
                           for name, values in step.values.items() if values - old_values.get(name, set())]}
    if type(step) is naive_bayes.GaussianNB:
        old_counts = base["class_counts"]
        counts = [[label, count - old_counts.get(label, 0)] for label, count in step.class_counts.items()
                  if count != old_counts.get(label, 0)]
        gaussians = []
        for label, by_feature in step.gaussians.items():
            old_by_feature = base["gaussians"].get(label, {})
            for name, gaussian in by_feature.items():
                moments = _minus(_var_moments(gaussian._var), old_by_feature.get(name, (0.0, 0.0, 0.0)))
                if moments[0] > 0:
                    gaussians.append([label, name, *moments])
        return {"class_counts": counts, "gaussians": gaussians}
    if isinstance(step, GLM) or type(step) in (linear_model.PAClassifier, linear_model.PARegressor):
        old = base["weights"]
        weights = _weights(step)
        return {"weights": [[name, w - old.get(name, 0.0)] for name, w in weights.items() if w != old.get(name, 0.0)],
                "intercept": step.intercept - base["intercept"],
                "state": {"weights": list(weights.items()), "intercept": float(step.intercept)}}
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


def _average(step: Any, base: Base, own_weight: float, others: Sequence[tuple[Delta, float]]) -> None:
    """Set a linear step's parameters to the weighted mean of its own (weight ``own_weight``) and the others'
    published ones (``sum(n_i * w_i) / sum(n_i)``); a delta without a state stands for ``base + delta``."""
    members: list[tuple[dict[str, float], float, float]] = [(_weights(step), float(step.intercept), own_weight)]
    old = base["weights"]
    for delta, weight in others:
        state = delta.get("state")
        if state is not None:
            members.append((dict(state["weights"]), float(state["intercept"]), weight))
        else:
            change = dict(delta["weights"])
            members.append(({name: old.get(name, 0.0) + change.get(name, 0.0) for name in set(old) | set(change)},
                            base["intercept"] + delta["intercept"], weight))
    total = sum(weight for *_, weight in members if weight > 0)
    if total <= 0:
        return
    mean: dict[str, float] = {}
    intercept = 0.0
    for weights, member_intercept, weight in members:
        if weight <= 0:
            continue
        for name, value in weights.items():
            mean[name] = mean.get(name, 0.0) + value * weight / total
        intercept += member_intercept * weight / total
    target = step._weights if isinstance(step, GLM) else step.weights
    for name in set(target) | set(mean):
        target[name] = mean.get(name, 0.0)
    step.intercept = intercept


def pipeline_delta(pipeline: compose.Pipeline, base: Sequence[Base]) -> list[Delta]:
    """One delta per step (see :func:`step_delta`)."""
    return [step_delta(step, old) for step, old in zip(pipeline.steps.values(), base, strict=True)]


def merge_pipeline(
    pipeline: compose.Pipeline, base: Sequence[Base], own: Sequence[Delta], own_weight: float,
    others: Sequence[tuple[Sequence[Delta], float]],
) -> None:
    """Merge the other members' deltas into ``pipeline`` (whose own delta since ``base`` is ``own``).

    Exact steps add the others' deltas; averaging steps become the weighted mean of this member's parameters and
    the others' (:func:`_average`; ``own`` is kept for the signature's callers, the parameters are read from the
    step itself).
    """
    for index, (step, old) in enumerate(zip(pipeline.steps.values(), base, strict=True)):
        if step_mode(step) is MergeMode.AVERAGE:
            _average(step, old, own_weight, [(delta[index], w) for delta, w in others])
        else:
            for delta, _ in others:
                _add_exact(step, delta[index])


def base_copy(pipeline: compose.Pipeline) -> list[Base]:
    """What the next delta is measured from: one :func:`step_base` per step (only mergeable pipelines)."""
    return [step_base(step) for step in pipeline.steps.values()]


def base_memory(value: Any) -> int:
    """The bytes of a base's containers and numbers (``sys.getsizeof``, recursively); not its strings, which are
    the model's own feature names and labels, shared."""
    if isinstance(value, str):
        return 0
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        return size + sum(base_memory(key) + base_memory(item) for key, item in value.items())
    if isinstance(value, list | tuple | set):
        return size + sum(base_memory(item) for item in value)
    return size
