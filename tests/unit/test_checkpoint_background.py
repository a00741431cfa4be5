"""Background checkpoints: a forked child snapshots River models and writes them while the loop goes on.

The store is a file (a forked child's writes to memory would not be seen): each save appends one line with the
writer's pid and the offsets, and may be slow or fail.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.worker.checkpointing import SNAPSHOT_WALKS, Checkpointer
from shared.learners.base import Learner, Output, Row, Target, Task
from shared.learners.registry import build_learner
from shared.monitoring.metrics import Metrics
from shared.settings import CheckpointSettings, ModelSettings, PreprocessingSettings
from shared.state.checkpoints import PartitionCheckpoint
from shared.steps.models import ModelStep

TP = ("events", 0)
LOGREG = ModelSettings(name="logreg", estimator="river.linear_model.LogisticRegression")


class FileStore:
    """Appends ``{"pid", "offsets", "snapshot_bytes"}`` per save to a file; ``write_s`` slows it, ``fail`` fails it."""

    def __init__(self, path: Path, *, write_s: float = 0.0, fail: bool = False) -> None:
        self.path, self.write_s, self.fail = path, write_s, fail

    def save(self, states: Mapping[tuple[str, int], PartitionCheckpoint]) -> float:
        time.sleep(self.write_s)
        if self.fail:
            raise ConnectionError("Redis down")
        line = {"pid": os.getpid(), "offsets": {f"{t}:{p}": s.next_offset for (t, p), s in states.items()},
                "snapshot_bytes": sum(len(data) for s in states.values() for _, data in s.models.values())}
        with self.path.open("a") as out:
            out.write(json.dumps(line) + "\n")
        return time.time()

    def lines(self) -> list[dict]:
        return [json.loads(x) for x in self.path.read_text().splitlines()] if self.path.exists() else []


class TorchLike(Learner):
    """A learner of a kind that must not be snapshotted after a fork."""

    kind = "torch.mlp"
    task = Task.BINARY

    def predict_one(self, row: Row) -> Output:
        return Output(None)

    def learn_one(self, row: Row, target: Target | None) -> None:
        pass

    def snapshot(self) -> bytes:
        return b"state"

    @classmethod
    def restore(cls, data: bytes) -> TorchLike:
        raise NotImplementedError

    def clone(self) -> TorchLike:
        return self

    def memory_bytes(self) -> int:
        return 0


def make(store: FileStore, *, torch: bool = False, **settings: object) -> tuple[Checkpointer, ModelStep, Metrics]:
    if torch:
        models = ModelStep([ModelSettings(name="m", kind="torch.mlp")], lambda _: TorchLike())
    else:
        models = ModelStep([LOGREG], lambda m: build_learner(m, PreprocessingSettings(), 42))
    models.assign(TP)
    metrics = Metrics(CollectorRegistry())
    # these tests are about the child: it takes every periodic checkpoint unless a test says otherwise
    options = {"background_min_ms": 0.0, **settings}
    checkpointer = Checkpointer(store, models, CheckpointSettings(**options), metrics)  # type: ignore[arg-type]
    return checkpointer, models, metrics


def outcomes(metrics: Metrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("streamlearn_checkpoints_total", {"outcome": outcome}) or 0.0


def test_a_periodic_checkpoint_is_written_by_a_child_while_the_loop_goes_on(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "saves", write_s=0.3)
    checkpointer, models, metrics = make(store, every_events=100)
    learner = models.sets[TP].learners["logreg"]
    learner.learn_one(Row({"x": 1.0}), True)
    checkpointer.account(150)
    started = time.monotonic()
    assert checkpointer.save({TP: 150}, background=True)
    assert time.monotonic() - started < 0.25, "the loop did not wait for the 0.3 s write"
    learner.learn_one(Row({"x": 2.0}), False)  # the parent goes on; the child has the state of the fork
    checkpointer.account(120)
    assert not checkpointer.due(), "no second checkpoint while one is being written"
    assert outcomes(metrics, "ok") == 0
    checkpointer.join()
    (line,) = store.lines()
    assert line["pid"] != os.getpid() and line["offsets"] == {"events:0": 150} and line["snapshot_bytes"] > 0
    assert outcomes(metrics, "ok") == 1 and checkpointer.healthy
    assert checkpointer.last_duration_s >= 0.3  # the child's time counts towards max_time_fraction
    assert checkpointer.not_before >= started + 0.3 / 0.02
    # the 120 events learned after the fork are still to be checkpointed
    assert checkpointer._events_since == 120


def test_the_snapshot_is_the_state_at_the_fork(tmp_path: Path) -> None:
    from shared.learners.registry import restore_learner

    class Keeping(FileStore):
        def save(self, states: Mapping[tuple[str, int], PartitionCheckpoint]) -> float:
            time.sleep(self.write_s)
            ((_kind, data),) = states[TP].models.values()
            (self.path.parent / "snapshot").write_bytes(data)
            return super().save(states)

    store = Keeping(tmp_path / "saves", write_s=0.2)
    checkpointer, models, _ = make(store)
    learner = models.sets[TP].learners["logreg"]
    for i in range(20):
        learner.learn_one(Row({"x": float(i % 3)}), i % 2 == 0)
    at_fork = learner.predict_one(Row({"x": 1.0}))
    assert checkpointer.save({TP: 20}, background=True)
    for _ in range(200):  # learn a lot more while the child pickles
        learner.learn_one(Row({"x": 5.0}), True)
    checkpointer.join()
    restored = restore_learner("river", (tmp_path / "snapshot").read_bytes())
    assert restored.predict_one(Row({"x": 1.0})) == at_fork != learner.predict_one(Row({"x": 1.0}))


def test_a_forced_checkpoint_waits_for_the_background_one_so_they_land_in_order(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "saves", write_s=0.3)
    checkpointer, _, metrics = make(store)
    assert checkpointer.save({TP: 100}, background=True)
    assert checkpointer.save({TP: 200})  # revoke or shutdown: written now, after the one in flight
    lines = store.lines()
    assert [line["offsets"]["events:0"] for line in lines] == [100, 200]
    assert lines[0]["pid"] != os.getpid() and lines[1]["pid"] == os.getpid()
    assert outcomes(metrics, "ok") == 2


def test_a_failed_background_write_backs_off_and_marks_redis_down(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "saves", fail=True)
    checkpointer, _, metrics = make(store, every_events=1)
    assert checkpointer.save({TP: 10}, background=True)
    checkpointer.join()
    assert outcomes(metrics, "failed") == 1 and outcomes(metrics, "ok") == 0
    assert not checkpointer.healthy
    assert metrics.registry.get_sample_value("streamlearn_redis_up") == 0
    checkpointer.account(5)
    assert not checkpointer.due(), "backing off"


@pytest.mark.parametrize("case", ["torch", "disabled"])
def test_torch_models_and_background_false_are_saved_in_the_loop(tmp_path: Path, case: str) -> None:
    store = FileStore(tmp_path / "saves", write_s=0.1)
    if case == "torch":
        checkpointer, _, metrics = make(store, torch=True)
    else:
        checkpointer, _, metrics = make(store, background=False)
    assert checkpointer.save({TP: 7}, background=True)
    (line,) = store.lines()  # written before save() returned
    assert line["pid"] == os.getpid()
    assert outcomes(metrics, "ok") == 1


def test_poll_collects_the_outcome_without_waiting_or_a_commit(tmp_path: Path) -> None:
    """The worker calls poll() on every turn of its loop, so an idle worker still sees the child's outcome."""
    store = FileStore(tmp_path / "saves", write_s=0.2)
    checkpointer, _, metrics = make(store)
    assert checkpointer.save({TP: 3}, background=True)
    started = time.monotonic()
    checkpointer.poll()
    assert time.monotonic() - started < 0.1 and outcomes(metrics, "ok") == 0  # still writing: poll() did not wait
    deadline = time.monotonic() + 10
    while outcomes(metrics, "ok") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
        checkpointer.poll()
    assert outcomes(metrics, "ok") == 1 and len(store.lines()) == 1


