"""In group scope a due sync makes the loop commit (``Worker._maybe_commit``): a sync is a checkpoint, taken at a
commit, so without it the syncs would follow ``worker.commit_interval_s`` instead of ``sync.every_events``."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from services.worker.worker import Worker
from shared.settings import WorkerSettings


def _worker(*, group: bool, sync_due: bool) -> tuple[Worker, list[bool]]:
    commits: list[bool] = []
    worker = Worker.__new__(Worker)
    worker.settings = SimpleNamespace(worker=WorkerSettings(commit_interval_s=60.0))  # type: ignore[assignment]
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


@pytest.mark.parametrize(("group", "sync_due", "commits"), [
    (True, True, [False]),  # a sync is due: commit now (without waiting), the commit takes the sync
    (True, False, []),  # nothing due: the commit cadence (60 s) rules
    (False, True, []),  # partition scope: checkpoints follow the commits, never the other way round
])
def test_a_due_sync_makes_the_commit_due_in_group_scope(group: bool, sync_due: bool, commits: list[Any]) -> None:
    worker, made = _worker(group=group, sync_due=sync_due)
    worker._maybe_commit()
    assert made == commits
