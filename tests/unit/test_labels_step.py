"""The delayed-label step alone: output round trip, label decoding, hand-out rule, misrouting, Redis failures.

The join is a small in-memory stand-in here, to drive the step's own logic (which hand-outs to learn, what to
count, which offsets may be committed). The real join is exercised against Redis in
tests/integration/test_state_label_join.py and, wired into the worker, in tests/integration/test_delayed_labels*.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from shared.contract import Event
from shared.learners.base import Output, Task
from shared.learners.registry import build_learner
from shared.monitoring.metrics import Metrics
from shared.settings import ModelSettings, PreprocessingSettings
from shared.state.label_join import JoinedLabel, JoinResult, JoinSizes, PendingPrediction, PutResult
from shared.steps.batch import Batch, Record
from shared.steps.labels import DelayedLabels, decode_label, outputs_from_json, outputs_to_json
from shared.steps.models import ModelStep
from shared.steps.score import ScoreStep

EVENTS = ("events", 0)
LABELS = ("labels", 0)
MODELS = [ModelSettings(name="m", estimator="river.linear_model.LogisticRegression")]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class StubJoin:
    """Records calls; answers what the test queued; raises when told to."""

    def __init__(self) -> None:
        self.puts: list[list[PendingPrediction]] = []
        self.resolves: list[list[tuple[str, Any, float | None]]] = []
        self.joined: list[JoinedLabel] = []
        self.put_joined: list[JoinedLabel] = []
        self.fail = False

    def put_pending(self, items: Sequence[PendingPrediction]) -> PutResult:
        if self.fail:
            raise redis.ConnectionError("down")
        self.puts.append(list(items))
        joined, self.put_joined = self.put_joined, []
        return PutResult(joined, [], 0, 0, 0)

    def resolve_labels(self, labels: Sequence[tuple[str, Any, float | None]], positions: Any = None) -> JoinResult:
        if self.fail:
            raise redis.ConnectionError("down")
        self.resolves.append(list(labels))
        joined, self.joined = self.joined, []
        return JoinResult(joined, [], [], [], 0, 0, 0)

    def sizes(self) -> JoinSizes:
        return JoinSizes(0, 0)


def _setup(
    positions: dict[tuple[str, int], int] | None = None,
) -> tuple[DelayedLabels, StubJoin, ModelStep, CollectorRegistry, Clock]:
    """``positions``: the next offset read per partition (default: both partitions read up to 100)."""
    read = positions if positions is not None else {EVENTS: 100, LABELS: 100}
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    models = ModelStep(MODELS, lambda m: build_learner(m, PreprocessingSettings(), 0))
    models.assign(EVENTS)
    join = StubJoin()
    clock = Clock()
    step = DelayedLabels(join, models, ScoreStep(metrics, {"m": Task.BINARY}, 100), metrics,  # type: ignore[arg-type]
                         position=read.get, monotonic=clock)
    return step, join, models, registry, clock


def _pending(event_id: str, partition: int = 0, offset: int = 0) -> PendingPrediction:
    return PendingPrediction(event_id, "events", partition, offset, {"x": 1.0}, None, None,
                             outputs_to_json({"m": Output(True, {True: 0.6, False: 0.4})}))


def _label_record(offset: int, value: bytes) -> Record:
    return Record(topic="labels", partition=0, offset=offset, key=b"k", value=value, timestamp_ms=0)


def _value(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_outputs_keep_their_class_types_through_json() -> None:
    outputs = {"a": Output(True, {True: 0.7, False: 0.3}), "b": Output(2, {1: 0.1, 2: 0.9}),
               "c": Output("red", {"red": 1.0}), "d": Output(None, {}, 0.5)}
    assert outputs_from_json(orjson.loads(orjson.dumps(outputs_to_json(outputs)))) == outputs


@pytest.mark.parametrize("value", [b"", b"not json", b"[1]", b'{"id": "x"}', b'{"label": 1}',
                                   b'{"id": "", "label": 1}', b'{"id": "x", "label": [1]}', b"{" + b" " * 5000 + b"}"])
def test_bad_labels_are_refused_with_a_reason(value: bytes) -> None:
    with pytest.raises(ValueError, match=r"label"):
        decode_label(value)


def test_a_label_is_decoded() -> None:
    label = decode_label(b'{"id": "e1", "label": true, "ts": "2026-01-01T00:00:00Z"}')
    assert (label.id, label.label, label.ts) == ("e1", True, 1767225600.0)


def test_event_side_stores_unlabelled_predictions_with_features_and_outputs() -> None:
    step, join, _, _, _ = _setup()
    record = Record("events", 0, 7, b"k", b"", 5_000, event=Event(id="e1", key="u", features={"x": 2.0}),
                    features={"x": 2.0}, outputs={"m": Output(False, {False: 1.0})}, pending_label=True)
    labelled = Record("events", 0, 8, b"k", b"", 0, event=Event(id="e2", features={}, label=True), features={})
    step.process(Batch([record, labelled], 0.0))
    (stored,) = join.puts[0]
    assert (stored.event_id, stored.offset, stored.key, stored.event_ts, stored.features) == ("e1", 7, "u", 5.0,
                                                                                             {"x": 2.0})
    assert outputs_from_json(stored.outputs) == {"m": Output(False, {False: 1.0})}


def test_a_join_is_learned_by_the_read_of_its_second_record_and_scored_once() -> None:
    positions = {EVENTS: 10, LABELS: 20}
    step, join, models, registry, _ = _setup(positions)
    # the label is read now; its event (offset 5) was read before: learned and scored
    join.joined = [JoinedLabel(_pending("a", offset=5), True, None, ("labels", 0, 20))]
    step.resolve([_label_record(20, b'{"id": "a", "label": true}')])
    assert models.sets[EVENTS].learned == {"m": 1}
    assert _value(registry, "streamlearn_labels_total", {"outcome": "joined"}) == 1
    # after a restore the models read events from 5 and labels from 20 again: the label of "a" is read again
    # first; its event is still ahead, so these models learn "a" when they read the event, not now
    positions.update({EVENTS: 5, LABELS: 21})
    join.joined = [JoinedLabel(_pending("a", offset=5), True, None, ("labels", 0, 20), again=True)]
    step.resolve([_label_record(20, b'{"id": "a", "label": true}')])
    assert models.sets[EVENTS].learned == {"m": 1}
    event = Record("events", 0, 5, b"k", b"", 0, event=Event(id="a", features={"x": 1.0}), features={"x": 1.0},
                   outputs={"m": Output(True)}, pending_label=True)
    join.put_joined = [JoinedLabel(_pending("a", offset=5), True, None, ("labels", 0, 20), again=True)]
    step.process(Batch([event], 0.0))
    assert models.sets[EVENTS].learned == {"m": 2}
    # hand-outs are never scored or counted again
    assert _value(registry, "streamlearn_labels_total", {"outcome": "joined"}) == 1
    assert _value(registry, "streamlearn_learned_total", {"model": "m"}) == 2


def test_a_first_join_is_not_learned_while_its_other_record_is_ahead_of_the_models() -> None:
    """After a restore, a label held by the previous life at offset 30 joins an event read now; these models
    read labels from 25 and will read it again, so that later read learns it."""
    step, join, models, registry, _ = _setup({EVENTS: 8, LABELS: 25})
    event = Record("events", 0, 8, b"k", b"", 0, event=Event(id="b", features={"x": 1.0}), features={"x": 1.0},
                   outputs={"m": Output(True)}, pending_label=True)
    join.put_joined = [JoinedLabel(_pending("b", offset=8), False, None, ("labels", 0, 30))]
    step.process(Batch([event], 0.0))
    assert models.sets[EVENTS].learned == {}
    assert _value(registry, "streamlearn_labels_total", {"outcome": "joined"}) == 1


def test_a_join_for_a_partition_owned_elsewhere_is_counted_misrouted_and_not_learned() -> None:
    step, join, models, registry, _ = _setup()
    join.joined = [JoinedLabel(_pending("e", partition=3), True, None)]
    step.resolve([_label_record(0, b'{"id": "e", "label": true}')])
    assert _value(registry, "streamlearn_labels_total", {"outcome": "misrouted"}) == 1
    assert models.sets[EVENTS].learned == {}


def test_invalid_labels_are_counted_and_dead_lettered_once() -> None:
    step, _, _, registry, _ = _setup()
    sent: list[tuple[str, bytes, list[tuple[str, bytes]] | None]] = []
    step._send = lambda topic, value, key, headers: sent.append((topic, value, headers))
    step._dead_letter_topic = "dlq"
    replayed = _label_record(1, b"nope")
    replayed.already_published = True
    offsets = step.resolve([_label_record(0, b"nope"), replayed])
    assert _value(registry, "streamlearn_labels_total", {"outcome": "invalid"}) == 1
    assert len(sent) == 1 and dict(sent[0][2] or [])["source_offset"] == b"0"
    assert offsets == {("labels", 0): 2}


def test_when_redis_fails_labels_wait_in_memory_and_their_partition_is_not_committed_past_them() -> None:
    step, join, models, registry, clock = _setup()
    join.fail = True
    offsets = step.resolve([_label_record(5, b'{"id": "a", "label": true}'),
                            _label_record(6, b'{"id": "b", "label": false}')])
    assert offsets == {("labels", 0): 5}
    assert _value(registry, "streamlearn_redis_up", {}) == 0
    # still failing and within the backoff: not even tried, still held back
    assert step.resolve([_label_record(7, b'{"id": "c", "label": true}')]) == {("labels", 0): 5}
    join.fail = False
    clock.now += 60
    join.joined = [JoinedLabel(_pending("a"), True, None)]
    offsets = step.resolve([])
    assert offsets == {("labels", 0): 8}
    assert [label[0] for label in join.resolves[0]] == ["a", "b", "c"]
    assert models.sets[EVENTS].learned == {"m": 1}


def test_when_redis_fails_predictions_wait_in_memory_for_the_next_put() -> None:
    step, join, _, _, _ = _setup()
    record = Record("events", 0, 1, b"k", b"", 0, event=Event(id="e1", features={}), features={},
                    outputs={"m": Output(True)}, pending_label=True)
    join.fail = True
    step.process(Batch([record], 0.0))
    join.fail = False
    step.process(Batch([], 0.0))
    assert [p.event_id for p in join.puts[0]] == ["e1"]


def test_invalid_labels_count_towards_the_dead_letter_cap_and_the_crossing_batch_sends_nothing() -> None:
    from shared.settings import LimitSettings
    from shared.steps.dead_letters import DeadLetterLimitExceeded, DeadLetterLimitStep

    step, _, _, registry, _ = _setup()
    sent: list[tuple[str, bytes, list[tuple[str, bytes]] | None]] = []
    step._send = lambda topic, value, key, headers: sent.append((topic, value, headers))
    step._dead_letter_topic = "dlq"
    step._limit = DeadLetterLimitStep(LimitSettings(dead_letter_max_consecutive=2, dead_letter_max_ratio=None))
    step.resolve([_label_record(0, b"nope"), _label_record(1, b"nope")])  # two in a row: within the cap
    assert len(sent) == 2
    assert _value(registry, "streamlearn_dead_letters_total", {"reason": "invalid_label"}) == 2
    with pytest.raises(DeadLetterLimitExceeded, match=r"3 invalid records in a row at labels\[0\]@2"):
        step.resolve([_label_record(2, b"nope"), _label_record(3, b'{"id": "a", "label": true}')])
    assert len(sent) == 2, "the batch that crossed the cap dead-lettered nothing"
    assert _value(registry, "streamlearn_dead_letters_total", {"reason": "invalid_label"}) == 2
    assert _value(registry, "streamlearn_labels_total", {"outcome": "invalid"}) == 2