def test_a_child_takes_over_only_once_a_checkpoint_took_background_min_ms(tmp_path: Path) -> None:
    """A fork stalls the loop for milliseconds of its own: a model whose checkpoint is quicker stays in the loop."""
    store = FileStore(tmp_path / "saves")
    checkpointer, _, metrics = make(store, background_min_ms=50.0)
    assert checkpointer.save({TP: 1}, background=True)  # nothing measured yet: in the loop
    assert checkpointer.last_duration_s < 0.05
    store.write_s = 0.06  # the model (or Redis) got slower: this one is still in the loop, and takes 60 ms
    assert checkpointer.save({TP: 2}, background=True)
    assert checkpointer.last_duration_s >= 0.06
    store.write_s = 0.0
    assert checkpointer.save({TP: 3}, background=True)  # the last one took 60 ms: a child writes this one
    checkpointer.join()  # quick again, as the child reports: the next one goes back to the loop
    assert checkpointer.save({TP: 4}, background=True)
    pids = [line["pid"] for line in store.lines()]
    assert [line["offsets"]["events:0"] for line in store.lines()] == [1, 2, 3, 4]
    assert pids[0] == pids[1] == pids[3] == os.getpid() != pids[2]
    assert outcomes(metrics, "ok") == 4


def test_models_that_learned_since_their_cost_was_measured_are_checkpointed_by_a_child_once(tmp_path: Path) -> None:
    """A checkpoint measured before the models learned anything (a fresh start's, at assignment) says nothing of
    what one costs once they have: the first periodic one goes to a child, whose report decides the next ones.
    A checkpoint's cost is bounded by its measured one scaled by the events learned since."""
    store = FileStore(tmp_path / "saves")
    checkpointer, models, _ = make(store, background_min_ms=50.0)
    assert checkpointer.save({TP: 0})  # the assignment's checkpoint: in the loop, before anything was learned
    assert checkpointer.last_duration_s < 0.05
    learner = models.sets[TP].learners["logreg"]
    learner.learn_one(Row({"x": 1.0}), True)
    checkpointer.account(5000)
    assert checkpointer.save({TP: 5000}, background=True), "grown since it was measured: a child takes it"
    checkpointer.join()
    assert checkpointer.last_duration_s < 0.05  # the child's report: still quick, measured at 5,000 events
    checkpointer.account(1000)  # 6,000 events: at most 1.2 times the cost measured at 5,000
    assert checkpointer.save({TP: 6000}, background=True)
    checkpointer.last_duration_s = 0.01  # as if it had taken 10 ms at 6,000 events
    checkpointer.account(30_000)  # 36,000 events: up to 60 ms now, past background_min_ms
    assert checkpointer.save({TP: 36_000}, background=True)
    checkpointer.join()
    pids = [line["pid"] for line in store.lines()]
    assert [line["offsets"]["events:0"] for line in store.lines()] == [0, 5000, 6000, 36_000]
    assert pids[0] == pids[2] == os.getpid()
    assert pids[1] != os.getpid() and pids[3] != os.getpid() and pids[1] != pids[3]


