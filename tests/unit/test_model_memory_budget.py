"""The model-memory gauge's walk takes at most ``MEMORY_MAX_TIME_FRACTION`` of the time (fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.learners.registry import build_learner
from shared.settings import ModelSettings, PreprocessingSettings
from shared.steps.models import MEMORY_INTERVAL_S, MEMORY_MAX_TIME_FRACTION, ModelStep


def _step(walk_s: float) -> tuple[ModelStep, list[float], list[int]]:
    now = [0.0]
    calls: list[int] = []

    def factory(model: ModelSettings) -> Any:
        learner = build_learner(model, PreprocessingSettings(), 1)
        walk = learner.memory_bytes

        def slow() -> int:
            calls.append(1)
            now[0] += walk_s
            return walk()

        learner.memory_bytes = slow  # type: ignore[method-assign]
        return learner

    step = ModelStep([ModelSettings(name="m", estimator="river.linear_model.LogisticRegression")], factory,
                     monotonic=lambda: now[0])
    step.assign(("events", 0))
    return step, now, calls


def test_a_cheap_walk_keeps_the_interval() -> None:
    step, now, calls = _step(0.025)  # a 10-tree ARF: 25 ms, 0.17% of 15 s
    step.memory_bytes()
    assert step.memory_walk_s == 0.025
    now[0] = MEMORY_INTERVAL_S - 0.001
    step.memory_bytes()
    assert len(calls) == 1
    now[0] = MEMORY_INTERVAL_S
    step.memory_bytes()
    assert len(calls) == 2


def test_a_slow_walk_is_reused_for_its_cost_over_the_fraction() -> None:
    step, now, calls = _step(0.5)  # 0.5 s: at 1%, reused for 50 s
    first = step.memory_bytes()
    assert first["m"] > 0
    hold = 0.5 / MEMORY_MAX_TIME_FRACTION
    assert hold > MEMORY_INTERVAL_S
    now[0] = hold - 0.001
    assert step.memory_bytes() == first and len(calls) == 1
    now[0] = hold
    step.memory_bytes()
    assert len(calls) == 2


def test_time_spent_walking_stays_within_the_fraction() -> None:
    step, now, calls = _step(0.3)
    spent = 0.0
    while now[0] < 3600.0:  # an hour of commits, one a second
        before = now[0]
        step.memory_bytes()
        spent += now[0] - before
        now[0] += 1.0
    assert spent / now[0] <= MEMORY_MAX_TIME_FRACTION
    assert len(calls) >= 3600 / (0.3 / MEMORY_MAX_TIME_FRACTION + 1.0)


def test_a_model_that_doubled_what_it_learned_is_walked_again_within_the_fraction() -> None:
    """A young model grows fast: the gauge (and the checkpointer's estimate from it) does not keep a walk of a
    model that has since learned twice as much, but still spaces walks by walk-time / the fraction."""
    step, now, calls = _step(0.025)  # spaced at least 2.5 s
    learned = step.sets[("events", 0)].learned
    step.memory_bytes()
    assert step.last_walk() == (pytest.approx(0.025), 0) and len(calls) == 1
    learned["m"] = 100
    now[0] = 2.0
    step.memory_bytes()
    assert len(calls) == 1, "learned since, but within 2.5 s of the last walk"
    now[0] = 2.6
    step.memory_bytes()
    assert step.last_walk() == (pytest.approx(0.025), 100) and len(calls) == 2
    learned["m"] = 199
    now[0] = 6.0
    step.memory_bytes()
    assert len(calls) == 2, "not yet twice as many"
    learned["m"] = 200
    step.memory_bytes()
    assert step.last_walk() == (pytest.approx(0.025), 200) and len(calls) == 3
    assert step.learned_total() == 200
