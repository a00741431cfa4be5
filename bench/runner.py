"""One contender of the benchmark in its own process: ``python -m bench.runner <contender> ...``.

Contenders:

* ``bare``: the model alone over the event dicts, no Kafka (River ``predict_one`` then ``learn_one``; the
  torch learner's own mini-batch loop, ``process``, in chunks of ``max_poll_records``);
* ``plain``: the loop a user writes from the kafka-python and River tutorials (iterate a ``KafkaConsumer``,
  ``json.loads``, ``predict_one``, ``learn_one``, ``producer.send(json.dumps(...))``, flush then commit);
* ``transport``: kafka-python alone (batch polls, orjson, a send per record, no model): its per-event cost;
* ``relay``: the latency floor: consume, produce to a second topic, flush and commit once a second; no model,
  each client tuned for latency (``--client``); exactly-once with ``--commit-interval`` (and no
  ``--at-least-once``): the same in a transaction committed with the offsets every that many seconds;
* ``group-relay``: the scale floor: the worker's own Kafka transport in a consumer group, no steps: each record
  produced as it came (after ``--burn-us`` of CPU), flush and commit once a second and at the end; it shares the
  worker's handshake (``--ready-file``, ``--go-file``) and reports like it;
* ``worker``: streamlearn's :class:`~services.worker.Worker` with its settings (validation, metrics,
  checkpoints to Redis, exactly-once unless ``--at-least-once``).

Each writes a :class:`~bench.common.RunResult` JSON to ``--result`` once its events are processed and their
outputs durable: the wall-clock window from the first event received to then, and the CPU seconds of the
process (all threads) in that window. The parent reads peak RSS and total CPU from ``os.wait4``.

Coordination with the parent is by files: ``--ready-file`` (written once partitions are assigned),
``--go-file`` (the worker keeps its partitions paused until it exists) and ``--stop-file`` (drain and exit).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    MODELS,
    RunResult,
    cpu_seconds,
    model_settings,
    samples,
    thread_cpu_delta,
    thread_cpu_seconds,
    worker_settings,
)
from shared.settings import PreprocessingSettings, WorkerSettings

#: the worker's default poll size, used as the torch bare loop's chunk
CHUNK = 500
#: polls this short while a group waits for "go": its members then start within a few ms of each other (a group's
#: window runs from its first member's first event to its last member's last, so a late start counts against it)
GO_POLL_MS = 5


def _river_or_torch(model: str) -> tuple[str, Any]:
    """``("river", pipeline)`` or ``("torch", learner)``: the same model the worker builds."""
    spec = MODELS[model]
    seed = WorkerSettings().seed
    if spec.get("kind", "river") == "river":
        from shared.learners.registry import build_river_pipeline

        return "river", build_river_pipeline(spec["estimator"], spec.get("params", {}), PreprocessingSettings(), seed)
    from shared.learners.registry import build_learner

    return "torch", build_learner(model_settings(model), PreprocessingSettings(), seed)


def bare_loop(family: str, model: Any, data: list[tuple[dict[str, Any], Any]]) -> None:
    """Predict then learn every ``(features, label)`` of ``data``: River one by one, torch in chunks of ``CHUNK``."""
    from shared.learners.base import Row

    if family == "river":
        for x, y in data:
            model.predict_one(x)
            model.learn_one(x, y)
        return
    for i in range(0, len(data), CHUNK):
        chunk = data[i:i + CHUNK]
        model.process([Row(x) for x, _ in chunk], [y for _, y in chunk])


def run_bare(args: argparse.Namespace) -> None:
    """(a) The model's own loop over the event dicts."""
    family, model = _river_or_torch(args.model)
    data = [(s.features, s.label) for s in samples(args.n)]
    result = RunResult("bare", args.model, events=len(data))
    cpu0 = cpu_seconds()
    result.started = time.time()
    bare_loop(family, model, data)
    result.finished = time.time()
    result.cpu_s = cpu_seconds() - cpu0
    result.extra.update(_state_costs(args.model, family, model))
    result.write(args.result)