class SlowFirstSnapshot(TorchLike):
    """A fork-safe learner whose first snapshot after a fork takes ``first_s`` and the next ones ``then_s``: as a
    first pass pays the fork's copy-on-write faults."""

    kind = "river"

    def __init__(self, first_s: float, then_s: float) -> None:
        self.first_s, self.then_s, self.taken = first_s, then_s, 0

    def snapshot(self) -> bytes:
        time.sleep(self.first_s if self.taken == 0 else self.then_s)
        self.taken += 1
        return b"state"


@pytest.mark.parametrize(("first_s", "then_s", "reported_s"), [
    (0.03, 0.002, 0.002),  # a second pass, clearly cheap (under 12.5 ms): reported
    (0.03, 0.02, 0.03),  # a second pass, not clearly cheap: the first is reported, as before
    (0.12, 0.002, 0.12),  # past twice background_min_ms: one pass
])
def test_a_child_times_a_quick_snapshot_again_and_reports_a_clearly_cheap_second_pass(
    tmp_path: Path, first_s: float, then_s: float, reported_s: float,
) -> None:
    """A first pass under twice ``background_min_ms`` (50 ms) is taken again: the first one's copy-on-write faults
    are the fork's, not the snapshot's. The second pass is what the child reports when it is under a quarter of
    ``background_min_ms``; otherwise, and after a slower first pass, the first pass is."""
    store = FileStore(tmp_path / "saves")
    models = ModelStep([LOGREG], lambda _: SlowFirstSnapshot(first_s, then_s))
    models.assign(TP)
    checkpointer = Checkpointer(store, models, CheckpointSettings(background_min_ms=50.0), Metrics(CollectorRegistry()))
    checkpointer.last_duration_s = 0.06  # as measured before: this one goes to a child
    assert checkpointer.save({TP: 1}, background=True)
    checkpointer.join()
    (line,) = store.lines()
    assert line["pid"] != os.getpid()
    assert models.sets[TP].learners["logreg"].taken == 0, "the passes ran in the child"
    assert reported_s <= checkpointer.last_snapshot_s < reported_s + 0.015
    assert checkpointer.last_duration_s >= checkpointer.last_snapshot_s


