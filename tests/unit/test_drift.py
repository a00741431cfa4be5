"""ConceptDriftMonitor: rises are detected, drops are not (by default), stationary streams stay quiet."""

from __future__ import annotations

import pickle
import random
from collections.abc import Sequence

import pytest

from shared.monitoring.drift import DEFAULT_DETECTOR, DETECTORS, ConceptDriftMonitor, detector_names

CHANGE_AT = 1500


def bernoulli(rates: list[tuple[int, float]], seed: int) -> list[int]:
    """0/1 errors: ``n`` draws at each ``rate`` in turn."""
    rng = random.Random(seed)
    return [int(rng.random() < rate) for n, rate in rates for _ in range(n)]


def detected_at(monitor: ConceptDriftMonitor, errors: Sequence[float]) -> list[int]:
    return [i for i, error in enumerate(errors) if monitor.update(error)]


@pytest.mark.parametrize("detector", detector_names())
def test_a_rise_in_error_is_detected_soon_after_the_change(detector: str) -> None:
    errors = bernoulli([(CHANGE_AT, 0.1), (1000, 0.5)], seed=1)
    monitor = ConceptDriftMonitor(detector)
    hits = detected_at(monitor, errors)
    after = [i for i in hits if i >= CHANGE_AT]
    assert after, f"{detector} missed the rise"
    assert after[0] - CHANGE_AT <= 400
    assert all(i >= CHANGE_AT for i in hits), f"{detector} alarmed before the change: {hits}"
    assert monitor.detections == len(hits)


@pytest.mark.parametrize("detector", ["adwin", "kswin"])
def test_a_drop_in_error_is_not_reported_unless_asked(detector: str) -> None:
    errors = bernoulli([(CHANGE_AT, 0.5), (1000, 0.05)], seed=2)
    rise_only = ConceptDriftMonitor(detector)
    assert detected_at(rise_only, errors) == []
    assert rise_only.ignored_drops >= 1
    both_ways = ConceptDriftMonitor(detector, rise_only=False)
    assert any(i >= CHANGE_AT for i in detected_at(both_ways, errors))


@pytest.mark.parametrize("detector", ["page_hinkley", "ddm", "hddm_a"])
def test_one_sided_detectors_do_not_fire_on_a_drop(detector: str) -> None:
    errors = bernoulli([(CHANGE_AT, 0.5), (1000, 0.05)], seed=3)
    assert [i for i in detected_at(ConceptDriftMonitor(detector), errors) if i >= CHANGE_AT] == []


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley", "ddm", "hddm_a"])
def test_stationary_error_stream_raises_few_alarms(detector: str) -> None:
    alarms = 0
    for seed in range(3):
        errors = bernoulli([(10_000, 0.2)], seed=100 + seed)
        alarms += len(detected_at(ConceptDriftMonitor(detector), errors))
    assert alarms <= 3, f"{detector}: {alarms} alarms on 30,000 stationary events"


def test_kswin_stationary_stream_is_quiet() -> None:
    errors = bernoulli([(2000, 0.2)], seed=7)
    assert detected_at(ConceptDriftMonitor("kswin"), errors) == []


def test_continuous_errors_work_with_the_general_detectors() -> None:
    rng = random.Random(5)
    errors = [abs(rng.gauss(0.0, 1.0)) for _ in range(CHANGE_AT)] + [abs(rng.gauss(2.0, 1.0)) for _ in range(500)]
    for detector in ("adwin", "kswin"):
        hits = detected_at(ConceptDriftMonitor(detector), errors)
        assert hits and hits[0] >= CHANGE_AT, detector
    ph = ConceptDriftMonitor("page_hinkley", {"threshold": 20.0})
    assert any(i >= CHANGE_AT for i in detected_at(ph, errors))


def test_binary_detectors_refuse_non_binary_errors() -> None:
    monitor = ConceptDriftMonitor("ddm")
    monitor.update(1)
    monitor.update(0.0)
    with pytest.raises(ValueError, match="0/1"):
        monitor.update(0.5)
    assert DETECTORS["hddm_a"].binary_only and not DETECTORS["adwin"].binary_only


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown drift detector"):
        ConceptDriftMonitor("nope")
    with pytest.raises(ValueError, match="contradicts rise_only"):
        ConceptDriftMonitor("page_hinkley", {"mode": "both"})
    assert ConceptDriftMonitor("page_hinkley", {"mode": "both"}, rise_only=False).params["mode"] == "both"
    assert ConceptDriftMonitor("page_hinkley").params["mode"] == "up"


def test_params_override_defaults_and_are_described() -> None:
    monitor = ConceptDriftMonitor(DEFAULT_DETECTOR, {"delta": 0.5})
    assert monitor.describe() == {"detector": "adwin", "params": {"delta": 0.5}, "rise_only": True}


def test_non_finite_errors_are_skipped() -> None:
    monitor = ConceptDriftMonitor()
    assert monitor.update(float("nan")) is False
    assert monitor.n == 0


def test_reset_forgets_the_history_but_keeps_the_count() -> None:
    errors = bernoulli([(CHANGE_AT, 0.1), (1000, 0.6)], seed=4)
    monitor = ConceptDriftMonitor()
    detected_at(monitor, errors[:CHANGE_AT])
    monitor.reset()
    hits = detected_at(monitor, errors[CHANGE_AT:])
    assert hits == [], "after a reset the new level is the reference"
    assert monitor.detections == 0


def test_monitor_survives_a_pickle_round_trip() -> None:
    errors = bernoulli([(CHANGE_AT, 0.1), (1000, 0.5)], seed=6)
    monitor = ConceptDriftMonitor()
    detected_at(monitor, errors[:1000])
    restored = pickle.loads(pickle.dumps(monitor))
    assert detected_at(restored, errors[1000:]) == detected_at(monitor, errors[1000:])