def _state_costs(name: str, family: str, model: Any) -> dict[str, float]:
    """After the bare run: what a checkpoint snapshot and the model-memory gauge cost the worker for this model."""
    from shared.learners.registry import build_learner

    if family == "river":
        learner = build_learner(model_settings(name), PreprocessingSettings(), WorkerSettings().seed)
        learner.pipeline = model  # type: ignore[attr-defined]  # the trained pipeline, as the worker holds it
    else:
        learner = model
    started = time.perf_counter()
    snapshot = learner.snapshot()
    snapshot_ms = 1000 * (time.perf_counter() - started)
    started = time.perf_counter()
    learner.memory_bytes()
    memory_ms = 1000 * (time.perf_counter() - started)
    return {"snapshot_ms": round(snapshot_ms, 2), "snapshot_kib": round(len(snapshot) / 1024, 1),
            "memory_bytes_ms": round(memory_ms, 2)}


def run_plain(args: argparse.Namespace) -> None:
    """(b) A plain kafka-python + River loop, as the tutorials write it (at-least-once)."""
    from kafka import KafkaConsumer, KafkaProducer

    from shared.learners.base import Row

    family, model = _river_or_torch(args.model)
    consumer = KafkaConsumer(
        args.topic, bootstrap_servers=args.bootstrap, group_id=args.group, enable_auto_commit=False,
        auto_offset_reset="earliest", consumer_timeout_ms=200,
    )
    producer = KafkaProducer(bootstrap_servers=args.bootstrap)
    consumer.partitions_for_topic(args.topic)  # metadata before the group join (see BenchWorker.start)
    stop = _stop_flag(args.stop_file)
    result = RunResult("plain", args.model)
    count = 0
    cpu0 = 0.0
    threads0: dict[str, float] = {}
    last_commit = time.monotonic()
    uncommitted = 0
    reported = False
    while not stop.is_set():
        if args.ready_file and not args.ready_file.exists() and consumer.assignment():
            args.ready_file.touch()
        for message in consumer:
            if count == 0:
                result.started, cpu0, threads0 = time.time(), cpu_seconds(), thread_cpu_seconds()
                if args.ready_file:
                    args.ready_file.touch()
            event = json.loads(message.value)
            x, y = event["features"], event.get("label")
            if family == "river":
                y_pred = model.predict_one(x)
                model.learn_one(x, y)
            else:
                y_pred = model.predict_one(Row(x)).prediction
                model.learn_one(Row(x), y)
            prediction = {"id": event["id"], "prediction": y_pred}
            producer.send(args.predictions, key=message.key, value=json.dumps(prediction).encode("utf-8"))
            count += 1
            uncommitted += 1
            if uncommitted >= 10_000 or time.monotonic() - last_commit >= 1.0:
                producer.flush()
                consumer.commit()
                uncommitted, last_commit = 0, time.monotonic()
            if args.result and args.n and count >= args.n and not reported:
                producer.flush()
                consumer.commit()
                uncommitted = 0
                result.events, result.finished, result.cpu_s = count, time.time(), cpu_seconds() - cpu0
                result.extra["thread_cpu_s"] = thread_cpu_delta(threads0, thread_cpu_seconds())
                result.write(args.result)
                reported = True
            if stop.is_set():
                break
        if uncommitted:
            producer.flush()
            consumer.commit()
            uncommitted, last_commit = 0, time.monotonic()
    consumer.close()
    producer.close()


def run_transport(args: argparse.Namespace) -> None:
    """(t) kafka-python alone, at its best: batch polls, orjson, a send per record, flush then commit; no model.

    What any kafka-python consumer-producer pays per event before it does any work: a ceiling for (b) and (c).
    """
    import orjson
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(
        args.topic, bootstrap_servers=args.bootstrap, group_id=args.group, enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=500, fetch_max_wait_ms=50,
    )
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5, batch_size=256 * 1024)
    consumer.partitions_for_topic(args.topic)
    stop = _stop_flag(args.stop_file)
    result = RunResult("transport", args.model)
    cpu0, threads0, last_commit = 0.0, {}, time.monotonic()
    while not stop.is_set():
        polled = consumer.poll(timeout_ms=100)
        if args.ready_file and not args.ready_file.exists() and consumer.assignment():
            args.ready_file.touch()
        for records in polled.values():
            for message in records:
                if result.events == 0:
                    result.started, cpu0, threads0 = time.time(), cpu_seconds(), thread_cpu_seconds()
                event = orjson.loads(message.value)
                producer.send(args.predictions, key=message.key, value=orjson.dumps({"id": event["id"]}))
                result.events += 1
        done = bool(args.result) and result.events >= args.n > 0 and not result.finished
        if polled and (done or time.monotonic() - last_commit >= 1.0):
            producer.flush()
            consumer.commit()
            last_commit = time.monotonic()
        if done:
            result.finished, result.cpu_s = time.time(), cpu_seconds() - cpu0
            result.extra["thread_cpu_s"] = thread_cpu_delta(threads0, thread_cpu_seconds())
            result.write(args.result)
    consumer.close()
    producer.close()


