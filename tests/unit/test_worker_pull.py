"""The loop's pulls in group scope (``Worker._maybe_pull``): every ``sync.pull_every_s``, only with a held state,
never while a restore is pending, Redis is down or the worker holds every partition, and a Redis error is logged,
not raised. The pull itself runs against the real Redis in tests/integration/test_group_replay.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis

from services.worker.worker import Worker
from shared.settings import SyncSettings


class _Group:
    def __init__(self, error: Exception | None = None, *, alone: bool = False) -> None:
        self.calls: list[Any] = []
        self.error = error
        self.alone = alone

    def pull(self, model_set: Any) -> int:
        self.calls.append(model_set)
        if self.error is not None:
            raise self.error
        return 1


def _worker(group: _Group, *, every_s: float = 0.1, held: object | None = "state", healthy: bool = True) -> Worker:
    worker = Worker.__new__(Worker)
    worker.settings = SimpleNamespace(sync=SyncSettings(pull_every_s=every_s))  # type: ignore[assignment]
    worker.checkpointer = SimpleNamespace(group=group, healthy=healthy)  # type: ignore[assignment]
    worker.model_step = SimpleNamespace(shared_set=lambda: held)  # type: ignore[assignment]
    worker._to_restore = []
    worker._last_pull = 0.0
    return worker


def test_a_pull_runs_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("services.worker.worker.time.monotonic", lambda: clock[0])
    group = _Group()
    worker = _worker(group)
    worker._maybe_pull()
    worker._maybe_pull()
    assert group.calls == ["state"]
    clock[0] += 0.05
    worker._maybe_pull()
    assert len(group.calls) == 1
    clock[0] += 0.06
    worker._maybe_pull()
    assert len(group.calls) == 2


@pytest.mark.parametrize("case", ["off", "no state", "restoring", "redis down", "alone"])
def test_no_pull_without_a_state_to_merge_into_or_a_redis_to_read(case: str) -> None:
    """Nor while the worker holds every partition: no other worker learns (a rebalance restores it first)."""
    group = _Group(alone=case == "alone")
    worker = _worker(group, every_s=0.0 if case == "off" else 0.1, held=None if case == "no state" else "state",
                     healthy=case != "redis down")
    if case == "restoring":
        worker._to_restore = [("events", 0)]
    worker._maybe_pull()
    assert group.calls == []


def test_a_redis_error_in_a_pull_is_logged_and_retried_a_second_later(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr("services.worker.worker.time.monotonic", lambda: clock[0])
    group = _Group(redis.ConnectionError("refused"))
    worker = _worker(group)
    worker._maybe_pull()
    assert group.calls == ["state"]
    assert "reading the group's deltas failed" in caplog.text
    clock[0] += 0.5
    worker._maybe_pull()
    assert len(group.calls) == 1, "no retry every 0.1 s while Redis is down"
    clock[0] += 1.0
    worker._maybe_pull()
    assert len(group.calls) == 2
