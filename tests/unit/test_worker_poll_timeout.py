"""How long the worker's poll may wait (``Worker._poll_timeout_ms``): exactly-once, a poll waiting for more
records must not hold back the commit of the transaction already open, whose outputs are read only once it
commits. At-least-once the outputs go out with the producer (the offsets' commit does not gate them)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.worker.worker import COMMIT_CHUNK_MIN_S, COMMIT_POLL_MS, Worker
from shared.settings import KafkaSettings, WorkerSettings


def _worker(*, exactly_once: bool, pending: bool, last_commit: float, deferred: int = 0) -> Worker:
    worker = Worker.__new__(Worker)
    worker.settings = SimpleNamespace(  # type: ignore[assignment]
        kafka=KafkaSettings(exactly_once=exactly_once, poll_timeout_ms=100),
        worker=WorkerSettings(commit_interval_s=0.1),
    )
    worker.backpressure = SimpleNamespace(ready=lambda: False, wait_left_s=lambda: None)  # type: ignore[assignment]
    worker.committer = SimpleNamespace(deferred=deferred)  # type: ignore[assignment]
    worker._pending_offsets = {("events", 0): 42} if pending else {}
    worker._last_commit = last_commit
    return worker


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> float:
    fixed = 1_000.0
    monkeypatch.setattr("services.worker.worker.time.monotonic", lambda: fixed)
    return fixed


def test_an_open_transaction_bounds_the_poll_by_the_time_left_to_its_commit(now: float) -> None:
    assert _worker(exactly_once=True, pending=True, last_commit=now - 0.07)._poll_timeout_ms() == 30
    assert _worker(exactly_once=True, pending=True, last_commit=now - 0.0995)._poll_timeout_ms() == 1
    assert _worker(exactly_once=True, pending=True, last_commit=now - 0.25)._poll_timeout_ms() == 0, "due: no wait"


def test_outputs_waiting_for_a_commit_in_flight_keep_the_short_poll(now: float) -> None:
    worker = _worker(exactly_once=True, pending=True, last_commit=now - 0.01, deferred=3)
    assert worker._poll_timeout_ms() == COMMIT_POLL_MS


@pytest.mark.parametrize(("exactly_once", "pending"), [(True, False), (False, True), (False, False)])
def test_nothing_to_commit_or_at_least_once_polls_the_configured_timeout(
        now: float, exactly_once: bool, pending: bool) -> None:
    worker = _worker(exactly_once=exactly_once, pending=pending, last_commit=now - 0.07)
    assert worker._poll_timeout_ms() == 100


def test_exactly_once_a_chunk_ends_by_the_time_the_commit_is_due(now: float) -> None:
    assert _worker(exactly_once=True, pending=True, last_commit=now - 0.07)._chunk_budget_s() == pytest.approx(0.03)
    assert _worker(exactly_once=True, pending=False, last_commit=now - 0.02)._chunk_budget_s() == pytest.approx(0.08)
    overdue = _worker(exactly_once=True, pending=True, last_commit=now - 0.25)
    assert overdue._chunk_budget_s() == COMMIT_CHUNK_MIN_S, "overdue: a short chunk, then the commit"


def test_at_least_once_chunks_keep_backpressure_s_own_budget(now: float) -> None:
    assert _worker(exactly_once=False, pending=True, last_commit=now - 0.25)._chunk_budget_s() is None
