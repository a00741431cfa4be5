"""Publish against the step it replaced (``tests/unit/reference/publish.py``): the same records, byte for byte."""

from __future__ import annotations

import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shared.contract import Event
from shared.learners.base import Output
from shared.learners.registry import build_learner
from shared.monitoring.metrics import Metrics
from shared.settings import ModelSettings, PreprocessingSettings, TopicSettings
from shared.steps import publish
from shared.steps.batch import Batch, Record, Rejection
from shared.steps.models import ModelStep
from tests.unit.reference import publish as reference

MODELS = [ModelSettings(name="a", estimator="river.linear_model.LogisticRegression"),
          ModelSettings(name="b", estimator="river.linear_model.LogisticRegression")]
CLASSES: list[Any] = [True, False, 1, 0, 2.5, "x", None]


def _records(rng: random.Random, n: int) -> list[Record]:
    records = []
    for i in range(n):
        record = Record("events", 0, i, f"k{i}".encode(), b'{"raw": 1}', rng.choice([0, 1_700_000_000_000]))
        roll = rng.random()
        if roll < 0.05:
            record.rejection = Rejection("schema", f"invalid event: reason {i} é")
        else:
            record.event = Event(id=f"e{i}", key=rng.choice([None, "user-é"]), features={}, label=None)
            record.duplicate = roll < 0.08
            record.already_published = 0.08 <= roll < 0.1
            for name in ("a", "b"):
                classes = rng.sample(CLASSES, rng.choice([0, 2, 3]))
                proba = {c: rng.random() for c in classes}
                record.outputs[name] = Output(rng.choice(CLASSES), proba, rng.choice([None, 0.25]))
                if rng.random() < 0.9:
                    record.learned_before[name] = rng.randrange(1000)
        records.append(record)
    return records


def test_published_bytes_equal_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    model_step = ModelStep(MODELS, lambda m: build_learner(m, PreprocessingSettings(), 0))
    model_step.assign(("events", 0))
    sent: dict[str, list[tuple[Any, ...]]] = {"new": [], "old": []}
    steps = {
        name: module.PublishStep(lambda *args, name=name: sent[name].append(args), TopicSettings(), model_step,
                                 lambda: "a", Metrics(CollectorRegistry()))
        for name, module in (("new", publish), ("old", reference))
    }
    for module in (publish, reference):
        monkeypatch.setattr(module.time, "time", lambda: 1_700_000_123.456789)
    rng = random.Random(4)
    for k in (1, 500, 499, 2000, 0):
        batch = _records(rng, k)
        steps["new"].process(Batch(batch, 1_700_000_123.4))
        steps["old"].process(Batch(batch, 1_700_000_123.4))
    assert len(sent["new"]) > 3000
    assert sent["new"] == sent["old"]
