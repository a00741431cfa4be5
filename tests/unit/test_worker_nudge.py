"""When the worker sends a batch's outputs at once instead of after ``kafka.linger_ms`` (``Worker._maybe_nudge``):
only for a small batch at the head of its partitions, with nothing held and nothing ready to process. That the
producers' nudge really sends early: tests/integration/test_producer_nudge.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from services.worker.worker import NUDGE_MAX_RECORDS, Worker
from shared.monitoring.metrics import Metrics
from shared.settings import KafkaSettings
from shared.steps.batch import Batch, Record


class NudgeCounter:
    def __init__(self) -> None:
        self.nudges = 0

    def nudge(self) -> bool:
        self.nudges += 1
        return True


def _worker(lags: dict[tuple[str, int], int | None], *, held: int = 0, ready: bool = False,
            linger_ms: float = 1) -> tuple[Worker, NudgeCounter]:
    worker = Worker.__new__(Worker)
    worker.settings = SimpleNamespace(kafka=KafkaSettings(linger_ms=linger_ms))  # type: ignore[assignment]
    worker.consumer = SimpleNamespace(lag=lambda tp: lags.get(tp))
    worker.backpressure = SimpleNamespace(backlog=held, ready=lambda: ready)  # type: ignore[assignment]
    counter = NudgeCounter()
    worker.committer = counter  # type: ignore[assignment]
    worker.metrics = Metrics(CollectorRegistry())
    worker._nudge_due = False
    worker._last_batch_done = 0.0
    return worker, counter


def _batch(partition: int = 0, records: int = 1) -> Batch:
    return Batch([Record("events", partition, o, None, b"{}", 0) for o in range(records)], 0.0)


@pytest.mark.parametrize(("lags", "held", "head"), [
    ({("events", 0): 0}, 0, True),
    ({("events", 0): 1}, 0, False),  # the broker had more by the last fetch
    ({("events", 0): None}, 0, False),  # lag not known yet
    ({("events", 0): 0}, 3, False),  # records held by backpressure
])
def test_the_head_means_nothing_held_and_nothing_more_on_the_broker(
        lags: dict[tuple[str, int], int | None], held: int, head: bool) -> None:
    worker, _ = _worker(lags, held=held)
    assert worker._small_at_head(_batch()) is head


def test_every_partition_of_the_batch_must_be_at_its_head() -> None:
    worker, _ = _worker({("events", 0): 0, ("events", 1): 4})
    batch = Batch(_batch(0).records + _batch(1).records, 0.0)
    assert worker._small_at_head(batch) is False


@pytest.mark.parametrize(("records", "small"), [(0, False), (1, True), (NUDGE_MAX_RECORDS, True),
                                                (NUDGE_MAX_RECORDS + 1, False), (500, False)])
def test_only_small_batches_are_nudged(records: int, small: bool) -> None:
    worker, _ = _worker({("events", 0): 0})
    assert worker._small_at_head(_batch(records=records)) is small


def test_only_batches_the_loop_waited_the_linger_for_are_nudged() -> None:
    worker, _ = _worker({("events", 0): 0}, linger_ms=1)
    worker._last_batch_done = 100.0  # when the previous batch was through the steps
    assert worker._nudge_wanted(_batch(), 100.0005) is False  # came sooner: it shares the linger's batch
    assert worker._nudge_wanted(_batch(), 100.0012) is True
    assert worker._nudge_wanted(_batch(records=NUDGE_MAX_RECORDS + 1), 100.01) is False


def test_a_due_nudge_is_sent_once() -> None:
    worker, counter = _worker({("events", 0): 0})
    worker._nudge_due = True
    worker._maybe_nudge()
    worker._maybe_nudge()
    assert counter.nudges == 1
    assert worker.metrics.registry.get_sample_value("streamlearn_producer_nudges_total") == 1


@pytest.mark.parametrize(("ready", "linger_ms"), [(True, 1), (False, 0)])
def test_no_nudge_when_records_are_ready_or_nothing_lingers(ready: bool, linger_ms: float) -> None:
    worker, counter = _worker({("events", 0): 0}, ready=ready, linger_ms=linger_ms)
    worker._nudge_due = True
    worker._maybe_nudge()
    assert counter.nudges == 0
    assert worker._nudge_due is False