#: the relay's commit cadence (issue 13: "flush and commit once a second")
RELAY_COMMIT_S = 1.0


def run_relay(args: argparse.Namespace) -> None:
    """(r) The latency floor: a relay with no model, tuned for latency (issue 13). Each record is produced as it
    came to the predictions topic; the producer is flushed and the offsets committed once a second.

    confluent: ``poll`` for the first record, then ``consume(n, 0)`` for what came with it; linger 0.
    kafka-python: ``poll(timeout_ms=50)``, ``fetch_max_wait_ms`` 5; linger 0. Both read ``read_committed`` and
    produce idempotently with ``acks=all``, as the worker does. ``--burn-us`` (a diagnostic of
    ``bench.latency_stages``): before producing a chunk, spin the CPU that many microseconds per record, so the
    relay loads the machine as the worker does, without the worker's code.

    With ``--commit-interval`` and without ``--at-least-once`` the relay is exactly-once: the floor of issue 13.3
    (:func:`_transactional_relay_confluent`).
    """
    stop = _stop_flag(args.stop_file)
    if args.commit_interval is not None and not args.at_least_once:
        if args.client == "confluent":
            _transactional_relay_confluent(args, stop)
        else:
            _transactional_relay_kafka_python(args, stop)
    elif args.client == "confluent":
        _relay_confluent(args, stop)
    else:
        _relay_kafka_python(args, stop)


def _relay_confluent(args: argparse.Namespace, stop: threading.Event) -> None:
    from confluent_kafka import Consumer, Producer

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "isolation.level": "read_committed", "fetch.wait.max.ms": 5,
    })
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 0})

    def assigned(_consumer: Any, partitions: Any) -> None:
        if args.ready_file and partitions:
            args.ready_file.touch()

    consumer.subscribe([args.topic], on_assign=assigned)
    last_commit, uncommitted = time.monotonic(), False
    while not stop.is_set():
        first = consumer.poll(0.05)
        if first is not None:
            messages = [first, *consumer.consume(num_messages=499, timeout=0)]
            burn(args.burn_us * len(messages))
            for message in messages:
                if message.error() is None:
                    producer.produce(args.predictions, message.value(), message.key())
                    uncommitted = True
            producer.poll(0)
        if uncommitted and time.monotonic() - last_commit >= RELAY_COMMIT_S:
            producer.flush()
            consumer.commit(asynchronous=False)
            last_commit, uncommitted = time.monotonic(), False
    producer.flush(10)
    consumer.close()


#: the exactly-once relay's producer linger: the worker's default (``kafka.linger_ms``); a transaction's records are
#: read at its commit, so the linger only sizes the produce requests
TRANSACTIONAL_RELAY_LINGER_MS = 1
#: the exactly-once relay's bound on each transactional call
TRANSACTIONAL_RELAY_TIMEOUT_S = 30.0


