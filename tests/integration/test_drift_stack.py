"""Issue 5, acceptance 1 (small): bench/drift_stack.py's measurement, 3 seeds, on the session's Kafka and Redis.

The full table (10 seeds, Agrawal and SEA) is made by ``python bench/drift_stack.py --seeds 10`` and kept in
docs/drift.md; this runs the same code on fewer and shorter streams.
"""

from __future__ import annotations

import pytest

from bench.drift_stack import TARGET_MEDIAN_DELAY, run_stream, score_seed, summarize

pytestmark = pytest.mark.integration

DRIFT_AT = 3000
LENGTH = 4000
SEEDS = (0, 1, 2)


def test_abrupt_drift_through_kafka_and_the_worker_is_detected_quickly_without_false_alarms(
    kafka_bootstrap: str, redis_url: str
) -> None:
    results = []
    for seed in SEEDS:
        drifting = run_stream(kafka_bootstrap, redis_url, "sea-drift", seed, LENGTH, DRIFT_AT, timeout_s=120)
        steady = run_stream(kafka_bootstrap, redis_url, "sea", seed, LENGTH, None, timeout_s=120)
        assert drifting.events == LENGTH and steady.events == LENGTH
        results.append(score_seed(drifting, steady, DRIFT_AT))
    summary = summarize(results, DRIFT_AT, LENGTH)
    assert [r.detected for r in results] == [True] * len(SEEDS), results
    assert summary["median_delay"] <= TARGET_MEDIAN_DELAY, results
    assert summary["false_alarms"] == 0, results
