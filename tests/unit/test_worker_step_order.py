"""The worker publishes a batch's predictions as soon as the models made them: the steps after publish (the label
join's Redis round trip, the scoreboards, the drift monitors) are bookkeeping that no output waits for
(docs/architecture.md, "Publish right after the models")."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from services.replayer.replay import event_record
from services.worker.worker import Worker
from shared.datasets import iter_source
from shared.settings import load_settings
from shared.steps.batch import Batch, Record
from shared.steps.clean import CleanStep
from shared.steps.models import ModelStep
from shared.steps.publish import PublishStep

TOPIC = "events"


def _worker(*, labels: bool) -> tuple[Worker, list[str]]:
    """A worker whose chain is built as ``start`` builds it, sending into a list (no Kafka, no Redis call)."""
    settings = load_settings(
        None,
        models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"},
                {"name": "nb", "estimator": "river.naive_bayes.GaussianNB"}],
        dedup={"enabled": False}, entities={"enabled": False}, checkpoint={"enabled": False},
        labels={"enabled": labels},
    )
    worker = Worker(settings)
    sent: list[str] = []

    def send(topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        sent.append(topic)

    worker.committer = SimpleNamespace(send=send)  # type: ignore[assignment]
    publish = PublishStep(send, settings.kafka.topics, worker.model_step, lambda: worker._batch_champion,
                          worker.metrics)
    worker.steps = worker._build_steps(publish, CleanStep(settings.cleaning))
    worker._model_index = worker.steps.index(worker.model_step)
    worker.model_step.assign((TOPIC, 0))
    return worker, sent


def _batch(n: int, *, with_label: bool) -> Batch:
    records = []
    for offset, sample in enumerate(iter_source("phishing", seed=7, limit=n)):
        key, value = event_record(sample, f"order-{offset}", with_label=with_label, ts=1.7e9 + offset)
        records.append(Record(TOPIC, 0, offset, key, value, 1_700_000_000_000))
    return Batch(records, 0.0)


@pytest.mark.parametrize("labels", [False, True])
def test_every_prediction_of_a_batch_is_sent_before_the_bookkeeping_steps_run(labels: bool) -> None:
    worker, sent = _worker(labels=labels)
    after = worker.steps[worker.steps.index(worker.model_step) + 1:]
    bookkeeping = [step for step in after if not isinstance(step, PublishStep)]
    expected = {"ScoreStep", "DriftStep"} | ({"DelayedLabels"} if labels else set())
    assert {type(step).__name__ for step in bookkeeping} == expected
    seen: dict[str, int] = {}
    for step in bookkeeping:
        def record_sent(batch: Batch, name: str = type(step).__name__) -> None:
            seen[name] = len(sent)  # the label join's round trip is not made: this test needs no Redis
        step.process = record_sent  # type: ignore[method-assign]

    worker.process(_batch(20, with_label=not labels))

    models = len(worker.model_step.model_names)
    assert len(sent) == 20 * models  # one prediction per model and event: champion and shadow
    assert seen == {name: 20 * models for name in expected}


def test_the_models_run_before_publish() -> None:
    worker, _ = _worker(labels=True)
    names: list[Any] = [type(step) for step in worker.steps]
    assert names.index(ModelStep) + 1 == names.index(PublishStep)
