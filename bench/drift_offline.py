"""Offline concept-drift detection table: a River model's prequential errors fed to ConceptDriftMonitor.

For each seed, a drift stream (``shared.datasets``: ``agrawal-drift`` or ``sea-drift``, the concept switches
at ``--drift-at``) and a stream without drift (``agrawal`` / ``sea``) of the same length. Prints, per seed,
whether the drift was detected, the delay, the false alarms, and a summary against the acceptance targets
(>= 95% detected, median delay <= 300 events, <= 0.5 false alarms per 10,000 events without drift).

    python bench/drift_offline.py --source agrawal --model logreg --seeds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from river import linear_model, preprocessing, tree

from shared.datasets import iter_source
from shared.monitoring.drift import DEFAULT_DETECTOR, ConceptDriftMonitor, detector_names

MODELS: dict[str, Callable[[], Any]] = {
    "logreg": lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
    "tree": lambda: tree.HoeffdingTreeClassifier(),
}

TARGET_DETECTION_RATE = 0.95
TARGET_MEDIAN_DELAY = 300
TARGET_FALSE_ALARMS_PER_10K = 0.5


@dataclass(frozen=True, slots=True)
class SeedResult:
    seed: int
    detected: bool
    delay: int | None
    false_alarms_before_drift: int
    false_alarms_no_drift: int


def error_stream(source: str, model_name: str, seed: int, length: int, drift_at: int | None) -> list[int]:
    """Prequential 0/1 errors of a fresh model on ``length`` events (predict, score, then learn)."""
    model = MODELS[model_name]()
    errors: list[int] = []
    for sample in iter_source(source, seed=seed, limit=length, drift_at=drift_at):
        prediction = model.predict_one(sample.features)
        errors.append(int(prediction != sample.label))
        model.learn_one(sample.features, sample.label)
    return errors


def detections(errors: Iterable[int], detector: str, params: dict[str, Any] | None) -> list[int]:
    """Positions (0-based event index) where the monitor reported a drift."""
    monitor = ConceptDriftMonitor(detector, params)
    return [i for i, error in enumerate(errors) if monitor.update(error)]


def score_seed(drift_errors: list[int], steady_errors: list[int], drift_at: int, seed: int, detector: str,
               params: dict[str, Any] | None) -> SeedResult:
    on_drift = detections(drift_errors, detector, params)
    after = [i for i in on_drift if i >= drift_at]
    return SeedResult(
        seed=seed,
        detected=bool(after),
        delay=after[0] - drift_at if after else None,
        false_alarms_before_drift=sum(1 for i in on_drift if i < drift_at),
        false_alarms_no_drift=len(detections(steady_errors, detector, params)),
    )


def summarize(results: list[SeedResult], drift_at: int, length: int) -> dict[str, float]:
    delays = [r.delay for r in results if r.delay is not None]
    false_alarms = sum(r.false_alarms_before_drift + r.false_alarms_no_drift for r in results)
    events_without_drift = len(results) * (drift_at + length)
    return {
        "detection_rate": sum(r.detected for r in results) / len(results),
        "median_delay": statistics.median(delays) if delays else float("nan"),
        "false_alarms_per_10k": 10_000 * false_alarms / events_without_drift,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["agrawal", "sea"], default="agrawal")
    parser.add_argument("--model", choices=sorted(MODELS), default="logreg")
    parser.add_argument("--detector", choices=detector_names(), default=DEFAULT_DETECTOR)
    parser.add_argument("--params", type=json.loads, default=None, help="detector parameters as JSON")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--drift-at", type=int, default=10_000)
    parser.add_argument("--after", type=int, default=2_000, help="events after the drift point")
    args = parser.parse_args(argv)

    length = args.drift_at + args.after
    results: list[SeedResult] = []
    print(f"source={args.source} model={args.model} detector={args.detector} params={args.params} "
          f"drift_at={args.drift_at} events/stream={length}")
    print(f"{'seed':>5} {'detected':>9} {'delay':>6} {'false_alarms_before':>20} {'false_alarms_no_drift':>22}")
    for seed in range(args.seeds):
        drift_errors = error_stream(f"{args.source}-drift", args.model, seed, length, args.drift_at)
        steady_errors = error_stream(args.source, args.model, seed, length, None)
        result = score_seed(drift_errors, steady_errors, args.drift_at, seed, args.detector, args.params)
        results.append(result)
        delay = "-" if result.delay is None else str(result.delay)
        print(f"{seed:>5} {result.detected!s:>9} {delay:>6} {result.false_alarms_before_drift:>20} "
              f"{result.false_alarms_no_drift:>22}", flush=True)
    summary = summarize(results, args.drift_at, length)
    ok = (summary["detection_rate"] >= TARGET_DETECTION_RATE and summary["median_delay"] <= TARGET_MEDIAN_DELAY
          and summary["false_alarms_per_10k"] <= TARGET_FALSE_ALARMS_PER_10K)
    print(f"detected {summary['detection_rate']:.0%}  median delay {summary['median_delay']:.0f}  "
          f"false alarms/10k {summary['false_alarms_per_10k']:.2f}  -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