def _transactional_relay_confluent(args: argparse.Namespace, stop: threading.Event) -> None:
    """(r) The exactly-once floor: each polled chunk is produced inside the open transaction, and every
    ``--commit-interval`` seconds (from the previous commit's start, as the worker's ``worker.commit_interval_s``)
    the consumed offsets are added and the transaction committed, in the loop. No model, no Redis."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "isolation.level": "read_committed", "fetch.wait.max.ms": 5,
    })
    producer = Producer({"bootstrap.servers": args.bootstrap, "transactional.id": f"{args.group}-relay",
                         "linger.ms": TRANSACTIONAL_RELAY_LINGER_MS})
    producer.init_transactions(TRANSACTIONAL_RELAY_TIMEOUT_S)

    def assigned(_consumer: Any, partitions: Any) -> None:
        if args.ready_file and partitions:
            args.ready_file.touch()

    consumer.subscribe([args.topic], on_assign=assigned)
    interval = args.commit_interval
    offsets: dict[tuple[str, int], int] = {}
    last_commit, in_transaction = time.monotonic(), False
    while not stop.is_set():
        wait = min(0.05, max(0.0, last_commit + interval - time.monotonic())) if in_transaction else 0.05
        first = consumer.poll(wait)
        if first is not None:
            messages = [first, *consumer.consume(num_messages=499, timeout=0)]
            burn(args.burn_us * len(messages))
            for message in messages:
                if message.error() is None:
                    if not in_transaction:
                        producer.begin_transaction()
                        in_transaction = True
                    producer.produce(args.predictions, message.value(), message.key())
                    topic, partition, offset = message.topic(), message.partition(), message.offset()
                    assert topic is not None and partition is not None and offset is not None  # a record has them
                    offsets[(topic, partition)] = offset + 1
            producer.poll(0)
        if in_transaction and time.monotonic() - last_commit >= interval:
            last_commit = time.monotonic()
            partitions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
            producer.send_offsets_to_transaction(partitions, consumer.consumer_group_metadata(),
                                                 TRANSACTIONAL_RELAY_TIMEOUT_S)
            producer.commit_transaction(TRANSACTIONAL_RELAY_TIMEOUT_S)
            in_transaction = False
    if in_transaction:
        producer.abort_transaction(TRANSACTIONAL_RELAY_TIMEOUT_S)
    consumer.close()


def _transactional_relay_kafka_python(args: argparse.Namespace, stop: threading.Event) -> None:
    """The exactly-once floor with kafka-python: as :func:`_transactional_relay_confluent`, polling with
    ``poll(timeout_ms=...)`` bounded by the time left to the next commit."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata, TopicPartition

    consumer = KafkaConsumer(
        args.topic, bootstrap_servers=args.bootstrap, group_id=args.group, enable_auto_commit=False,
        auto_offset_reset="earliest", isolation_level="read_committed", fetch_max_wait_ms=5,
    )
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, transactional_id=f"{args.group}-relay",
                             linger_ms=TRANSACTIONAL_RELAY_LINGER_MS)
    producer.init_transactions()
    consumer.partitions_for_topic(args.topic)  # metadata before the group join (see BenchWorker.start)
    interval = args.commit_interval
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    last_commit, in_transaction = time.monotonic(), False
    while not stop.is_set():
        wait = min(0.05, max(0.0, last_commit + interval - time.monotonic())) if in_transaction else 0.05
        polled = consumer.poll(timeout_ms=math.ceil(wait * 1000), max_records=500)
        if args.ready_file and not args.ready_file.exists() and consumer.assignment():
            args.ready_file.touch()
        for partition, records in polled.items():
            burn(args.burn_us * len(records))
            if records and not in_transaction:
                producer.begin_transaction()
                in_transaction = True
            for message in records:
                producer.send(args.predictions, key=message.key, value=message.value)
            if records:
                offsets[partition] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        if in_transaction and time.monotonic() - last_commit >= interval:
            last_commit = time.monotonic()
            producer.send_offsets_to_transaction(dict(offsets), consumer.group_metadata())
            producer.commit_transaction()
            in_transaction = False
    if in_transaction:
        producer.abort_transaction()
    consumer.close()
    producer.close()


def _relay_kafka_python(args: argparse.Namespace, stop: threading.Event) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(
        args.topic, bootstrap_servers=args.bootstrap, group_id=args.group, enable_auto_commit=False,
        auto_offset_reset="earliest", isolation_level="read_committed", fetch_max_wait_ms=5,
    )
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
    consumer.partitions_for_topic(args.topic)  # metadata before the group join (see BenchWorker.start)
    last_commit, uncommitted = time.monotonic(), False
    while not stop.is_set():
        polled = consumer.poll(timeout_ms=50, max_records=500)
        if args.ready_file and not args.ready_file.exists() and consumer.assignment():
            args.ready_file.touch()
        for records in polled.values():
            burn(args.burn_us * len(records))
            for message in records:
                producer.send(args.predictions, key=message.key, value=message.value)
                uncommitted = True
        if uncommitted and time.monotonic() - last_commit >= RELAY_COMMIT_S:
            producer.flush()
            consumer.commit()
            last_commit, uncommitted = time.monotonic(), False
    producer.flush(10)
    consumer.close()
    producer.close()


