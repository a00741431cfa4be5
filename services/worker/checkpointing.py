"""When and how the worker saves and restores its partitions' model sets.

Order of operations (docs/architecture.md, "Commit semantics"): the Kafka commit goes first, then the
snapshot of the same batch boundary goes to Redis. A checkpoint therefore never reflects more than Kafka has
committed, and after a crash the worker replays the gap (checkpoint offset to committed offset) learning
without publishing again.

How often (``checkpoint.*``): after a commit, when ``every_events`` events or ``every_seconds`` seconds have passed
since the last attempt, but never so often that snapshots take more than ``max_time_fraction`` of the worker's
time: a checkpoint that took *t* seconds (snapshot and Redis write) makes the next one wait at least
*t* / ``max_time_fraction`` seconds from its start. Cheap models (a linear model's snapshot is well under a
millisecond) keep the event/second cadence; a large forest is checkpointed less often, at the price of a longer
learn-only replay after a crash (nothing is lost or published twice: see above). Forced checkpoints (assignment,
revoke, shutdown) are not deferred.

Where (``checkpoint.background``): a periodic checkpoint of River models is taken by a forked child process, which
pickles the models as they were at the fork (copy-on-write) and writes them to Redis, while the poll loop goes on.
Only when it is worth a fork: below ``background_min_ms`` the fork itself would stall the loop longer. A
checkpoint's cost is taken to grow at most in proportion to the events learned since it was measured, so the first
periodic checkpoint after a fresh start (measured at assignment, before anything was learned) goes to a child, and
later ones stay in the loop while that bound keeps them under ``background_min_ms``. The parent collects a child's
outcome (metrics, backoff, the duty-cycle bound from the child's duration) on the next turn of its loop after the
child exits. One child at a time; every synchronous checkpoint, and every restore,
first waits for it, so checkpoints land in the order they were taken. Torch models are always saved in the loop
(their thread pools and CUDA contexts must not be used after a fork).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import math
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from shared.learners.registry import restore_learner
from shared.monitoring.metrics import Metrics
from shared.settings import CheckpointSettings
from shared.state.checkpoints import CheckpointStore, PartitionCheckpoint, SnapshotRejected
from shared.steps.models import ModelSet, ModelStep
from shared.sync.group import GroupSync, SyncOutcome, SyncRecord, choose_state

log = logging.getLogger("streamlearn.checkpoint")

TP = tuple[str, int]
_T = TypeVar("_T")

#: a child whose first snapshot pass took less than this many ``background_min_ms`` times it again, and reports the
#: second pass when that took less than ``CLEARLY_CHEAP`` of ``background_min_ms`` (see
#: :meth:`Checkpointer._snapshot_in_child`)
SECOND_PASS_BELOW = 2.0
CLEARLY_CHEAP = 0.25
#: learner kinds whose snapshot may be taken in a forked child: plain Python objects (River)
FORK_SAFE_KINDS = frozenset({"river"})
#: a River model's snapshot took 1.6 to 4.5 times the walk of its memory estimate (logistic regression, a Hoeffding
#: tree, a 10-tree ARF, after 500 and 5,000 examples; docs/architecture.md): a checkpoint whose cost was never
#: measured since the models learned is taken to cost at most this many walks
SNAPSHOT_WALKS = 10.0
#: the child's exit codes (``_DROPPED``: a held sync the parent dropped before its outputs were durable)
_SAVED, _NOT_SAVED, _CRASHED, _DROPPED = 0, 1, 2, 3
#: what the parent tells a child holding a group sync: write it (its outputs are durable), or drop it
_WRITE, _DROP = b"w", b"d"
_PR_SET_PDEATHSIG = 1
#: what the child reports: seconds spent on the snapshots, and in all (snapshots and the Redis write)
_TIMINGS = struct.Struct("=dd")


@dataclass(slots=True)
class _Child:
    """A forked child writing one checkpoint."""

    pid: int
    #: monotonic time of the fork
    started: float
    #: events accounted when it was forked (its snapshot holds them)
    events: int
    #: :attr:`Checkpointer.events_total` when it was forked (what its reported timings measured)
    events_total: int
    #: the read end of the pipe on which the child reports how long its work took
    timings: int
    #: a held group sync (:meth:`Checkpointer.hold`): the write end of the pipe on which the child waits for
    #: :data:`_WRITE` or :data:`_DROP`; ``None`` once told (or for a plain background checkpoint)
    go: int | None = None
    #: that sync's outcome: published (or queued again) with the child's result
    sync: Any = None


def _close(*fds: int | None) -> None:
    """Close each file descriptor that is not ``None``."""
    for fd in fds:
        if fd is not None:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class Restored:
    """The outcome of assigning one partition: its model set, where to resume, and the replay boundary."""

    model_set: ModelSet
    #: seek here before polling (``None``: resume from the committed offset as usual)
    seek_to: int | None
    #: records below this offset were already published: learn them, publish nothing
    replay_until: int
    #: the restored checkpoint's ``extra`` (e.g. ``label_offsets``: the label partitions' next offsets)
    extra: dict[str, Any] = field(default_factory=dict)


class Checkpointer:
    """Saves model sets with their offsets every N events or T seconds, and restores them on assignment."""

    def __init__(
        self, store: CheckpointStore, models: ModelStep, settings: CheckpointSettings, metrics: Metrics, *,
        monotonic: Callable[[], float] = time.monotonic, group: GroupSync | None = None,
    ) -> None:
        self._store = store
        #: group scope: every checkpoint is a sync (shared/sync/group.py), taken in the loop
        self.group = group
        self._models = models
        self._settings = settings
        self._metrics = metrics
        self._monotonic = monotonic
        self._events_since = 0
        #: events accounted since this checkpointer started, and that count when a checkpoint's cost was last
        #: measured (``None``: never): how much the models may have grown since (:meth:`_expensive`)
        self.events_total = 0
        self._measured_at: int | None = None
        self._last_attempt = monotonic()
        self._last_success: float | None = None
        self._backoff_s = 0.0
        #: the duty-cycle bound: no periodic checkpoint before this monotonic time (see the module docstring)
        self._not_before = 0.0
        #: how long the last checkpoint took (snapshot + Redis), seconds
        self.last_duration_s = 0.0
        self._store_started: float | None = None
        self.healthy = True
        # Linux only: elsewhere fork() in a threaded process is unsafe (macOS) or missing, and so is PR_SET_PDEATHSIG
        self._background = settings.background and sys.platform.startswith("linux")
        self._child: _Child | None = None
        #: guards ``_child``, and keeps saves one at a time: revoke listeners may run on another thread
        self._child_lock = threading.Lock()
        self._save_lock = threading.RLock()
        #: a periodic checkpoint taken and not written yet (:meth:`hold`), with the events it holds and its cost
        self._held: dict[TP, PartitionCheckpoint] | None = None
        self._held_events = 0
        #: :attr:`events_total` when the held checkpoint was snapshotted
        self._held_at = 0
        self._held_started = 0.0
        self._held_snapshot_s = 0.0
        #: group scope: the held checkpoint's sync outcome (its deltas are published with it)
        self._held_sync: Any = None
        #: how long the last checkpoint's snapshots took (without the Redis write), seconds
        self.last_snapshot_s = 0.0

    def account(self, events: int) -> None:
        """Count events processed since the last checkpoint."""
        self._events_since += events
        self.events_total += events

    def due(self) -> bool:
        """Whether the next commit should be followed by a checkpoint.

        ``every_events`` or ``every_seconds`` since the last attempt, unless Redis is being backed off or the
        duty-cycle bound (``max_time_fraction``) defers it.
        """
        self.poll()
        if self._child is not None or self._held is not None:
            return False
        now = self._monotonic()
        if now - self._last_attempt < self._backoff_s or now < self._not_before:
            return False
        every_events, every_seconds = self._settings.every_events, self._settings.every_seconds
        if self.group is not None and not self.group.alone:  # a sync is a checkpoint: the sooner of both cadences
            every_events = min(every_events, self.group.every_events)
            every_seconds = min(every_seconds, self.group.every_s)
            model_set = self._models.shared_set()
            if model_set is not None and self.group.warmup_due(model_set):
                return True
        return self._events_since >= every_events or now - self._last_attempt >= every_seconds

    @property
    def not_before(self) -> float:
        """The monotonic time before which no periodic checkpoint is due (the duty-cycle bound)."""
        return self._not_before

    def _timed(self, started: float, stored: bool) -> None:
        """Record how long the attempt that began at ``started`` took, and the next earliest periodic one.

        A failed Redis write does not count (it is mostly waiting, and the backoff spaces the retries): only the
        snapshots taken before it do.
        """
        ended = self._monotonic() if stored or self._store_started is None else self._store_started
        self.last_snapshot_s = max(0.0, (self._store_started or ended) - started)
        duration = max(0.0, ended - started)
        self.last_duration_s = duration
        self._measured_at = self.events_total
        self._not_before = started + duration / self._settings.max_time_fraction

    def save(
        self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None = None, *, background: bool = False,
    ) -> bool:
        """Snapshot the model sets of ``offsets``' partitions (next offsets to process) in one transaction.

        ``extra`` adds small JSON-ready state per partition (the worker's label-partition offsets).
        ``background`` (periodic checkpoints): a forked child takes the snapshot and writes it, when
        ``checkpoint.background`` is on and every model is fork-safe; ``True`` then means the child started, and
        its outcome is collected by :meth:`poll` / :meth:`join`.

        Returns ``False`` (and backs off) when Redis is unavailable; the worker keeps predicting.
        """
        with self._save_lock:
            self.join()  # one checkpoint at a time, in the order they were taken
            if background and self.group is None and self._worth_a_child() and self._fork_safe(offsets):
                return self._fork(offsets, extra)
            return self._save_here(offsets, extra)

    # --- a periodic checkpoint written once its outputs are durable (docs/architecture.md, "Commit semantics") --
    def can_hold(self, offsets: dict[TP, int]) -> bool:
        """Whether the periodic checkpoint of ``offsets`` may be snapshotted in the loop now and written later
        (:meth:`hold`): not a group sync, and its snapshots are cheaper than ``background_min_ms`` (else a forked
        child takes them, after the outputs are delivered)."""
        if self.group is not None:
            return True  # a sync is always taken in the loop
        return not (self._background and self._expensive(self.last_snapshot_s) and self._fork_safe(offsets))

    def hold(self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None = None) -> None:
        """Snapshot the model sets of ``offsets``' partitions now; :meth:`write_held` writes them once the outputs
        before these offsets are durable (delivered, or their transaction committed). No periodic checkpoint is due
        while one is held."""
        with self._save_lock:
            self.join()
            self._held_started = self._last_attempt = self._monotonic()
            self._held_events = self._events_since
            self._held_at = self.events_total
            if self.group is None:
                self._held = self._states(offsets, extra)
            else:  # the sync merges now; its deltas are published with the checkpoint
                model_set = self._models.shared_set()
                if model_set is not None and offsets and self._worth_a_child() and self._fork_safe(offsets):
                    outcome = self._sync(model_set)
                    if outcome is not None:
                        self._fork_held_sync(offsets, extra, model_set, outcome)
                    return
                synced = self._group_states(offsets, extra)
                if synced is None:
                    return
                self._held, self._held_sync = synced
            self._held_snapshot_s = self.last_snapshot_s = self._monotonic() - self._held_started

    def write_held(self) -> bool:
        """Write the held checkpoint (its outputs are durable now); ``False`` when Redis failed (backed off).
        A sync held by a child is told to write, and its outcome is collected by :meth:`poll`."""
        with self._save_lock:
            if self._tell_held_child(_WRITE):
                return True
            states, self._held = self._held, None
            sync, self._held_sync = self._held_sync, None
            if not states:
                return True
            began = self._monotonic()
            stored = False
            try:
                if sync is not None:
                    self._store.save(states, also=sync.publish)
                else:
                    self._store.save(states)
                stored = True
                if sync is not None and self.group is not None:
                    self.group.published(sync)
            except Exception as exc:  # Redis down or failing: keep serving, retry with backoff
                if sync is not None and self.group is not None:
                    self.group.failed()
                self._failed(redis_down=True)
                log.warning("checkpoint failed (%s); retrying in %.0f s", exc, self._backoff_s)
                return False
            finally:
                # the duty-cycle bound counts the snapshots and a successful write, not the wait for delivery
                duration = self._held_snapshot_s + (self._monotonic() - began if stored else 0.0)
                self.last_duration_s = duration
                self._measured_at = self._held_at
                self._not_before = self._held_started + duration / self._settings.max_time_fraction
            self._stored(self._held_events)
            return True

    def drop_held(self, tps: Sequence[TP] | None = None) -> None:
        """Forget the held checkpoint of ``tps`` (all when ``None``): its outputs will never be durable (a failed
        transaction) or the partitions are no longer this worker's."""
        with self._save_lock:
            if self._tell_held_child(_DROP):  # one state for every held partition: dropped whole
                self.join()
                return
            if self._held is None:
                return
            dropped = [tp for tp in (list(self._held) if tps is None else tps) if self._held.pop(tp, None) is not None]
            if dropped and self._held and self._held_sync is not None:
                # group scope: one state reflects every held partition; without all of them it is not written
                self._held = {}
            if not self._held:
                self._held = None
                if self._held_sync is not None and self.group is not None:
                    self.group.failed()  # its deltas stay queued for the next sync
                self._held_sync = None

    def _save_here(self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None) -> bool:
        started = self._last_attempt = self._monotonic()
        self._store_started = None
        stored = False
        try:
            stored = self._save(offsets, extra)
            return stored
        finally:
            self._timed(started, stored)

    def _worth_a_child(self) -> bool:
        """Background checkpoints are on, and the last checkpoint took long enough to be worth a fork, or may take
        that long now (:meth:`_expensive`)."""
        return self._background and self._expensive(self.last_duration_s)

    def _expensive(self, measured_s: float) -> bool:
        """Whether a checkpoint that took ``measured_s`` when last measured may take ``background_min_ms`` now.

        Its cost is taken to grow at most in proportion to the events accounted since (a model's state grows at
        most by what each event adds). Models measured before any event (a fresh start) say nothing of that: their
        cost is estimated from the model-memory gauge's last walk (:meth:`_estimated_from_walk`), and is unknown,
        so expensive, without one; a child reports what it cost, so this is one fork, not one each time.
        """
        threshold_s = self._settings.background_min_ms / 1000.0
        if measured_s >= threshold_s:
            return True
        measured_at = self._measured_at
        if measured_at is None or self.events_total <= measured_at:
            return False
        if measured_at == 0:
            return measured_s + self._estimated_from_walk() >= threshold_s
        return measured_s * self.events_total / measured_at >= threshold_s

    def _estimated_from_walk(self) -> float:
        """At most what the models' snapshots cost now, from the last walk of the model-memory gauge (which the
        loop pays anyway): ``SNAPSHOT_WALKS`` walks, scaled by the examples learned since; infinite without a walk
        of models that had learned something."""
        walk = self._models.last_walk()
        if walk is None or walk[1] <= 0:
            return math.inf
        walk_s, learned_then = walk
        return SNAPSHOT_WALKS * walk_s * max(1.0, self._models.learned_total() / learned_then)

    def _fork_safe(self, offsets: dict[TP, int]) -> bool:
        """Whether every model of these partitions may be snapshotted in a forked child."""
        for tp in offsets:
            model_set = self._models.sets.get(tp)
            if model_set is None:
                continue
            if any(learner.kind not in FORK_SAFE_KINDS for learner in model_set.learners.values()):
                return False
        return True

    def _fork(self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None) -> bool:
        """Start a child that snapshots the model sets as they are now and writes them; do not wait for it."""
        started = self._last_attempt = self._monotonic()
        if self._start_child(started, lambda _go, timings: self._write_in_child(offsets, extra, timings)):
            return True
        return self._save_here(offsets, extra)

    def _start_child(
        self, started: float, work: Callable[[int | None, int], int], *, sync: SyncOutcome | None = None,
    ) -> bool:
        """Fork a child that runs ``work(go, timings)`` and exits with its result (the child never returns); the
        parent keeps it as :attr:`_child`. ``timings`` is the write end of the pipe on which the child reports how
        long it took; with ``sync`` (a held group sync) ``go`` is the read end of the pipe on which it waits to be
        told to write (:meth:`_tell_held_child`), else ``None``. ``False`` when no child could be started."""
        parent = os.getpid()
        with self._child_lock:
            timings_in, timings_out = os.pipe()
            go_in, go_out = os.pipe() if sync is not None else (None, None)
            try:
                pid = os.fork()
            except OSError as exc:  # no memory or processes left for a child: the caller does it in the loop
                _close(timings_in, timings_out, go_in, go_out)
                log.warning("cannot start a background checkpoint (%s): taking it in the loop", exc)
                return False
            if pid == 0:  # the child: never returns
                code = _CRASHED
                try:
                    _die_with(parent)
                    gc.disable()  # a collection would only copy the parent's pages
                    _close(timings_in, go_out)
                    code = work(go_in, timings_out)
                finally:
                    os._exit(code)
            _close(timings_out, go_in)
            self._child = _Child(pid, started, self._events_since, self.events_total, timings_in, go=go_out,
                                 sync=sync)
        return True

    def _write_in_child(
        self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None, timings: int,
    ) -> int:
        """The child's work: snapshot and write, touching no metric (another thread may have held a metric's lock
        at the fork); the outcome is the exit code, and the time it took goes to the ``timings`` pipe."""
        states, snapshots_s = self._snapshot_in_child(lambda: self._states(offsets, extra))
        write_began = time.perf_counter()
        code = _SAVED
        try:
            if states:
                self._store.save(states)
        except Exception as exc:  # Redis down or failing: the parent backs off and retries
            log.warning("background checkpoint failed (%s)", exc)
            code = _NOT_SAVED
        os.write(timings, _TIMINGS.pack(snapshots_s, snapshots_s + time.perf_counter() - write_began))
        return code

    def _snapshot_in_child(self, take: Callable[[], _T]) -> tuple[_T, float]:
        """In a child: ``take()`` the snapshots, and the time that decides whether the next checkpoint is worth a
        child.

        The first pass also copies from the parent every page it writes to (reference counts included): a cost of
        the fork, 2-4 times a small model's snapshot, which kept small models in children. When that pass was under
        ``SECOND_PASS_BELOW`` times ``background_min_ms``, a second pass on the copied pages times the snapshot
        itself; it is reported when it is under ``CLEARLY_CHEAP`` of ``background_min_ms`` (the loop's own timings
        ran 1.1 to 5 times a second pass's, the larger ratios for snapshots under a millisecond), else the first pass
        is, as before."""
        threshold_s = self._settings.background_min_ms / 1000.0
        began = time.perf_counter()
        states = take()
        first_s = time.perf_counter() - began
        if first_s >= SECOND_PASS_BELOW * threshold_s:
            return states, first_s
        began = time.perf_counter()
        states = take()
        second_s = time.perf_counter() - began
        return states, second_s if second_s < CLEARLY_CHEAP * threshold_s else first_s

    def _fork_held_sync(
        self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None, model_set: ModelSet,
        outcome: SyncOutcome,
    ) -> None:
        """Group scope: a child snapshots the state as it is now (the sync just merged) and writes it with the
        sync's deltas once told (:meth:`write_held`), while the loop goes on; dropped when told so."""
        started = self._held_started

        def work(go: int | None, timings: int) -> int:
            return self._write_held_in_child(offsets, extra, model_set, outcome, go, timings)

        if not self._start_child(started, work, sync=outcome):  # hold it in the loop
            self._held = self._group_checkpoints(offsets, extra, model_set, outcome)
            self._held_sync = outcome
            self._held_snapshot_s = self.last_snapshot_s = self._monotonic() - started

    def _write_held_in_child(
        self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None, model_set: ModelSet,
        outcome: SyncOutcome, go: int | None, timings: int,
    ) -> int:
        """The child's work for a held sync: snapshot now, wait to be told, then write the checkpoint and publish
        the deltas in one transaction (or exit without writing); the time spent waiting is not reported."""
        states, snapshots_s = self._snapshot_in_child(
            lambda: self._group_checkpoints(offsets, extra, model_set, outcome))
        if go is None or os.read(go, 1) != _WRITE:  # told to drop, or the parent closed the pipe
            os.write(timings, _TIMINGS.pack(snapshots_s, snapshots_s))
            return _DROPPED
        write_began = time.perf_counter()
        code = _SAVED
        try:
            self._store.save(states, also=outcome.publish)
        except Exception as exc:
            log.warning("background checkpoint failed (%s)", exc)
            code = _NOT_SAVED
        os.write(timings, _TIMINGS.pack(snapshots_s, snapshots_s + time.perf_counter() - write_began))
        return code

    def _tell_held_child(self, what: bytes) -> bool:
        """Tell the child holding a sync to write it or drop it; ``False`` when no child is waiting to be told."""
        with self._child_lock:
            child = self._child
            if child is None or child.go is None:
                return False
            with contextlib.suppress(OSError):  # the child is gone: its outcome is collected as a crash
                os.write(child.go, what)
            os.close(child.go)
            child.go = None
            return True

    def poll(self) -> None:
        """Collect the outcome of a finished background checkpoint, if any (never waits; the loop calls it every
        turn, so the metrics and readiness follow the child even when no commit comes after it)."""
        if self._child is not None:
            self._reap(wait=False)

    def join(self) -> None:
        """Wait for the background checkpoint in flight, if any, and collect its outcome. A held sync nobody
        told to write is dropped first (its deltas go with the next sync): waiting for it could never end."""
        if self._tell_held_child(_DROP):
            log.debug("a held sync was dropped before its outputs were known to be durable")
        self._reap(wait=True)

    def _reap(self, *, wait: bool) -> None:
        with self._child_lock:
            child = self._child
            if child is None:
                return
            try:
                pid, status = os.waitpid(child.pid, 0 if wait else os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler): its outcome is unknown
                pid, status = child.pid, -1
            if pid == 0:
                return
            self._child = None
            try:
                report = os.read(child.timings, _TIMINGS.size)
            finally:
                os.close(child.timings)
        code = os.waitstatus_to_exitcode(status) if status != -1 else _CRASHED
        if child.go is not None:  # exited before it was told (it crashed): nothing to tell any more
            os.close(child.go)
        if child.sync is not None and self.group is not None:
            if code == _SAVED:
                self.group.published(child.sync)
            else:  # its deltas stay queued for the next sync
                self.group.failed()
        if len(report) == _TIMINGS.size:
            snapshots_s, total_s = _TIMINGS.unpack(report)
            self.last_snapshot_s = snapshots_s
            # as in the loop: a failed Redis write (mostly waiting, spaced by the backoff) does not count
            duration = total_s if code == _SAVED else snapshots_s
        else:  # the child died before it could say: count it from the fork to now
            duration = max(0.0, self._monotonic() - child.started)
        self.last_duration_s = duration
        self._measured_at = child.events_total
        self._not_before = child.started + duration / self._settings.max_time_fraction
        if code == _SAVED:
            self._stored(child.events)
            return
        if code == _DROPPED:
            return
        self._failed(redis_down=code == _NOT_SAVED)  # _NOT_SAVED: the child could not write to Redis (it logged why)
        if code != _NOT_SAVED:
            log.error("background checkpoint process %d ended with %s; retrying in %.0f s", child.pid,
                      f"exit code {code}" if code >= 0 else f"signal {-code}", self._backoff_s)

    def _states(
        self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None,
    ) -> dict[TP, PartitionCheckpoint]:
        """The checkpoints of ``offsets``' partitions: the models' snapshots as they are now."""
        states: dict[TP, PartitionCheckpoint] = {}
        for tp, offset in offsets.items():
            model_set = self._models.sets.get(tp)
            if model_set is None:
                continue
            states[tp] = PartitionCheckpoint(
                models={name: (learner.kind, learner.snapshot()) for name, learner in model_set.learners.items()},
                next_offset=offset,
                extra={**(extra or {}).get(tp, {}), "learned": dict(model_set.learned)},
            )
        return states

    def _save(self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None) -> bool:
        if self.group is not None:
            return self._save_group(offsets, extra)
        states = self._states(offsets, extra)
        if not states:
            return True
        self._store_started = self._monotonic()
        try:
            self._store.save(states)
        except Exception as exc:  # Redis down or failing: keep serving, retry with backoff
            self._failed(redis_down=True)
            log.warning("checkpoint failed (%s); retrying in %.0f s", exc, self._backoff_s)
            return False
        self._stored(self._events_since)
        return True

    def _save_group(self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None) -> bool:
        """Group scope: sync, then store the one model set under every partition it reflects, each with its own
        offset and all of their offsets, and publish the sync's deltas in the same transaction."""
        assert self.group is not None
        synced = self._group_states(offsets, extra)
        if synced is None:
            return False
        states, outcome = synced
        if not states:
            return True
        self._store_started = self._monotonic()
        try:
            self._store.save(states, also=outcome.publish)
        except Exception as exc:
            self.group.failed()
            self._failed(redis_down=True)
            log.warning("checkpoint failed (%s); retrying in %.0f s", exc, self._backoff_s)
            return False
        self.group.published(outcome)
        self._stored(self._events_since)
        return True

    def _group_states(
        self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None,
    ) -> tuple[dict[TP, PartitionCheckpoint], Any] | None:
        """Group scope: sync, and the checkpoints of ``offsets``' partitions with the sync's outcome (its
        ``publish`` goes in the checkpoint's transaction); ``None`` when Redis failed (backed off)."""
        assert self.group is not None
        model_set = self._models.shared_set()
        if model_set is None or not offsets:
            return {}, None
        outcome = self._sync(model_set)
        if outcome is None:
            return None
        return self._group_checkpoints(offsets, extra, model_set, outcome), outcome

    def _sync(self, model_set: ModelSet) -> SyncOutcome | None:
        """Group scope: the sync (merges the others' deltas, prepares this member's); ``None`` when Redis failed."""
        assert self.group is not None
        try:
            return self.group.sync(model_set)
        except Exception as exc:  # Redis down while reading the others' deltas: nothing merged or published
            self._failed(redis_down=True)
            log.warning("sync failed (%s); retrying in %.0f s", exc, self._backoff_s)
            return None

    def _group_checkpoints(
        self, offsets: dict[TP, int], extra: Mapping[TP, dict[str, Any]] | None, model_set: ModelSet,
        outcome: SyncOutcome,
    ) -> dict[TP, PartitionCheckpoint]:
        """The one state under every partition of ``offsets``, each with its offset, recording ``outcome``."""
        models = {name: (learner.kind, learner.snapshot()) for name, learner in model_set.learners.items()}
        reflected = {f"{topic}:{partition}": offset for (topic, partition), offset in offsets.items()}
        shared = {"learned": dict(model_set.learned), "sources": dict(model_set.sources),
                  "sync": outcome.record.to_json(), "offsets": reflected}
        return {
            tp: PartitionCheckpoint(models=models, next_offset=offset, extra={**(extra or {}).get(tp, {}), **shared})
            for tp, offset in offsets.items()
        }

    def _stored(self, events: int) -> None:
        """A checkpoint holding ``events`` of the events accounted so far reached Redis."""
        self._metrics.checkpoints.labels("ok").inc()
        self._metrics.redis_up.set(1)
        self._backoff_s = 0.0
        self._events_since = max(0, self._events_since - events)
        self._last_success = time.time()
        self.healthy = True

    def _failed(self, *, redis_down: bool) -> None:
        """A checkpoint did not reach Redis: count it and back off (``redis_down``: Redis refused or failed it)."""
        self._metrics.checkpoints.labels("failed").inc()
        self._backoff_s = min(max(1.0, self._backoff_s * 2), self._settings.max_backoff_s)
        if redis_down:
            self._metrics.redis_up.set(0)
            self.healthy = False

    def probe(self) -> bool:
        """Ping Redis and export the answer (``streamlearn_redis_up``, :attr:`healthy`); used at start-up."""
        up = self._store.ping()
        self._metrics.redis_up.set(1 if up else 0)
        self.healthy = up
        if not up:
            log.warning("Redis does not answer; predictions go on, checkpoints will be retried")
        return up

    def _redis_answered(self) -> None:
        self._metrics.redis_up.set(1)
        self.healthy = True

    def export_age(self) -> None:
        """Refresh the checkpoint-age gauge."""
        if self._last_success is not None:
            self._metrics.checkpoint_age.set(time.time() - self._last_success)

    def _load(self, tp: TP) -> PartitionCheckpoint | None:
        """One partition's checkpoint; ``None`` when there is none or it was refused (counted)."""
        try:
            checkpoint = self._store.load(*tp)
        except redis.RedisError:
            self._metrics.redis_up.set(0)
            self.healthy = False
            raise
        except SnapshotRejected as exc:
            self._redis_answered()
            self._metrics.snapshots_rejected.labels(exc.reason).inc()
            log.error("checkpoint of %s refused (%s): %s; applying on_state_lost=%s",
                      tp, exc.reason, exc, self._settings.on_state_lost)
            return None
        self._redis_answered()
        return checkpoint

    def restore_group(self, committed: Mapping[TP, int | None]) -> dict[TP, Restored]:
        """Group scope: one model set for all of ``committed``'s partitions, and where each resumes.

        Among their checkpoints, the state with the furthest sync cursor is restored and merges the deltas
        published since (:meth:`GroupSync.adopt`); each partition resumes from its own checkpoint's offset, whose
        examples that state holds (docs/architecture.md, "One model per group").
        """
        assert self.group is not None
        self.join()
        checkpoints = {tp: self._load(tp) for tp in committed}
        records: dict[TP, SyncRecord] = {}
        for tp, checkpoint in checkpoints.items():
            if checkpoint is not None:
                sync = checkpoint.extra.get("sync")
                records[tp] = SyncRecord.from_json(sync) if isinstance(sync, dict) else SyncRecord(f"partition-{tp}")
        model_set: ModelSet | None = None
        record: SyncRecord | None = None
        if records:
            chosen = choose_state(records)
            checkpoint = checkpoints[chosen]
            assert checkpoint is not None
            learners = {name: restore_learner(kind, data) for name, (kind, data) in checkpoint.models.items()}
            if set(learners) == set(self._models.model_names):
                model_set = ModelSet(learners, dict(checkpoint.extra.get("learned", {})),
                                     {str(k): int(v) for k, v in (checkpoint.extra.get("sources") or {}).items()})
                record = records[chosen]
                log.info("group state restored from the checkpoint of %s (lineage %s, cursor %s)",
                         chosen, record.lineage, record.cursor)
            else:
                log.error("checkpoint of %s holds models %s but the settings declare %s: starting fresh models",
                          chosen, sorted(learners), sorted(self._models.model_names))
                checkpoints = {tp: None for tp in checkpoints}
        if model_set is None:
            model_set = self._models.fresh_set()
        rebuilt = self._settings.on_state_lost == "rebuild" and any(
            checkpoints[tp] is None and tp_committed is not None for tp, tp_committed in committed.items())
        if rebuilt:
            log.error("group state: a partition is learned again from its earliest offset; the deltas the group "
                      "published so far are not merged (they may hold that partition's earlier learning)")
        merged = self.group.adopt(model_set, record, skip_history=rebuilt)
        if merged:
            log.info("merged %d deltas the group published since that state", merged)
        restored: dict[TP, Restored] = {}
        for tp, tp_committed in committed.items():
            checkpoint = checkpoints[tp]
            if checkpoint is not None:
                replay_until = tp_committed if tp_committed is not None else checkpoint.next_offset
                log.info("restored %s at offset %d (committed %s)", tp, checkpoint.next_offset, tp_committed)
                restored[tp] = Restored(model_set, checkpoint.next_offset,
                                        max(replay_until, checkpoint.next_offset), dict(checkpoint.extra))
            elif tp_committed is None:
                restored[tp] = Restored(model_set, None, 0)
            else:
                self._metrics.state_lost.inc()
                if self._settings.on_state_lost == "rebuild":
                    log.error("no usable checkpoint for %s although Kafka committed offset %d: learning it again "
                              "from the earliest retained offset (nothing republished)", tp, tp_committed)
                    restored[tp] = Restored(model_set, -1, tp_committed)
                else:
                    log.error("no usable checkpoint for %s although Kafka committed offset %d: resuming from the "
                              "committed offset (on_state_lost=fresh)", tp, tp_committed)
                    restored[tp] = Restored(model_set, None, tp_committed)
        return restored

    def restore(self, tp: TP, committed: int | None) -> Restored:
        """The model set for a newly assigned partition, and where to resume reading it."""
        self.join()  # a checkpoint still being written is read back complete
        checkpoint = self._load(tp)
        if checkpoint is not None:
            learners = {
                name: restore_learner(kind, data) for name, (kind, data) in checkpoint.models.items()
            }
            expected = set(self._models.model_names)
            if set(learners) == expected:
                model_set = ModelSet(learners, dict(checkpoint.extra.get("learned", {})))
                replay_until = committed if committed is not None else checkpoint.next_offset
                log.info("restored %s at offset %d (committed %s)", tp, checkpoint.next_offset, committed)
                return Restored(model_set, checkpoint.next_offset, max(replay_until, checkpoint.next_offset),
                                dict(checkpoint.extra))
            log.error("checkpoint of %s holds models %s but the settings declare %s: starting fresh models",
                      tp, sorted(learners), sorted(expected))
        if committed is None:
            return Restored(self._models.fresh_set(), None, 0)
        self._metrics.state_lost.inc()
        if self._settings.on_state_lost == "rebuild":
            log.error("no usable checkpoint for %s although Kafka committed offset %d: rebuilding the models "
                      "from the earliest retained offset (learning only, nothing republished)", tp, committed)
            return Restored(self._models.fresh_set(), -1, committed)
        log.error("no usable checkpoint for %s although Kafka committed offset %d: starting fresh models "
                  "from the committed offset (on_state_lost=fresh)", tp, committed)
        return Restored(self._models.fresh_set(), None, committed)


def _die_with(parent: int) -> None:
    """In a forked child: be killed when the parent dies (Linux), and exit at once if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(_CRASHED)
