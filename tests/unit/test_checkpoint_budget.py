"""Checkpoint duty cycle: snapshots never take more than ``checkpoint.max_time_fraction`` of the worker's time.

A fake monotonic clock; a fake store whose write advances it, a learner whose snapshot advances it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.worker.checkpointing import Checkpointer
from shared.learners.base import Learner, Output, Row, Target, Task
from shared.monitoring.metrics import Metrics
from shared.settings import CheckpointSettings, ModelSettings
from shared.state.checkpoints import PartitionCheckpoint
from shared.steps.models import ModelStep

TP = ("events", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SlowLearner(Learner):
    """A learner whose snapshot costs ``cost`` seconds on the fake clock."""

    kind = "fake"
    task = Task.BINARY

    def __init__(self, clock: Clock, cost: list[float]) -> None:
        self.clock, self.cost = clock, cost

    def predict_one(self, row: Row) -> Output:
        return Output(None)

    def learn_one(self, row: Row, target: Target | None) -> None:
        pass

    def snapshot(self) -> bytes:
        self.clock.now += self.cost[0]
        return b"state"

    @classmethod
    def restore(cls, data: bytes) -> SlowLearner:
        raise NotImplementedError

    def clone(self) -> SlowLearner:
        return self

    def memory_bytes(self) -> int:
        return 0


class Store:
    def __init__(self, clock: Clock, write_s: float = 0.0, fail: bool = False) -> None:
        self.clock, self.write_s, self.fail = clock, write_s, fail
        self.saved: list[Mapping[tuple[str, int], PartitionCheckpoint]] = []

    def save(self, states: Mapping[tuple[str, int], PartitionCheckpoint]) -> float:
        self.clock.now += self.write_s
        if self.fail:
            raise ConnectionError("Redis down")
        self.saved.append(states)
        return self.clock.now


def make(cost_s: float, *, write_s: float = 0.0, **settings: Any) -> tuple[Checkpointer, Clock, Store, list[float],
                                                                         Metrics]:
    clock = Clock()
    cost = [cost_s]
    models = ModelStep([ModelSettings(name="m", kind="fake")], lambda _: SlowLearner(clock, cost))
    models.assign(TP)
    store = Store(clock, write_s)
    metrics = Metrics(CollectorRegistry())
    checkpointer = Checkpointer(store, models, CheckpointSettings(**settings), metrics,  # type: ignore[arg-type]
                                monotonic=clock)
    return checkpointer, clock, store, cost, metrics


def test_cheap_snapshots_keep_the_event_and_time_cadence() -> None:
    checkpointer, clock, store, _, _ = make(0.0002, every_events=5000, every_seconds=10.0)
    assert checkpointer.save({TP: 0})
    # 0.2 ms / 0.02 = 10 ms: the bound is far below the configured cadence
    assert checkpointer.not_before == pytest.approx(100.0 + 0.0002 / 0.02)
    checkpointer.account(4999)
    clock.now += 0.5
    assert not checkpointer.due()
    checkpointer.account(1)
    assert checkpointer.due()
    assert checkpointer.save({TP: 5000})
    clock.now += 10.0
    assert checkpointer.due()  # every_seconds, with no events at all
    assert len(store.saved) == 2


def test_an_expensive_snapshot_defers_the_next_one_by_its_cost_over_the_fraction() -> None:
    # a forest: 130 ms snapshot + 20 ms Redis write = 150 ms; at 2% the next may start 7.5 s after this one
    checkpointer, clock, _, _, _ = make(0.130, write_s=0.020, every_events=5000, every_seconds=10.0)
    started = clock.now
    assert checkpointer.save({TP: 0})
    assert checkpointer.last_duration_s == pytest.approx(0.150)
    assert checkpointer.not_before == pytest.approx(started + 0.150 / 0.02)
    checkpointer.account(50_000)  # far past every_events
    clock.now = started + 7.49
    assert not checkpointer.due()
    clock.now = started + 7.5
    assert checkpointer.due()


@pytest.mark.parametrize("fraction", [0.01, 0.02, 0.1, 0.5])
def test_time_spent_checkpointing_stays_within_the_fraction(fraction: float) -> None:
    """A worker loop (commit every 0.1 s, 500 events per commit) with snapshots of growing cost."""
    checkpointer, clock, store, cost, _ = make(0.05, every_events=1000, every_seconds=1.0,
                                               max_time_fraction=fraction)
    start = clock.now
    spent = last = 0.0
    for step in range(5000):
        clock.now += 0.1  # processing a batch
        checkpointer.account(500)
        cost[0] = 0.05 + step * 0.0001  # the model grows: 50 ms to 550 ms
        if checkpointer.due():
            before = clock.now
            checkpointer.save({TP: step})
            last = clock.now - before
            spent += last
    elapsed = clock.now - start
    assert len(store.saved) > 10
    # every snapshot but the last is followed by at least cost / fraction seconds before the next one starts
    assert spent - last <= fraction * elapsed
    assert spent / elapsed <= fraction * 1.1


def test_forced_checkpoints_are_not_deferred_but_count_for_the_next() -> None:
    checkpointer, clock, store, _, _ = make(1.0, every_events=10, every_seconds=1.0, max_time_fraction=0.1)
    assert checkpointer.save({TP: 0})
    # a revoke or shutdown calls save() directly: never deferred
    assert checkpointer.save({TP: 1})
    assert len(store.saved) == 2
    started_second = clock.now - 1.0
    checkpointer.account(100)
    clock.now = started_second + 9.9
    assert not checkpointer.due()
    clock.now = started_second + 10.0
    assert checkpointer.due()


def test_a_failed_redis_write_backs_off_and_only_its_snapshots_count() -> None:
    # the write fails after 0.5 s (a timeout): that wait is the backoff's business, not the duty cycle's
    checkpointer, clock, store, _, metrics = make(0.01, write_s=0.5, every_events=1, max_time_fraction=0.5)
    store.fail = True
    started = clock.now
    assert not checkpointer.save({TP: 0})
    assert not checkpointer.healthy
    assert metrics.registry.get_sample_value("streamlearn_checkpoints_total", {"outcome": "failed"}) == 1
    assert checkpointer.not_before == pytest.approx(started + 0.01 / 0.5)
    checkpointer.account(10)
    clock.now = started + 0.9  # the backoff (1 s from the attempt's start) still holds
    assert not checkpointer.due()
    clock.now = started + 1.0  # counted, the failed write (0.51 s / 0.5) would defer it past here
    assert checkpointer.due()
    store.fail = False
    store.write_s = 0.0
    assert checkpointer.save({TP: 10})
    assert checkpointer.healthy


def test_the_setting_is_validated() -> None:
    assert CheckpointSettings().max_time_fraction == 0.02
    with pytest.raises(ValueError):
        CheckpointSettings(max_time_fraction=0.0)
    with pytest.raises(ValueError):
        CheckpointSettings(max_time_fraction=1.5)


@pytest.mark.parametrize("alone", [False, True])
def test_a_group_member_syncs_at_the_sync_cadence_unless_it_holds_every_partition(alone: bool) -> None:
    """Group scope: every sync is a checkpoint, so a member checkpoints at the sooner of both cadences; a member
    holding every partition has nobody to sync with, and keeps the checkpoint cadence alone."""
    from types import SimpleNamespace

    checkpointer, clock, _, _, _ = make(0.0, every_events=5000, every_seconds=10.0)
    assert checkpointer.save({TP: 0})  # a plain checkpoint (a sync would need the group's Redis)
    warmup = [False]
    checkpointer.group = SimpleNamespace(  # type: ignore[assignment]
        alone=alone, every_events=100, every_s=5.0, warmup_due=lambda model_set: warmup[0])
    checkpointer._models.shared_set = lambda: object()  # type: ignore[method-assign, assignment, return-value]
    clock.now += 1.0
    checkpointer.account(99)
    assert not checkpointer.due()
    warmup[0] = True
    assert checkpointer.due() is not alone  # a young group state syncs sooner, unless nobody shares it
    warmup[0] = False
    checkpointer.account(1)
    assert checkpointer.due() is not alone
    clock.now += 5.0
    assert checkpointer.due() is not alone  # sync.every_s, not checkpoint.every_seconds
    checkpointer.account(4900)
    assert checkpointer.due()