def run_group_relay(args: argparse.Namespace) -> None:
    """(g) The scale floor (issue 12): a consumer group of these over the scale scenario's topic shows how far
    this machine scales a group that spends ``--burn-us`` of CPU per record through the worker's own transport,
    without the worker's steps. Keeps its partitions paused until ``--go-file`` exists (as the worker does) and
    reports once it has read them to the end offsets they had then."""
    from kafka import KafkaConsumer

    from shared.kafka.transport import open_consumer, open_producer

    settings = worker_settings(
        bootstrap=args.bootstrap, model=args.model, events_topic=args.topic, predictions_topic=args.predictions,
        group_id=args.group, redis_url=None, exactly_once=False, client=args.client,
    ).kafka
    consumer, producer = open_consumer(settings), open_producer(settings)
    stop = _stop_flag(args.stop_file)
    started = threading.Event()

    class Hold:
        def on_assigned(self, tps: Sequence[tuple[str, int]]) -> None:
            if not started.is_set():
                consumer.pause(tps)

        async def on_revoked(self, tps: Sequence[tuple[str, int]]) -> None:
            return None

        def on_lost(self, tps: Sequence[tuple[str, int]]) -> None:
            return None

    consumer.subscribe([args.topic], Hold())
    raw = getattr(consumer, "raw", None)
    if isinstance(raw, KafkaConsumer):  # metadata before the group join (see BenchWorker.start)
        raw.partitions_for_topic(args.topic)
    result = RunResult("group-relay", args.model)
    ends: dict[tuple[str, int], int] = {}
    positions: dict[tuple[str, int], int] = {}
    cpu0, share, last_commit = 0.0, "", time.monotonic()
    while not stop.is_set():
        records = consumer.poll(timeout_ms=50 if started.is_set() else GO_POLL_MS,
                                max_records=settings.max_poll_records)
        assigned = sorted(consumer.assignment())
        if not started.is_set():
            now_share = json.dumps(sorted(tp[1] for tp in assigned))
            if assigned and now_share != share and args.ready_file is not None:
                args.ready_file.with_suffix(".tmp").write_text(now_share)
                args.ready_file.with_suffix(".tmp").replace(args.ready_file)
                share = now_share
            if assigned and (args.go_file is None or args.go_file.exists()):
                started.set()
                ends = end_offsets(consumer, assigned)
                consumer.resume(assigned)
            continue
        if records:
            if result.events == 0:
                result.started, cpu0 = time.time(), cpu_seconds()
            burn(args.burn_us * len(records))
            for record in records:
                producer.send(args.predictions, record.value or b"", record.key, None)
                positions[(record.topic, record.partition)] = record.offset + 1
            result.events += len(records)
        done = not result.finished and result.events > 0 and all(positions.get(tp, 0) >= end
                                                                 for tp, end in ends.items())
        if done or (records and time.monotonic() - last_commit >= RELAY_COMMIT_S):
            producer.flush(30)
            consumer.commit(dict(positions))
            last_commit = time.monotonic()
        if done:
            result.finished, result.cpu_s = time.time(), cpu_seconds() - cpu0
            result.extra["partitions"] = sorted(tp[1] for tp in ends)
            if args.result is not None:
                result.write(args.result)
    consumer.close()
    producer.close(10)


def burn(microseconds: float) -> None:
    """Spin this thread's CPU for ``microseconds`` (thread CPU time, not wall time: a preempted spin runs on)."""
    if microseconds <= 0:
        return
    until = time.thread_time() + microseconds / 1e6
    while time.thread_time() < until:
        pass


