"""Small seeded synthetic streams with mixed feature types, for the conformance harness."""

from __future__ import annotations

import math
import random

from shared.learners.base import Features, Row, Target, Task

COLORS = ("red", "green", "blue")
KEYS = tuple(f"entity-{i}" for i in range(5))
CLASSES = ("cat", "dog", "fish")


def make_features(rng: random.Random) -> Features:
    """Floats, an int, a bool, a category; now and then a missing value."""
    features: Features = {
        "x0": rng.gauss(0.0, 1.0),
        "x1": rng.uniform(-5.0, 5.0),
        "x2": rng.gauss(10.0, 3.0),
        "count": rng.randint(0, 20),
        "flag": rng.random() < 0.3,
        "color": rng.choice(COLORS),
    }
    if rng.random() < 0.1:
        features["x1"] = None
    return features


def _target(features: Features, task: Task, rng: random.Random) -> Target | None:
    x0 = float(features["x0"] or 0.0)
    x1 = float(features["x1"] or 0.0)
    color_bonus = {"red": 1.0, "green": 0.0, "blue": -1.0}[str(features["color"])]
    signal = 1.5 * x0 - 0.4 * x1 + color_bonus + (0.8 if features["flag"] else 0.0) + rng.gauss(0.0, 0.5)
    if task is Task.BINARY:
        return signal > 0.0
    if task is Task.MULTICLASS:
        return CLASSES[0] if signal < -1.0 else CLASSES[1] if signal < 1.0 else CLASSES[2]
    if task is Task.REGRESSION:
        return 3.0 * signal + 0.1 * float(features["count"] or 0)
    return None


def make_stream(task: Task, n: int, seed: int) -> tuple[list[Row], list[Target | None]]:
    """``n`` rows and their targets (``None`` for anomaly detection, with a few far outliers)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    targets: list[Target | None] = []
    for _ in range(n):
        features = make_features(rng)
        if task is Task.ANOMALY and rng.random() < 0.03:
            features["x0"] = 25.0 * math.copysign(1.0, rng.gauss(0.0, 1.0))
        rows.append(Row(features, rng.choice(KEYS)))
        targets.append(_target(features, task, rng))
    return rows, targets


def make_shifting_rows(n: int, seed: int) -> list[Row]:
    """Rows whose feature sets change: keys vanish, new numeric and categorical keys appear, nulls, empties."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for i in range(n):
        features = make_features(rng)
        for name in list(features):
            if rng.random() < 0.25:
                del features[name]
        if rng.random() < 0.3:
            features[f"new_{i % 7}"] = rng.gauss(0.0, 1.0)
        if rng.random() < 0.2:
            features[f"tag_{i % 3}"] = rng.choice(("a", "b", "c", f"unseen-{i}"))
        if rng.random() < 0.1:
            features["x2"] = None
        if i % 17 == 0:
            features = {}
        rows.append(Row(features, rng.choice(KEYS) if i % 5 else None))
    return rows
