"""Slow training never keeps the poll loop away from ``poll()``: on real Kafka, a model that needs 20 ms per
event and batches of 500 events (10 s of training each, as long as ``max.poll.interval.ms``) are processed in
chunks of about a second, with the partition paused meanwhile; every event is predicted once, in order."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.replayer import replay
from services.worker import Worker
from shared.kafka.admin import ensure_topics
from shared.learners.base import Learner, Output, Row, Target
from shared.learners.registry import build_learner
from shared.settings import ModelSettings
from shared.steps.batch import Batch
from tests.integration.helpers import make_settings, read_topic, sample_value, wait_for

pytestmark = pytest.mark.integration

N = 400
SECONDS_PER_LEARN = 0.02
MAX_POLL_INTERVAL_MS = 10_000


def _slow(learner: Learner) -> Learner:
    """The real learner, with each example learned made as slow as a heavy training step (sleeping inside the
    model stands for compute; the poll loop itself never sleeps). The worker learns through ``process`` (predict
    and learn a batch) and ``learn_many`` (delayed labels); both are slowed."""
    process, learn_many = learner.process, learner.learn_many

    def slow_process(rows: Sequence[Row], targets: Sequence[Target | None]) -> list[Output]:
        time.sleep(SECONDS_PER_LEARN * sum(target is not None for target in targets))
        return process(rows, targets)

    def slow_learn_many(rows: Sequence[Row], targets: Sequence[Target | None]) -> None:
        time.sleep(SECONDS_PER_LEARN * sum(target is not None for target in targets))
        learn_many(rows, targets)

    learner.process = slow_process  # type: ignore[method-assign]
    learner.learn_many = slow_learn_many  # type: ignore[method-assign]
    return learner


@pytest.mark.parametrize("order", ["time", "arrival"])
def test_slow_training_is_chunked_with_partitions_paused_and_the_loop_keeps_polling(
    kafka_bootstrap: str, unique_name: Callable[[str], str], order: str
) -> None:
    """``arrival`` pauses the partitions while anything is held; ``time`` pauses a partition while it holds
    ``kafka.max_poll_records`` or more (here 100, so that 400 events reach it)."""
    max_poll_records = 500 if order == "arrival" else 100
    settings = make_settings(
        kafka_bootstrap, unique_name,
        models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}],
        kafka={"max_poll_records": max_poll_records, "max_poll_interval_ms": MAX_POLL_INTERVAL_MS},
        worker={"partition_order": order},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    replay("phishing", bootstrap_servers=kafka_bootstrap, topic=t.events, limit=N, seed=3, progress=False)

    def factory(model: ModelSettings) -> Learner:
        return _slow(build_learner(model, settings.preprocessing, settings.worker.seed))

    registry = CollectorRegistry()
    worker = Worker(settings, registry=registry, learner_factory=factory)
    worker.start()
    consumer = worker.consumer
    assert consumer is not None
    poll_times: list[float] = []
    pauses: list[Sequence[Any]] = []
    resumes: list[Sequence[Any]] = []
    real_poll, real_pause, real_resume = consumer.poll, consumer.pause, consumer.resume

    def timed_poll(*args: Any, **kwargs: Any) -> Any:
        poll_times.append(time.monotonic())
        return real_poll(*args, **kwargs)

    def recorded_pause(tps: Sequence[tuple[str, int]]) -> None:
        pauses.append(tps)
        real_pause(tps)

    def recorded_resume(tps: Sequence[tuple[str, int]]) -> None:
        resumes.append(tps)
        real_resume(tps)

    consumer.poll, consumer.pause, consumer.resume = timed_poll, recorded_pause, recorded_resume  # type: ignore[method-assign]
    held: list[int] = []
    real_submit = worker.backpressure.submit

    def recorded_submit(batch: Batch) -> None:
        real_submit(batch)
        held.append(worker.backpressure.backlog)

    worker.backpressure.submit = recorded_submit  # type: ignore[method-assign]
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run(worker, errors), name="worker", daemon=True)
    thread.start()
    try:
        wait_for(lambda: sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == N,
                 60, f"{N} valid events")
    finally:
        worker.stop()
        thread.join(timeout=60)
    assert not errors, errors
    assert not thread.is_alive()

    busy = [b - a for a, b in itertools.pairwise(poll_times)]
    print(f"backpressure: {len(poll_times)} polls, longest gap {max(busy):.2f} s, "
          f"{len(pauses)} pauses (the restore pause included), {len(resumes)} resumes; "
          f"unchunked a batch would take {max_poll_records * SECONDS_PER_LEARN:.0f} s")
    assert max(busy) < 2.5, "a chunk is bounded by the 1 s budget (plus one record and the poll itself)"
    data_pauses = [p for p in pauses if any(tp[0] == t.events for tp in p)]
    assert len(data_pauses) >= 2, "the restore pause and at least one backpressure pause"
    assert len(resumes) >= 2 and worker.backpressure.paused == 0, "resumed once the backlog was processed"
    assert sample_value(registry, "streamlearn_paused_partitions") == 0
    assert 0 < max(held) <= 2 * max_poll_records, "paused before a second poll's worth more is held"

    records = read_topic(kafka_bootstrap, t.predictions, N)
    ids = [orjson.loads(r.value)["id"] for r in records]
    assert ids == [f"phishing-3-{i:09d}" for i in range(N)], "every event predicted once, in order"


def _run(worker: Worker, errors: list[BaseException]) -> None:
    try:
        worker.run()
    except BaseException as exc:  # surfaced in the test thread
        errors.append(exc)
