"""The replay merge's pure logic (shared/learners/replay.py) and how ``sync.merge`` picks a learner's mode."""

from __future__ import annotations

import random
from typing import Self

import orjson
import pytest

from shared.learners.base import Features, Learner, MergeMode, Output, Row, Target
from shared.learners.registry import build_learner
from shared.learners.replay import ReplayLog, examples, learn_replayed
from shared.settings import ModelSettings, PreprocessingSettings, SyncSettings
from shared.sync.group import REPLAY_BY_DEFAULT, apply_merge_choice


def _learner(estimator: str, task: str = "binary", **params: object) -> Learner:
    model = ModelSettings(name="m", estimator=f"river.{estimator}", params=dict(params), task=task)
    return build_learner(model, PreprocessingSettings(), 1)


def test_examples_round_trip_with_their_types_keys_and_order() -> None:
    log = ReplayLog(10)
    rows: list[tuple[Row, Target | None]] = [
        (Row({"x": 1.25, "n": 3, "flag": True, "color": "red", "gone": None}, "entity-1"), True),
        (Row({"x": -0.1}), "cat"),
        (Row({}, "e"), 2.5),
        (Row({"x": 1e-300}), None),
    ]
    for row, target in rows:
        log.record(row, target)
    assert len(log) == 4
    decoded = list(examples(log.delta()))
    assert decoded == rows
    assert type(decoded[0][0].features["n"]) is int and type(decoded[0][0].features["flag"]) is bool


def test_the_log_keeps_no_reference_to_the_callers_features() -> None:
    log = ReplayLog(10)
    features: Features = {"x": 1.0}
    log.record(Row(features), True)
    features["x"] = 2.0
    ((row, _),) = examples(log.delta())
    assert row.features == {"x": 1.0}


def test_a_full_log_drops_and_counts_and_a_cleared_one_starts_again() -> None:
    log = ReplayLog(3)
    for i in range(5):
        log.record(Row({"i": i}), True)
    assert [row.features["i"] for row, _ in examples(log.delta())] == [0, 1, 2]
    assert log.dropped == 2
    held = log.memory_bytes()
    log.clear()
    assert len(log) == 0 and log.memory_bytes() < held
    log.record(Row({"i": 9}), False)
    assert [row.features["i"] for row, _ in examples(log.delta())] == [9]
    assert log.dropped == 2, "a running total"
    with pytest.raises(ValueError):
        ReplayLog(0)


def test_feature_names_are_stored_once_per_list_and_sparse_rows_keep_theirs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shared.learners.replay.MAX_SCHEMAS", 2)
    log = ReplayLog(100)
    rows: list[tuple[Row, Target | None]] = [(Row({"salary": float(i), "age": i, "car": "c"}), i % 2 == 0)
                                             for i in range(20)]
    rows += [(Row({"age": 1, "salary": 2.0}), True), (Row({"only": 1.0}), False), (Row({"age": 3}), True)]
    for row, target in rows:
        log.record(row, target)
    delta = log.delta()
    assert delta.count(b'"salary"') == 2, "one schema per distinct list of names, in its order"
    assert list(examples(delta)) == rows
    assert [list(row.features) for row, _ in examples(delta)][-3:] == [["age", "salary"], ["only"], ["age"]]
    dense = ReplayLog(1000)
    for i in range(500):
        dense.record(Row({"salary": 1000.5 + i, "commission": 0.0, "age": 40, "zipcode": "z3"}), True)
    with_names = sum(len(orjson.dumps([None, True, row.features])) for row, _ in examples(dense.delta()))
    assert dense.memory_bytes() < 0.6 * with_names, "the names once, not in every example"


def test_the_buffer_is_held_deflated_and_gives_back_every_example_in_order() -> None:
    """Blocks of JSON are deflated as the buffer grows: the delta is the same document, every example exactly as
    recorded, and the memory held is well below the plain JSON's (random floats: about half)."""
    rng = random.Random(4)
    log = ReplayLog(2000)
    rows = [(Row({f"x{j}": rng.random() for j in range(10)}, None if i % 3 else f"k{i}"), rng.random() * 30)
            for i in range(1000)]
    for row, target in rows:
        log.record(row, target)
    assert len(log._blocks) > 10, "the buffer was deflated in blocks"
    delta = log.delta()
    assert list(examples(delta)) == rows
    plain = len(delta)
    assert log.memory_bytes() < 0.6 * plain, (log.memory_bytes(), plain)
    log.clear()
    assert list(examples(log.delta())) == [] and log.memory_bytes() < 1024


def test_a_delta_of_the_first_layout_is_still_read() -> None:
    """A member of the previous version publishes format 1 (every example with its feature names)."""
    old = b'{"replay":1,"examples":[["k",true,{"x":1.5,"c":"red"}],[null,2.0,{}]]}'
    assert list(examples(old)) == [(Row({"x": 1.5, "c": "red"}, "k"), True), (Row({}), 2.0)]


def test_only_replay_deltas_are_read() -> None:
    with pytest.raises(ValueError):
        list(examples(b'[{"weights": []}]'))
    with pytest.raises(ValueError):
        list(examples(b'{"replay": 99, "examples": []}'))