def run_worker(args: argparse.Namespace) -> None:
    """(c) streamlearn's worker, stopped by the parent once it has reported."""
    settings = worker_settings(
        bootstrap=args.bootstrap, model=args.model, events_topic=args.topic, predictions_topic=args.predictions,
        group_id=args.group, redis_url=args.redis_url, exactly_once=not args.at_least_once,
        commit_interval_s=args.commit_interval, transactional_id=args.transactional_id, client=args.client,
        linger_ms=args.linger_ms, checkpoint_background=not args.checkpoint_in_loop, scope=args.scope,
    )
    worker = _bench_worker(settings, args)
    stop = _stop_flag(args.stop_file, on_stop=worker.stop)
    try:
        worker.run()
    finally:
        stop.set()
        if worker.trace is not None:
            worker.trace.write(args.trace)


def _bench_worker(settings: Any, args: argparse.Namespace) -> Any:
    """A :class:`Worker` that times its window and reports it; imported here so the bare loop stays lean."""
    from kafka import KafkaConsumer

    from services.worker import Worker

    class BenchWorker(Worker):
        def __init__(self) -> None:
            super().__init__(settings)
            self.result = RunResult("worker", args.model)
            self._cpu0 = 0.0
            self._threads0: dict[str, float] = {}
            self._reported = args.result is None
            self._ends: dict[tuple[str, int], int] | None = None
            self._share = ""
            #: the parent said go (``--go-file`` exists)
            self._go = args.go_file is None
            self._profiler: Any = None
            #: ``--trace``: the loop's timings (bench.worker_trace)
            self.trace: Any = None
            if args.profile is not None:
                from pyinstrument import Profiler

                self._profiler = Profiler(interval=0.0005)

        def start(self) -> None:
            super().start()
            # kafka-python may join the group before it has the subscribed topics' metadata, and then stays
            # without partitions until the next metadata refresh (dpkp/kafka-python#2377): fetch it first
            raw = getattr(self.consumer, "raw", None)
            if isinstance(raw, KafkaConsumer):
                for topic in sorted(raw.subscription() or ()):
                    raw.partitions_for_topic(topic)
            if args.trace is not None:
                from bench.worker_trace import LoopTrace

                self.trace = LoopTrace()
                self.trace.install(self)

        def restore_assigned(self) -> None:
            # keep new partitions paused until the parent says go (all workers of the group have joined)
            if not self._go and args.go_file is not None and not args.go_file.exists():
                self._report_share()
                return
            self._go = True
            super().restore_assigned()
            self._ends = None
            if args.go_file is None:
                self._report_share()

        def _poll_timeout_ms(self) -> int:
            return super()._poll_timeout_ms() if self._go else GO_POLL_MS

        def _report_share(self) -> None:
            """Write the partitions this worker is assigned to ``--ready-file`` (when they changed)."""
            if args.ready_file is None or self.consumer is None:
                return
            share = json.dumps(sorted(tp[1] for tp in self.consumer.assignment() if tp[0] == args.topic))
            if share != "[]" and share != self._share:
                tmp = args.ready_file.with_suffix(".tmp")
                tmp.write_text(share)
                tmp.replace(args.ready_file)
                self._share = share

        def process(self, batch: Any) -> None:
            if self.result.events == 0 and batch.records:
                self.result.started, self._cpu0 = batch.polled_at, cpu_seconds()
                self._threads0 = thread_cpu_seconds()
                if self._profiler is not None:
                    self._profiler.start()
            started = time.time()
            super().process(batch)
            if self.trace is not None:
                self.trace.chunk(batch.records, batch.polled_at, started, time.time())
            self.result.events += len(batch.records)
            if not self._reported and self._done():
                self.commit()  # checkpoints keep their own cadence (every 5,000 events or 10 s)
                self.result.finished = time.time()
                self.result.cpu_s = cpu_seconds() - self._cpu0
                self.result.extra["thread_cpu_s"] = thread_cpu_delta(self._threads0, thread_cpu_seconds())
                self.result.extra["partitions"] = sorted(tp[1] for tp in self.model_step.sets)
                self.result.extra.update(self._sync_costs())
                self.result.write(args.result)
                self._reported = True
                if self._profiler is not None:
                    self._profiler.stop()
                    _write_profile(self._profiler, args.profile)

        def close(self) -> None:
            if self._profiler is not None and self._profiler.is_running and args.profile is not None:
                self._profiler.stop()  # a paced run (no --result): the profile of everything it processed
                _write_profile(self._profiler, args.profile)
            super().close()

        def _sync_costs(self) -> dict[str, float]:
            """Group scope: the syncs of the run so far, their time and the bytes they published and read."""
            def value(name: str, labels: dict[str, str] | None = None) -> float:
                return self.registry.get_sample_value(name, labels or {}) or 0.0

            return {"syncs": value("streamlearn_syncs_total", {"outcome": "ok"}),
                    "sync_s": round(value("streamlearn_sync_seconds_sum"), 4),
                    "sync_bytes_published": value("streamlearn_sync_bytes_total", {"direction": "published"}),
                    "sync_bytes_read": value("streamlearn_sync_bytes_total", {"direction": "read"})}

        def _done(self) -> bool:
            if args.n:
                return self.result.events >= args.n
            if self._ends is None:
                assert self.consumer is not None
                assigned = [tp for tp in self.consumer.assignment() if tp[0] == args.topic]
                self._ends = end_offsets(self.consumer, assigned)
            return all(self._processed.get(tp, 0) >= end for tp, end in self._ends.items())

    return BenchWorker()


