"""When the worker runs a batch's model-and-after steps in parts (``Worker._far_behind``): only near the head of
its partitions. A worker catching up on a backlog runs each batch whole (throughput counts there, and its records
wait for the backlog anyway). ``Parts`` itself: tests/unit/test_backpressure.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.worker.worker import PARTS_MAX_LAG, Worker
from shared.settings import KafkaSettings
from shared.steps.batch import Batch, Record


def _worker(lags: dict[tuple[str, int], int | None], held: int = 0) -> Worker:
    worker = Worker.__new__(Worker)
    worker.settings = SimpleNamespace(kafka=KafkaSettings(max_poll_records=500))  # type: ignore[assignment]
    worker.consumer = SimpleNamespace(lag=lambda tp: lags.get(tp))
    worker.backpressure = SimpleNamespace(backlog=held)  # type: ignore[assignment]
    return worker


def _batch(*partitions: int) -> Batch:
    return Batch([Record("events", p, o, None, b"{}", 0) for p in partitions for o in range(3)], 0.0)


@pytest.mark.parametrize(("lags", "held", "far"), [
    ({("events", 0): 0}, 0, False),  # at the head: the backlog of a stall, run in parts
    ({("events", 0): None}, 0, False),  # lag not known yet
    ({("events", 0): PARTS_MAX_LAG * 500}, 0, False),
    ({("events", 0): PARTS_MAX_LAG * 500 + 1}, 0, True),  # catching up
    ({("events", 0): 600, ("events", 1): 500}, 0, True),  # summed over the batch's partitions
    ({("events", 0): 600}, 500, True),  # and the records held by backpressure
])
def test_a_batch_runs_whole_only_while_far_behind(lags: dict[tuple[str, int], int | None], held: int,
                                                  far: bool) -> None:
    assert _worker(lags, held)._far_behind(_batch(*{p for _, p in lags})) is far


def test_a_worker_without_a_consumer_is_not_behind() -> None:
    worker = _worker({})
    worker.consumer = None
    assert worker._far_behind(_batch(0)) is False
