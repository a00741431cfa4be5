"""The score step keeps the labelled records of small batches and folds them into the scoreboards together
(``FOLD_RECORDS``, or at any read of the scores or a commit): the same scores, counters and order as scoring each
batch at once."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry

from shared.contract import Event
from shared.learners.base import Output, Task
from shared.monitoring.metrics import Metrics
from shared.steps.batch import Batch, Record
from shared.steps.score import FOLD_RECORDS, ScoreStep

TASKS = {"a": Task.BINARY, "b": Task.BINARY}


def _record(offset: int, rng: random.Random, *, labelled: bool = True) -> Record:
    record = Record("events", 0, offset, None, b"{}", 0)
    record.event = Event(id=f"e{offset}", features={"x": 1.0}, label=rng.choice([True, False]) if labelled else None)
    for name in TASKS:
        p = rng.random()
        record.outputs[name] = Output(p > 0.5, {True: p, False: 1 - p})
    return record


def test_records_of_small_batches_are_folded_together_into_the_same_scores() -> None:
    rng = random.Random(3)
    kept = ScoreStep(Metrics(CollectorRegistry()), TASKS, 10)
    each = ScoreStep(Metrics(CollectorRegistry()), TASKS, 10)
    for i in range(FOLD_RECORDS):
        record = _record(i, rng)
        kept.process(Batch([record], 0.0))
        assert record.event is not None and record.event.label is not None
        each.score(record.outputs, record.event.label)
        if i < FOLD_RECORDS - 1:
            assert kept.take_labelled() == 0, "nothing folded yet: the records are kept"
    assert kept.take_labelled() == FOLD_RECORDS, "folded once FOLD_RECORDS were kept"
    for name in TASKS:
        assert kept.scoreboards[name].values() == each.scoreboards[name].values()


def test_a_read_of_the_scores_folds_what_was_kept() -> None:
    rng = random.Random(4)
    kept = ScoreStep(Metrics(CollectorRegistry()), TASKS, 10)
    each = ScoreStep(Metrics(CollectorRegistry()), TASKS, 10)
    for i in range(30):
        record = _record(i, rng)
        kept.process(Batch([record], 0.0))
        assert record.event is not None and record.event.label is not None
        each.score(record.outputs, record.event.label)
    assert kept.rolling("accuracy") == each.rolling("accuracy")
    assert kept.take_labelled() == 30


def test_a_direct_score_comes_after_the_kept_records_prequential_order() -> None:
    """A delayed label scored directly (``score``) is scored after the records processed before it, as it came:
    the rolling window (10) holds the last ten in that order."""
    rng = random.Random(5)
    kept = ScoreStep(Metrics(CollectorRegistry()), TASKS, 10)
    each = ScoreStep(Metrics(CollectorRegistry()), TASKS, 10)
    for i in range(25):
        record = _record(i, rng)
        kept.process(Batch([record], 0.0))
        assert record.event is not None and record.event.label is not None
        each.score(record.outputs, record.event.label)
    late = [_record(100 + i, rng) for i in range(8)]
    for record in late:
        assert record.event is not None and record.event.label is not None
        kept.score(record.outputs, record.event.label)
        each.score(record.outputs, record.event.label)
    for name in TASKS:
        assert kept.scoreboards[name].values() == each.scoreboards[name].values()


def test_each_kept_batch_is_counted_by_the_champion_of_its_own_batch() -> None:
    rng = random.Random(6)
    metrics = Metrics(CollectorRegistry())
    champion = ["a"]
    step = ScoreStep(metrics, TASKS, 100, champion=lambda: champion[0])
    expected: dict[tuple[str, str], int] = {}
    for batch_index in range(6):
        champion[0] = "a" if batch_index < 2 else "b"  # a switch between batches, before any fold
        records = [_record(batch_index * 10 + i, rng) for i in range(10)]
        step.process(Batch(records, 0.0))
        for name in TASKS:
            role = "champion" if name == champion[0] else "challenger"
            expected[(name, role)] = expected.get((name, role), 0) + len(records)
    champion[0] = "a"  # the champion at the commit does not matter: each batch's did
    step.publish_counts()
    for (name, role), scored in expected.items():
        labels = {"model": name, "role": role}
        assert metrics.registry.get_sample_value("streamlearn_predictions_scored_total", labels) == scored
    assert expected == {("a", "champion"): 20, ("b", "challenger"): 20, ("a", "challenger"): 40,
                        ("b", "champion"): 40}


def test_a_commit_counts_every_record_processed_before_it() -> None:
    rng = random.Random(8)
    metrics = Metrics(CollectorRegistry())
    step = ScoreStep(metrics, TASKS, 100, champion=lambda: "a")
    for i in range(7):
        step.process(Batch([_record(i, rng), _record(100 + i, rng, labelled=False)], 0.0))
    step.publish_counts()
    scored = metrics.registry.get_sample_value("streamlearn_predictions_scored_total",
                                               {"model": "a", "role": "champion"})
    assert scored == 7
    assert metrics.registry.get_sample_value("streamlearn_events_total", {"outcome": "valid"}) == 14


def test_the_kept_records_are_exported_and_emptied_by_a_fold() -> None:
    rng = random.Random(8)
    metrics = Metrics(CollectorRegistry())
    step = ScoreStep(metrics, TASKS, 10)

    def kept() -> float | None:
        return metrics.registry.get_sample_value("streamlearn_kept_records", {"step": "score"})

    for i in range(5):
        step.process(Batch([_record(i, rng), _record(100 + i, rng, labelled=False)], 0.0))
    assert kept() == 5, "the labelled records only"
    step.rolling("accuracy")  # a read folds
    assert kept() == 0
    for i in range(FOLD_RECORDS - 1):
        step.process(Batch([_record(200 + i, rng)], 0.0))
    assert kept() == FOLD_RECORDS - 1
    step.process(Batch([_record(999, rng)], 0.0))
    assert kept() == 0, "folded by count"
