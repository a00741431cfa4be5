"""Clean's plain-copy fast path against the cleaning it replaced (``tests/unit/reference/clean.py``)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from shared.settings import CleaningSettings
from shared.steps.clean import CleanStep
from tests.unit.reference import clean as reference

SETTINGS = [
    {},
    {"pii": {"scrub_strings": False}},
    {"pii": {"drop": ["f1"]}},
    # hashing is keyed now (HMAC-SHA256, shared/pii.py): the reference's plain SHA-256 no longer applies;
    # tests/unit/test_pii.py covers it
    {"defaults": {"f2": 0.5, "missing": "x"}},
]


def _features(rng: random.Random) -> dict[str, Any]:
    features: dict[str, Any] = {f"f{j}": rng.gauss(0, 1) for j in range(rng.randint(0, 5))}
    if rng.random() < 0.3:
        features[rng.choice(["f1", "f2", "s", "n"])] = rng.choice(
            [None, 1, True, "mail a@b.co now", "call 555 123 4567 89", "plain"])
    return features


@pytest.mark.parametrize("settings", SETTINGS)
def test_clean_equals_reference(settings: dict[str, Any]) -> None:
    cleaning = CleaningSettings.model_validate(settings)
    new, old = CleanStep(cleaning), reference.CleanStep(cleaning)
    rng = random.Random(str(settings))
    for _ in range(3000):
        raw = _features(rng)
        cleaned = new.clean(raw)
        expected = old.clean(raw)
        assert cleaned == expected
        assert [type(v) for v in cleaned.values()] == [type(v) for v in expected.values()]
        assert list(cleaned) == list(expected)
        assert cleaned is not raw