def end_offsets(consumer: Any, tps: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The current end offsets of ``tps``, asked through whichever client the worker's transport wraps."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    raw = consumer.raw
    if isinstance(raw, KafkaConsumer):
        ends = raw.end_offsets([TopicPartition(*tp) for tp in tps])
        return {(tp.topic, tp.partition): int(end) for tp, end in ends.items()}
    from confluent_kafka import TopicPartition as ConfluentPartition

    return {tp: int(raw.get_watermark_offsets(ConfluentPartition(*tp), timeout=10)[1]) for tp in tps}


def _write_profile(profiler: Any, path: Path) -> None:
    """The profile as JSON: the call tree and flat listings by own and by total time."""
    path.write_text(json.dumps({
        "tree": profiler.output_text(unicode=False, color=False, show_all=False),
        "flat_self": profiler.output_text(unicode=False, color=False, flat=True, flat_time="self"),
        "flat_total": profiler.output_text(unicode=False, color=False, flat=True, flat_time="total"),
    }))


def _stop_flag(path: Path | None, on_stop: Any = None) -> threading.Event:
    """An event set when ``path`` appears (checked every 20 ms by a daemon thread)."""
    flag = threading.Event()

    def watch() -> None:
        while not flag.is_set():
            if path is not None and path.exists():
                flag.set()
                break
            time.sleep(0.02)
        if on_stop is not None:
            on_stop()

    threading.Thread(target=watch, name="stop-watch", daemon=True).start()
    return flag


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.runner", description=__doc__.split("\n")[0])
    parser.add_argument("contender", choices=["bare", "plain", "transport", "relay", "group-relay", "worker"])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--result", type=Path, help="where to report (none: a paced run, never reports)")
    parser.add_argument("--n", type=int, default=0, help="events to process (0: up to the end offsets at start)")
    parser.add_argument("--bootstrap")
    parser.add_argument("--topic")
    parser.add_argument("--predictions")
    parser.add_argument("--group")
    parser.add_argument("--redis-url")
    parser.add_argument("--at-least-once", action="store_true")
    parser.add_argument("--commit-interval", type=float)
    parser.add_argument("--checkpoint-in-loop", action="store_true",
                        help="the worker's periodic checkpoints in the poll loop (checkpoint.background: false)")
    parser.add_argument("--linger-ms", type=int, help="the worker's kafka.linger_ms (default: the settings' default)")
    parser.add_argument("--transactional-id")
    parser.add_argument("--scope", choices=["group", "partition"],
                        help="the worker's sync.scope (default: the settings' default, group)")
    parser.add_argument("--client", choices=["kafka-python", "confluent"], default="kafka-python",
                        help="the Kafka client of the worker or the relay")
    parser.add_argument("--burn-us", type=float, default=0.0,
                        help="relay: CPU microseconds spent per record before producing (a diagnostic)")
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--go-file", type=Path)
    parser.add_argument("--stop-file", type=Path)
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--trace", type=Path, help="the worker's loop timings as JSON (bench.worker_trace)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    {"bare": run_bare, "plain": run_plain, "transport": run_transport, "relay": run_relay,
     "group-relay": run_group_relay, "worker": run_worker}[args.contender](args)


if __name__ == "__main__":
    main()
