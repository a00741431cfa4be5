"""In group scope and at-least-once a due sync makes the loop commit (``Worker._maybe_commit``): a sync is a
checkpoint, taken at a commit, so without it the syncs would follow ``worker.commit_interval_s`` instead of
``sync.every_events``. With exactly-once a commit ends a transaction: the syncs ride on the transactions."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from services.worker.worker import Worker
from shared.settings import WorkerSettings


def _worker(*, group: bool, sync_due: bool, exactly_once: bool = False) -> tuple[Worker, list[bool]]:
    commits: list[bool] = []
    worker = Worker.__new__(Worker)
    worker.settings = SimpleNamespace(  # type: ignore[assignment]
        worker=WorkerSettings(commit_interval_s=60.0), kafka=SimpleNamespace(exactly_once=exactly_once))
    worker.checkpointer = SimpleNamespace(  # type: ignore[assignment]
        group=object() if group else None, due=lambda: sync_due)
    worker.committer = SimpleNamespace(release=lambda: None)  # type: ignore[assignment]
    worker._events_since_commit = 10
    worker._last_commit = time.monotonic()
    worker._pending_offsets = {("events", 0): 10}

    def commit(*, checkpoint: bool = False, wait: bool = True) -> None:
        commits.append(wait)

    worker.commit = commit  # type: ignore[method-assign]
    return worker, commits


@pytest.mark.parametrize(("group", "sync_due", "exactly_once", "commits"), [
    (True, True, False, [False]),  # a sync is due: commit now (without waiting), the commit takes the sync
    (True, False, False, []),  # nothing due: the commit cadence (60 s) rules
    (False, True, False, []),  # partition scope: checkpoints follow the commits, never the other way round
    (True, True, True, []),  # exactly-once: no transaction ended early for a sync
])
def test_a_due_sync_makes_the_commit_due_in_group_scope_at_least_once(
    group: bool, sync_due: bool, exactly_once: bool, commits: list[Any],
) -> None:
    worker, made = _worker(group=group, sync_due=sync_due, exactly_once=exactly_once)
    worker._maybe_commit()
    assert made == commits
