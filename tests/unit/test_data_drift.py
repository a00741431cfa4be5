"""Data drift: shifted features score high, unshifted ones low; statistics match references; memory is bounded."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest

from shared.monitoring.data_drift import (
    DataDriftMonitor,
    DistributionDrift,
    ks_statistic,
    population_stability_index,
)

REFERENCE = 1000
RECENT = 500


def event(rng: random.Random, shifted: bool) -> dict:
    return {
        "stable_num": rng.gauss(0.0, 1.0),
        "shifted_num": rng.gauss(1.5 if shifted else 0.0, 1.0),
        "stable_cat": rng.choice(["a", "b", "c"]),
        "shifted_cat": rng.choices(["a", "b", "c"], weights=[1, 1, 8] if shifted else [4, 4, 2])[0],
        "flag": rng.random() < 0.3,
        "missing": None,
    }


def fed_monitor(seed: int = 0, **kwargs: int) -> DataDriftMonitor:
    rng = random.Random(seed)
    monitor = DataDriftMonitor(reference_size=REFERENCE, recent_size=RECENT, **kwargs)
    for _ in range(REFERENCE):
        monitor.update(event(rng, shifted=False))
    for _ in range(RECENT):
        monitor.update(event(rng, shifted=True))
    return monitor


def brute_force_ks(a: list[float], b: list[float]) -> float:
    points = sorted(set(a) | set(b))
    return max(abs(sum(x <= p for x in a) / len(a) - sum(x <= p for x in b) / len(b)) for p in points)


def test_shifted_features_score_high_and_stable_ones_low() -> None:
    scores = fed_monitor().scores()
    assert scores[("shifted_num", "psi")] > 0.5
    assert scores[("shifted_num", "ks")] > 0.4
    assert scores[("shifted_cat", "psi")] > 0.5
    for name in ("stable_num", "stable_cat", "flag"):
        assert scores[(name, "psi")] < 0.05, name
    assert scores[("stable_num", "ks")] < 0.1
    assert ("stable_cat", "ks") not in scores and ("missing", "psi") not in scores


def test_top_k_ranks_the_drifted_features_first() -> None:
    monitor = fed_monitor()
    assert {name for name, _ in monitor.top_k(2)} == {"shifted_num", "shifted_cat"}
    assert [name for name, _ in monitor.top_k(1, statistic="ks")] == ["shifted_num"]
    ranked = monitor.top_k(10)
    assert [v for _, v in ranked] == sorted((v for _, v in ranked), reverse=True)
    assert monitor.kinds() == {"stable_num": "numeric", "shifted_num": "numeric", "stable_cat": "categorical",
                               "shifted_cat": "categorical", "flag": "categorical"}


def test_no_score_until_both_windows_are_ready() -> None:
    rng = random.Random(1)
    monitor = DataDriftMonitor(reference_size=100, recent_size=50, min_recent=20)
    for _ in range(100 + 19):
        monitor.update({"x": rng.random()})
    assert monitor.scores() == {}
    monitor.update({"x": rng.random()})
    assert set(monitor.scores()) == {("x", "psi"), ("x", "ks")}


def test_memory_is_bounded_and_extra_features_are_counted() -> None:
    rng = random.Random(2)
    monitor = DataDriftMonitor(reference_size=50, recent_size=30, max_features=3)
    for i in range(2000):
        monitor.update({f"f{j}": rng.random() for j in range(5)} | {f"new{i}": 1.0})
    assert monitor.tracked_features == ["f0", "f1", "f2"]
    assert monitor.stored_values() == 3 * (50 + 30)
    assert monitor.untracked_values == 2000 * 3
    assert all(len(v.recent) == 30 and len(v.reference) == 50 for v in monitor._variables.values())


def test_ks_matches_a_brute_force_reference() -> None:
    rng = random.Random(3)
    a = [round(rng.gauss(0, 1), 1) for _ in range(200)]
    b = [round(rng.gauss(0.3, 1.2), 1) for _ in range(150)]
    assert ks_statistic(np.sort(a), np.sort(b)) == pytest.approx(brute_force_ks(a, b), abs=1e-12)


def test_psi_matches_the_formula_with_smoothing() -> None:
    reference = np.array([50.0, 30.0, 20.0, 0.0])
    recent = np.array([10.0, 30.0, 40.0, 20.0])
    ref_share = [(c + 0.5) / (100 + 2) for c in reference]
    rec_share = [(c + 0.5) / (100 + 2) for c in recent]
    expected = sum((q - p) * math.log(q / p) for p, q in zip(ref_share, rec_share, strict=True))
    assert population_stability_index(reference, recent) == pytest.approx(expected, rel=1e-12)
    assert population_stability_index(reference, reference) == 0.0


def test_numeric_psi_uses_reference_quantile_bins() -> None:
    monitor = DataDriftMonitor(reference_size=100, recent_size=100, bins=4, min_recent=100)
    for i in range(100):
        monitor.update({"x": float(i)})
    for i in range(100):
        monitor.update({"x": float(i % 50)})  # all recent values in the lower half of the reference
    ref_share = [(25 + 0.5) / 102] * 4
    rec_share = [(50 + 0.5) / 102, (50 + 0.5) / 102, 0.5 / 102, 0.5 / 102]
    expected = sum((q - p) * math.log(q / p) for p, q in zip(ref_share, rec_share, strict=True))
    scores = monitor.scores()
    assert scores[("x", "psi")] == pytest.approx(expected, rel=1e-9)
    assert scores[("x", "ks")] == pytest.approx(0.5)


def test_refresh_makes_the_recent_window_the_new_reference() -> None:
    rng = random.Random(4)
    monitor = DataDriftMonitor(reference_size=300, recent_size=300, refresh_every=300, min_recent=100)
    for _ in range(300):
        monitor.update({"x": rng.gauss(0, 1)})
    for _ in range(200):
        monitor.update({"x": rng.gauss(3, 1)})
    assert monitor.scores()[("x", "psi")] > 1.0
    for _ in range(100 + 150):
        monitor.update({"x": rng.gauss(3, 1)})
    assert monitor.scores()[("x", "psi")] < 0.25


def test_reset_starts_new_references() -> None:
    monitor = fed_monitor()
    monitor.reset()
    assert monitor.scores() == {} and monitor.stored_values() == 0 and monitor.tracked_features == []


def test_bad_values_are_skipped() -> None:
    monitor = DataDriftMonitor(reference_size=10, recent_size=10, min_recent=5)
    for value in (1.0, float("nan"), float("inf"), "text", None, 2):
        monitor.update({"x": value})
    variable = monitor._variables["x"]
    assert variable.reference == [1.0, 2] and variable.ignored == 3


def test_scores_are_recomputed_only_for_changed_features() -> None:
    monitor = fed_monitor()
    first = monitor.scores()
    assert monitor.scores() == first
    monitor.update({"shifted_num": 100.0})
    second = monitor.scores()
    assert second[("shifted_num", "ks")] != first[("shifted_num", "ks")]
    assert second[("stable_num", "ks")] == first[("stable_num", "ks")]


def test_distribution_drift_for_labels_and_predictions() -> None:
    rng = random.Random(5)
    labels = DistributionDrift(reference_size=REFERENCE, recent_size=RECENT)
    predictions = DistributionDrift(reference_size=REFERENCE, recent_size=RECENT)
    for i in range(REFERENCE + RECENT):
        drifted = i >= REFERENCE
        labels.update(rng.random() < (0.7 if drifted else 0.3))
        predictions.update(rng.gauss(0.0, 1.0))
    assert labels.scores()["psi"] > 0.3 and set(labels.scores()) == {"psi"}
    assert predictions.scores()["psi"] < 0.05 and predictions.scores()["ks"] < 0.1
    assert labels.stored_values() == REFERENCE + RECENT
    labels.reset()
    assert labels.scores() == {} and labels.stored_values() == 0


def test_monitor_survives_a_pickle_round_trip() -> None:
    monitor = fed_monitor()
    assert pickle.loads(pickle.dumps(monitor)).scores() == monitor.scores()


def test_invalid_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        DataDriftMonitor(reference_size=1)
    with pytest.raises(ValueError):
        DataDriftMonitor(max_features=0)
    with pytest.raises(ValueError):
        DistributionDrift(bins=1)
    with pytest.raises(ValueError):
        DataDriftMonitor(recent_size=10, min_recent=11)
