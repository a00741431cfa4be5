"""Champion selection: hysteresis, minimum labels between switches, pinning, lower-is-better metrics."""

from __future__ import annotations

from shared.settings import ChampionSettings
from shared.steps.champion import ChampionSelector


def test_switches_only_past_the_margin_and_after_enough_labels() -> None:
    selector = ChampionSelector(["a", "b"], ChampionSettings(margin=0.05, min_labels=100))
    assert selector.current == "a"
    assert selector.observe(50, {"a": 0.70, "b": 0.90}) is None, "too few labels yet"
    assert selector.observe(50, {"a": 0.70, "b": 0.74}) is None, "better, but within the margin"
    assert selector.observe(1, {"a": 0.70, "b": 0.76}) == "b"
    assert selector.current == "b" and selector.switches == 1
    assert selector.observe(10, {"a": 0.99, "b": 0.5}) is None, "hysteresis: wait min_labels again"
    assert selector.observe(100, {"a": 0.99, "b": 0.5}) == "a"


def test_lower_is_better_for_error_metrics() -> None:
    selector = ChampionSelector(["a", "b"], ChampionSettings(metric="mae", margin=0.1, min_labels=1))
    assert selector.observe(5, {"a": 1.0, "b": 2.0}) is None
    assert selector.observe(5, {"a": 1.0, "b": 0.5}) == "b"


def test_pinned_never_switches() -> None:
    selector = ChampionSelector(["a", "b"], ChampionSettings(pinned="b", min_labels=1))
    assert selector.current == "b"
    assert selector.observe(10_000, {"a": 1.0, "b": 0.0}) is None