class _Recorder(Learner):
    """Just enough of a learner to see what a replay merge learns and records."""

    kind = "test"

    def __init__(self, fail_after: int | None = None) -> None:
        self._replay = ReplayLog(100)
        self.learned: list[tuple[Row, Target | None]] = []
        self.fail_after = fail_after

    def predict_one(self, row: Row) -> Output:
        raise NotImplementedError

    def learn_one(self, row: Row, target: Target | None) -> None:
        if self.fail_after is not None and len(self.learned) >= self.fail_after:
            raise RuntimeError("boom")
        self.learned.append((row, target))
        assert self._replay is not None
        self._replay.record(row, target)

    def snapshot(self) -> bytes:
        return b""

    @classmethod
    def restore(cls, data: bytes) -> Self:
        return cls()

    def clone(self) -> Self:
        return type(self)()

    def memory_bytes(self) -> int:
        return 1


def _delta(*values: int) -> bytes:
    log = ReplayLog(100)
    for value in values:
        log.record(Row({"v": value}), value % 2 == 0)
    return log.delta()


def test_merging_learns_every_delta_in_order_and_records_none_of_it() -> None:
    learner = _Recorder()
    assert learner._replay is not None
    learned = learn_replayed(learner, learner._replay, [(_delta(1, 2), 2), (_delta(), 0), (_delta(3), 1)])
    assert learned == 3
    assert [row.features["v"] for row, _ in learner.learned] == [1, 2, 3]
    assert len(learner._replay) == 0, "merged examples are not this member's to publish"
    learner.learn_one(Row({"v": 4}), True)
    assert len(learner._replay) == 1, "recording resumes after the merge"


def test_recording_resumes_when_a_merge_fails() -> None:
    learner = _Recorder(fail_after=1)
    assert learner._replay is not None
    with pytest.raises(RuntimeError):
        learn_replayed(learner, learner._replay, [(_delta(1, 2), 2)])
    assert not learner._replay.paused


def test_sync_merge_picks_each_kinds_mode() -> None:
    # (estimator or torch kind, task): its native mode, the mode ``auto`` picks
    kinds = {
        ("naive_bayes.GaussianNB", "binary"): (MergeMode.EXACT, MergeMode.EXACT),
        ("linear_model.LogisticRegression", "binary"): (MergeMode.AVERAGE, MergeMode.AVERAGE),
        ("linear_model.PAClassifier", "binary"): (MergeMode.AVERAGE, MergeMode.AVERAGE),
        ("linear_model.LinearRegression", "regression"): (MergeMode.AVERAGE, MergeMode.AVERAGE),
        ("linear_model.PARegressor", "regression"): (MergeMode.AVERAGE, MergeMode.AVERAGE),
        ("forest.ARFClassifier", "binary"): (MergeMode.VIEW, MergeMode.REPLAY),
        ("torch.mlp", "binary"): (MergeMode.AVERAGE, MergeMode.REPLAY),
    }

    def build(estimator: str, task: str, **params: object) -> Learner:
        if estimator.startswith("torch."):
            model = ModelSettings(name="m", kind=estimator, task=task, params=dict(params))
            return build_learner(model, PreprocessingSettings(), 1)
        return _learner(estimator, task, **params)

    for (estimator, task), (native, chosen) in kinds.items():
        params = {"n_models": 2} if "forest" in estimator else {}
        auto = build(estimator, task, **params)
        assert auto.merge_mode() is native
        assert apply_merge_choice(auto, SyncSettings()) is chosen is auto.merge_mode(), estimator
        kept = build(estimator, task, **params)
        assert apply_merge_choice(kept, SyncSettings(merge="native")) is native is kept.merge_mode()
        replayed = build(estimator, task, **params)
        assert apply_merge_choice(replayed, SyncSettings(merge="replay", replay_max_examples=7)) is MergeMode.REPLAY
        assert replayed._replay is not None and replayed._replay.max_examples == 7
        assert apply_merge_choice(replayed, SyncSettings(merge="native")) is MergeMode.REPLAY, "a mode sticks"
    assert MergeMode.VIEW in REPLAY_BY_DEFAULT and MergeMode.EXACT not in REPLAY_BY_DEFAULT


def test_a_feature_name_that_is_not_a_string_fails_loudly() -> None:
    """It would come back as a string: a different feature (River's synthetic Friedman stream has int names)."""
    log = ReplayLog(10)
    with pytest.raises(TypeError):
        log.record(Row({3: 1.0}), 2.0)  # type: ignore[dict-item]


def test_a_muted_log_records_nothing_and_drops_nothing() -> None:
    """A member alone in its group (every partition) records no examples: nobody would read them."""
    log = ReplayLog(2)
    log.muted = True
    for i in range(5):
        log.record(Row({"x": float(i)}), True)
    assert len(log) == 0 and log.dropped == 0
    log.muted = False
    log.record(Row({"x": 9.0}), False)
    assert list(examples(log.delta())) == [(Row({"x": 9.0}), False)]
