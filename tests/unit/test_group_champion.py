"""The group's champion: score sums that add exactly, and the switching rule over a shared (fake) store.

The sums are checked against River's own metrics (the oracle); the champion logic runs over an in-memory store
with the same contract as Redis' (``sync`` adds and reads back, ``switch`` is a compare-and-set on the epoch).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

import pytest
import redis
from prometheus_client import CollectorRegistry
from river import metrics

from shared.contract import Event
from shared.learners.base import Output, Task
from shared.monitoring.metrics import Metrics
from shared.settings import ChampionSettings
from shared.state.group_scores import GroupView, ScoreSums, is_exact
from shared.steps.batch import Batch, Record
from shared.steps.group_champion import GroupChampion
from shared.steps.score import ScoreStep

TASKS = {"a": Task.BINARY, "b": Task.BINARY}


class FakeStore:
    """A group store in memory: the rolling window is everything added (enough for the switching rule)."""

    def __init__(self) -> None:
        self.champion: str | None = None
        self.epoch = 0
        self.since = 0
        self.switches = 0
        self.total = 0
        self.rolling: dict[str, ScoreSums] = {}
        self.fail = False

    def sync(self, labels: int, sums: Mapping[str, ScoreSums], default_champion: str) -> GroupView:
        if self.fail:
            raise redis.ConnectionError("down")
        if self.champion is None:
            self.champion = default_champion
        for name, model_sums in sums.items():
            self.rolling.setdefault(name, ScoreSums()).add(model_sums)
        self.total += labels
        self.since += labels
        rolling = {name: ScoreSums(**{f: getattr(s, f) for f in s.__slots__}) for name, s in self.rolling.items()}
        return GroupView(self.champion, self.epoch, self.since, self.switches, self.total, rolling)

    def switch(self, expected: str, epoch: int, new: str) -> bool:
        if self.fail:
            raise redis.ConnectionError("down")
        if self.champion != expected or self.epoch != epoch:
            return False
        self.champion, self.since = new, 0
        self.epoch += 1
        self.switches += 1
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def accuracy_sums(n: int, correct: int) -> ScoreSums:
    return ScoreSums(n=n, correct=correct, tp=correct, fp=n - correct)


def test_sums_match_river_metrics_for_classification() -> None:
    y_true = [True, False, True, True, False, True, False, False]
    y_pred = [True, True, False, True, False, None, False, True]
    probas = [{True: 0.9, False: 0.1}, {True: 0.6, False: 0.4}, {True: 0.3, False: 0.7}, {True: 0.8, False: 0.2},
              {True: 0.1, False: 0.9}, None, {True: 0.2, False: 0.8}, {True: 0.55, False: 0.45}]
    # two halves summed: sums add exactly, whichever worker scored which half
    sums = ScoreSums.of_predictions(Task.BINARY, y_true[:3], y_pred[:3], probas[:3])
    sums.add(ScoreSums.of_predictions(Task.BINARY, y_true[3:], y_pred[3:], probas[3:]))
    accuracy, f1, log_loss = metrics.Accuracy(), metrics.F1(), metrics.LogLoss()
    for t, p, proba in zip(y_true, y_pred, probas, strict=True):
        if p is None:
            continue
        accuracy.update(t, p)
        f1.update(t, p)
        assert proba is not None
        log_loss.update(t, proba[True])
    assert sums.n == 7
    assert sums.value("accuracy", Task.BINARY) == pytest.approx(accuracy.get(), abs=1e-12)
    assert sums.value("f1", Task.BINARY) == pytest.approx(f1.get(), abs=1e-12)
    assert sums.value("log_loss", Task.BINARY) == pytest.approx(log_loss.get(), abs=1e-9)


def test_sums_match_river_metrics_for_regression() -> None:
    y_true = [3.0, -1.5, 2.0, 7.0, 0.5]
    y_pred = [2.5, 0.0, 2.0, 8.0, None]
    sums = ScoreSums.of_predictions(Task.REGRESSION, y_true[:2], y_pred[:2])
    sums.add(ScoreSums.of_predictions(Task.REGRESSION, y_true[2:], y_pred[2:]))
    mae, rmse, r2 = metrics.MAE(), metrics.RMSE(), metrics.R2()
    for t, p in zip(y_true[:4], y_pred[:4], strict=True):
        assert p is not None
        for metric in (mae, rmse, r2):
            metric.update(t, p)
    assert sums.n == 4
    for name, metric in (("mae", mae), ("rmse", rmse), ("r2", r2)):
        assert sums.value(name, Task.REGRESSION) == pytest.approx(metric.get(), abs=1e-12), name


def test_inexact_metrics_use_the_weighted_local_values() -> None:
    assert is_exact("accuracy", Task.MULTICLASS) and is_exact("f1", Task.BINARY)
    assert not is_exact("f1", Task.MULTICLASS) and not is_exact("roc_auc", Task.BINARY)
    sums = ScoreSums(n=30, weighted_sum=0.8 * 10 + 0.5 * 20, weighted_n=30)
    assert sums.value("roc_auc", Task.BINARY) == pytest.approx(0.6)
    assert ScoreSums().value("accuracy", Task.BINARY) is None


def test_two_workers_agree_and_switch_once_with_hysteresis() -> None:
    store, clock = FakeStore(), Clock()
    settings = ChampionSettings(margin=0.05, min_labels=100, refresh_s=1.0)
    workers = [GroupChampion(["a", "b"], TASKS, settings, store, monotonic=clock) for _ in range(2)]
    assert [w.current for w in workers] == ["a", "a"]
    # worker 0 sees b clearly better, but the group has scored only 60 labels: too few for a switch
    assert workers[0].update(60, {}, {"a": accuracy_sums(60, 36), "b": accuracy_sums(60, 54)}) is None
    assert store.champion == "a" and store.since == 60
    # worker 1 adds 60 more: the group has 120 labels, accuracy a 0.6 vs b 0.9: worker 1 makes the switch
    assert workers[1].update(60, {}, {"a": accuracy_sums(60, 36), "b": accuracy_sums(60, 54)}) == "b"
    assert store.champion == "b" and store.switches == 1 and store.since == 0
    # worker 0 syncs only after refresh_s; then it follows (without counting a switch of its own)
    assert workers[0].refresh() is None and workers[0].current == "a"
    clock.now = 1.0
    assert workers[0].refresh() == "b"
    assert [w.current for w in workers] == ["b", "b"] and [w.switches for w in workers] == [0, 1]
    # a is better again, but only 50 labels since the switch: hysteresis holds
    clock.now = 2.0
    assert workers[0].update(50, {}, {"a": accuracy_sums(50, 50), "b": accuracy_sums(50, 0)}) is None
    assert store.champion == "b"


def test_within_the_margin_no_switch() -> None:
    store = FakeStore()
    champion = GroupChampion(["a", "b"], TASKS, ChampionSettings(margin=0.05, min_labels=10, refresh_s=0.0), store)
    assert champion.update(100, {}, {"a": accuracy_sums(100, 70), "b": accuracy_sums(100, 74)}) is None
    assert store.champion == "a" and champion.switches == 0


def test_lower_is_better_for_mae() -> None:
    store = FakeStore()
    settings = ChampionSettings(metric="mae", margin=0.1, min_labels=1, refresh_s=0.0)
    champion = GroupChampion(["a", "b"], {"a": Task.REGRESSION, "b": Task.REGRESSION}, settings, store)
    assert champion.update(10, {}, {"a": ScoreSums(n=10, abs_error=20.0), "b": ScoreSums(n=10, abs_error=5.0)}) == "b"


def test_a_switch_decided_elsewhere_first_loses_the_compare_and_set() -> None:
    store = FakeStore()
    settings = ChampionSettings(margin=0.0, min_labels=1, refresh_s=0.0)
    champion = GroupChampion(["a", "b", "c"], {**TASKS, "c": Task.BINARY}, settings, store)
    champion.update(0, {}, {})  # reads epoch 0
    store.switch("a", 0, "c")  # another worker moves the champion to c
    assert not champion.promote("b"), "the stored champion moved since this worker read it"
    assert champion.refresh() == "c"
    assert champion.promote("b") and store.champion == "b" and champion.current == "b"


def test_pinned_or_single_model_never_uses_the_store() -> None:
    store = FakeStore()
    store.fail = True
    pinned = GroupChampion(["a", "b"], TASKS, ChampionSettings(pinned="b", min_labels=1, refresh_s=0.0), store)
    assert pinned.update(1000, {}, {"a": accuracy_sums(1000, 1000)}) is None and pinned.current == "b"
    assert not pinned.promote("a")


def test_a_store_outage_keeps_the_champion_and_the_pending_sums() -> None:
    store = FakeStore()
    settings = ChampionSettings(margin=0.05, min_labels=10, refresh_s=0.0)
    champion = GroupChampion(["a", "b"], TASKS, settings, store)
    store.fail = True
    assert champion.update(40, {}, {"a": accuracy_sums(40, 10), "b": accuracy_sums(40, 40)}) is None
    assert champion.current == "a" and not champion.available
    store.fail = False
    assert champion.update(0, {}, {}) == "b", "the sums kept during the outage decide once it is back"
    assert store.total == 40 and champion.available


def test_a_stored_champion_no_longer_configured_is_reset() -> None:
    store = FakeStore()
    store.champion = "old"
    champion = GroupChampion(["a", "b"], TASKS, ChampionSettings(min_labels=1, refresh_s=0.0), store)
    assert champion.update(1, {}, {}) is None and champion.current == "a"
    assert store.champion == "a"


def test_roc_auc_ranks_by_the_weighted_local_values() -> None:
    store = FakeStore()
    settings = ChampionSettings(metric="roc_auc", margin=0.05, min_labels=10, refresh_s=0.0)
    champion = GroupChampion(["a", "b"], TASKS, settings, store)
    assert champion.update(20, {"a": 0.6, "b": 0.9}, {"a": accuracy_sums(20, 10), "b": accuracy_sums(20, 10)}) == "b"
    assert math.isclose(store.rolling["b"].value("roc_auc", Task.BINARY) or 0.0, 0.9)


def test_score_step_counters_equal_a_plain_count() -> None:
    """The scored/correct counters and the group sums count each published labelled prediction once, by role."""
    rng = random.Random(7)
    metrics_ = Metrics(CollectorRegistry())
    champion = ["a"]
    step = ScoreStep(metrics_, TASKS, 100, champion=lambda: champion[0])
    expected: dict[tuple[str, str], list[int]] = {}
    sums_n: dict[str, float] = {"a": 0, "b": 0}
    committed: dict[tuple[str, str], list[int]] = {}
    for batch_index in range(6):
        champion[0] = "a" if batch_index < 3 else "b"
        records = []
        for i in range(200):
            record = Record("events", 0, batch_index * 200 + i, None, b"{}", 0)
            label = rng.choice([True, False]) if rng.random() < 0.7 else None
            record.event = Event(id=f"e{batch_index}-{i}", features={"x": 1.0}, label=label)
            record.already_published = batch_index == 5 and i < 50  # replayed after a restart: not counted again
            for name in ("a", "b"):
                record.outputs[name] = Output(rng.choice([True, False, None]), None)
                output = record.outputs[name]
                if label is not None and output.prediction is not None and not record.already_published:
                    cell = expected.setdefault((name, "champion" if name == champion[0] else "challenger"), [0, 0])
                    cell[0] += 1
                    cell[1] += output.prediction == label
                    sums_n[name] += 1
            records.append(record)
        step.process(Batch(records, 0.0))
        if batch_index == 4:
            step.discard_counts()  # a transaction given up: its counts never reach the counters
            for cell_key in list(expected):
                expected[cell_key] = list(committed.get(cell_key, [0, 0]))
        else:
            step.publish_counts()
            committed = {key: list(value) for key, value in expected.items()}
    for (name, role), (scored, correct) in expected.items():
        labels = {"model": name, "role": role}
        assert metrics_.registry.get_sample_value("streamlearn_predictions_scored_total", labels) == scored
        assert metrics_.registry.get_sample_value("streamlearn_predictions_correct_total", labels) == correct
    taken = step.take_sums()
    assert {name: s.n for name, s in taken.items()} == sums_n
    assert step.take_sums() == {}, "taken once"


def test_a_fast_stream_syncs_every_bucket_of_labels_not_only_every_interval() -> None:
    store, clock = FakeStore(), Clock()
    settings = ChampionSettings(margin=0.05, min_labels=100, refresh_s=10.0)
    champion = GroupChampion(["a", "b"], TASKS, settings, store, refresh_labels=50, monotonic=clock)
    champion.update(10, {}, {"a": accuracy_sums(10, 5)})  # the first sync is always due
    assert store.total == 10
    champion.update(30, {}, {"a": accuracy_sums(30, 15), "b": accuracy_sums(30, 30)})
    assert store.total == 10, "30 labels pending, within refresh_s: no sync yet"
    assert champion.update(70, {}, {"a": accuracy_sums(70, 35), "b": accuracy_sums(70, 70)}) == "b"
    assert store.total == 110


def test_score_step_error_counters_for_regressors() -> None:
    metrics_ = Metrics(CollectorRegistry())
    step = ScoreStep(metrics_, {"r": Task.REGRESSION}, 10, champion=lambda: "r")
    labels, predictions = [1.0, 2.0, 4.0, 3.0], [1.5, None, 1.0, 3.0]
    records = []
    for i, (label, prediction) in enumerate(zip(labels, predictions, strict=True)):
        record = Record("events", 0, i, None, b"{}", 0)
        record.event = Event(id=f"e{i}", features={"x": 1.0}, label=label)
        record.outputs["r"] = Output(prediction, None)
        records.append(record)
    step.process(Batch(records, 0.0))
    step.publish_counts()
    role = {"model": "r", "role": "champion"}
    assert metrics_.registry.get_sample_value("streamlearn_predictions_scored_total", role) == 3
    assert metrics_.registry.get_sample_value("streamlearn_prediction_absolute_error_total", role) == 3.5
    assert metrics_.registry.get_sample_value("streamlearn_prediction_squared_error_total", role) == 9.25
    assert metrics_.registry.get_sample_value("streamlearn_predictions_correct_total", role) is None