def _fresh_start_then_learned(store: FileStore, examples: int) -> tuple[Checkpointer, ModelStep]:
    """A checkpointer whose only measurement is the assignment's (nothing learned), and models that learned since."""
    checkpointer, models, _ = make(store, background_min_ms=50.0)
    assert checkpointer.save({TP: 0})  # the assignment's checkpoint: in the loop, before anything was learned
    learner = models.sets[TP].learners["logreg"]
    for i in range(examples):
        learner.learn_one(Row({"x": float(i)}), i % 2 == 0)
    models.sets[TP].learned["logreg"] = examples  # as the model step counts what it learned
    checkpointer.account(examples)
    return checkpointer, models


def test_after_a_fresh_start_the_memory_walk_keeps_a_cheap_models_first_checkpoint_in_the_loop(
    tmp_path: Path,
) -> None:
    """The model-memory gauge's walk (paid by the loop anyway) bounds a never-measured checkpoint: a linear model's
    walk of a fraction of a millisecond, times ``SNAPSHOT_WALKS``, is far below ``background_min_ms``, so its first
    periodic checkpoint is taken in the loop, where the fork's own stall would cost more."""
    store = FileStore(tmp_path / "saves")
    checkpointer, models = _fresh_start_then_learned(store, 100)
    models.memory_bytes()  # the gauge's walk, at 100 examples
    walk = models.last_walk()
    assert walk is not None and walk[1] == 100 and walk[0] * SNAPSHOT_WALKS < 0.05
    models.sets[TP].learned["logreg"] = 200  # twice as many since the walk: the estimate doubles, still small
    checkpointer.account(100)
    assert checkpointer.save({TP: 200}, background=True)
    (_, line) = store.lines()
    assert line["pid"] == os.getpid(), "taken in the loop"


def test_after_a_fresh_start_a_slow_walk_or_none_sends_the_first_checkpoint_to_a_child(tmp_path: Path) -> None:
    """Without a walk of models that learned, or with one whose estimate reaches ``background_min_ms``, the cost is
    unknown or large: the first periodic checkpoint goes to a child, as it did before walks were consulted."""
    store = FileStore(tmp_path / "saves")
    checkpointer, models = _fresh_start_then_learned(store, 10)
    assert models.last_walk() is None
    assert checkpointer.save({TP: 10}, background=True), "no walk yet"
    checkpointer.join()
    store_slow = FileStore(tmp_path / "slow")
    checkpointer, models = _fresh_start_then_learned(store_slow, 10)
    learner = models.sets[TP].learners["logreg"]
    walk = learner.memory_bytes

    def slow_walk() -> int:
        time.sleep(0.006)  # 6 ms: ten of them are 60 ms, past background_min_ms (50)
        return walk()

    learner.memory_bytes = slow_walk  # type: ignore[method-assign]
    models.memory_bytes()
    assert checkpointer.save({TP: 10}, background=True)
    checkpointer.join()
    pids = [line["pid"] for line in store.lines() + store_slow.lines()]
    assert pids[0] == pids[2] == os.getpid(), "the assignments' checkpoints: in the loop"
    assert pids[1] != os.getpid() and pids[3] != os.getpid(), "the first periodic ones: children"


def open_pipes() -> set[str]:
    """The pipes this process has open (``pipe:[inode]``): other descriptors may close meanwhile (collected sockets
    of earlier tests), so a leak is a new pipe, not a changed count."""
    pipes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:"):
            pipes.add(target)
    return pipes


def test_without_a_child_the_checkpoint_is_saved_in_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No memory or processes left for a fork: the same checkpoint is written by the loop, and nothing leaks."""
    import services.worker.checkpointing as checkpointing

    def no_fork() -> int:
        raise OSError(12, "Cannot allocate memory")

    made: list[tuple[int, str]] = []  # the pipes the checkpointer made for its child: (fd, what it points to)
    real_pipe = os.pipe

    def pipe() -> tuple[int, int]:
        read, write = real_pipe()
        made.extend((fd, os.readlink(f"/proc/self/fd/{fd}")) for fd in (read, write))
        return read, write

    store = FileStore(tmp_path / "saves")
    checkpointer, _, metrics = make(store)
    monkeypatch.setattr(checkpointing.os, "fork", no_fork)
    monkeypatch.setattr(checkpointing.os, "pipe", pipe)
    assert checkpointer.save({TP: 9}, background=True)
    (line,) = store.lines()  # written before save() returned, by this process
    assert line["pid"] == os.getpid() and line["offsets"] == {"events:0": 9}
    assert checkpointer._child is None and outcomes(metrics, "ok") == 1
    assert made, "the checkpointer tried to start a child"
    # only the checkpointer's own pipes: other threads of the test process (clients left by earlier tests) may
    # open pipes of their own meanwhile
    assert all(target not in open_pipes() for _, target in made), "the pipes made for the child are closed"
