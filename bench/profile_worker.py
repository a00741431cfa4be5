"""Profile one worker in-process: ``python -m bench.profile_worker --n 50000 [--model logreg] [--at-least-once]``.

Starts Kafka and Redis on free loopback ports (as ``tests/conftest.py`` does), pre-produces ``--n`` events of
the benchmark's source, then runs a :class:`~services.worker.Worker` in this process (validation, metrics,
checkpoints to Redis, exactly-once unless ``--at-least-once``) until every event is processed and committed.
Prints events/s (first polled batch to the final commit) and, unless ``--no-profile``, pyinstrument's profile:
the top functions by own time and the call tree. ``--plain`` also times the tutorial kafka-python + River loop
(``bench.runner``'s contender b) on the same events, in the same process, for a side-by-side ratio.
``--loop-trace`` times each part of the worker's loop (``bench.worker_trace``) and prints where the window went:
the loop's parts, what ran inside them, and the loop's own remainder (which here includes the final commit and
checkpoint that end the window).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bench.common import MODELS, SEED, SOURCE
from bench.worker_trace import LoopTrace, window_breakdown
from services.replayer import replay
from services.stack import KafkaServer, RedisServer, free_ports
from services.worker import Worker
from shared.kafka.admin import ensure_topics
from shared.settings import PreprocessingSettings, Settings, WorkerSettings, load_settings


@contextlib.contextmanager
def stack(state_dir: Path) -> Iterator[tuple[str, str]]:
    """Kafka and Redis on free ports: ``(bootstrap, redis_url)``; both stopped on exit."""
    (redis_port,) = free_ports(1)
    port, controller_port = free_ports(2)
    redis_server = RedisServer(state_dir, port=redis_port, die_with_parent=True)
    kafka_server = KafkaServer(state_dir, port=port, controller_port=controller_port, heap="1G", die_with_parent=True)
    try:
        redis_server.start()
        kafka_server.start()
        yield kafka_server.bootstrap, redis_server.url
    finally:
        for server in (kafka_server, redis_server):
            with contextlib.suppress(Exception):
                server.stop()


def settings_for(args: argparse.Namespace, bootstrap: str, redis_url: str, events: str, predictions: str) -> Settings:
    group = f"profile-{uuid.uuid4().hex[:8]}"
    kafka: dict[str, Any] = {
        "bootstrap_servers": bootstrap, "group_id": group, "exactly_once": not args.at_least_once,
        "transactional_id": group, "max_poll_records": args.max_poll_records, "client": args.client,
        "topics": {"events": events, "predictions": predictions, "shadow_predictions": f"{predictions}.shadow",
                   "dead_letters": f"{events}.dlq", "labels": f"{events}.labels"},
    }
    return load_settings(None, kafka=kafka, models=[MODELS[args.model]], metrics={"port": 0},
                         redis={"url": redis_url, "namespace": group})


class _CountingWorker(Worker):
    """Stops itself once ``n`` events are processed and committed; times that window."""

    def __init__(self, settings: Settings, n: int, profiler: Any, trace: LoopTrace | None = None) -> None:
        super().__init__(settings, registry=CollectorRegistry())
        self.trace = trace
        self.n = n
        self.seen = 0
        self.started = 0.0
        self.finished = 0.0
        self.cpu_s = 0.0
        self._profiler = profiler

    def start(self) -> None:
        super().start()
        if self.trace is not None:
            self.trace.install(self)

    def process(self, batch: Any) -> None:
        if self.seen == 0 and batch.records:
            self.started = batch.polled_at
            self.cpu_s = -cpu_seconds()
            if self._profiler is not None:
                self._profiler.start()
        super().process(batch)
        self.seen += len(batch.records)
        if self.seen >= self.n and not self.finished:
            self.commit(checkpoint=True)
            self.finished = time.time()
            self.cpu_s += cpu_seconds()
            if self._profiler is not None:
                self._profiler.stop()
            self.stop()


def run_worker(args: argparse.Namespace, bootstrap: str, redis_url: str, events: str) -> dict[str, Any]:
    predictions = f"predictions-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {predictions: 1, f"{predictions}.shadow": 1, f"{events}.dlq": 1, f"{events}.labels": 1})
    profiler = None
    if not args.no_profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
    trace = LoopTrace() if args.loop_trace else None
    worker = _CountingWorker(settings_for(args, bootstrap, redis_url, events, predictions), args.n, profiler, trace)
    worker.run(max_seconds=args.timeout)
    if not worker.finished:
        raise SystemExit(f"worker processed {worker.seen} of {args.n} events within {args.timeout} s")
    seconds = worker.finished - worker.started
    breakdown = None if trace is None else window_breakdown(trace, worker.started, worker.finished, worker.seen)
    return {"contender": "worker", "events": worker.seen, "seconds": seconds, "rate": worker.seen / seconds,
            "cpu_s": worker.cpu_s, "profiler": profiler, "breakdown": breakdown}


def run_bare(args: argparse.Namespace) -> dict[str, Any]:
    """The model's own loop over the same samples, no Kafka (``bench.runner``'s contender a)."""
    from bench.runner import _river_or_torch, bare_loop
    from shared.datasets import iter_source

    family, model = _river_or_torch(args.model)
    data = [(s.features, s.label) for s in iter_source(SOURCE, seed=SEED, limit=args.n)]
    started, cpu0 = time.time(), cpu_seconds()
    bare_loop(family, model, data)
    seconds, cpu_s = time.time() - started, cpu_seconds() - cpu0
    return {"contender": "bare", "events": len(data), "seconds": seconds, "rate": len(data) / seconds, "cpu_s": cpu_s}


def run_plain(args: argparse.Namespace, bootstrap: str, events: str) -> dict[str, Any]:
    """The tutorial loop (``bench.runner.run_plain``), same events, same pipeline."""
    from kafka import KafkaConsumer, KafkaProducer

    from shared.learners.registry import build_river_pipeline

    spec = MODELS[args.model]
    model = build_river_pipeline(spec["estimator"], spec.get("params", {}), PreprocessingSettings(),
                                 WorkerSettings().seed)
    consumer = KafkaConsumer(events, bootstrap_servers=bootstrap, group_id=f"plain-{uuid.uuid4().hex[:8]}",
                             enable_auto_commit=False, auto_offset_reset="earliest", consumer_timeout_ms=2000)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    predictions = f"plain-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + 60
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(timeout_ms=100, max_records=1)  # joins the group; nothing is consumed before assignment
        if consumer.assignment():
            consumer.seek_to_beginning()
    count, started, last_commit, cpu0 = 0, 0.0, time.monotonic(), 0.0
    for message in consumer:
        if count == 0:
            started, cpu0 = time.time(), cpu_seconds()
        event = json.loads(message.value)
        x, y = event["features"], event.get("label")
        y_pred = model.predict_one(x)
        model.learn_one(x, y)
        producer.send(predictions, key=message.key, value=json.dumps({"id": event["id"], "prediction": y_pred})
                      .encode("utf-8"))
        count += 1
        if time.monotonic() - last_commit >= 1.0:
            producer.flush()
            consumer.commit()
            last_commit = time.monotonic()
        if count >= args.n:
            break
    producer.flush()
    consumer.commit()
    seconds, cpu_s = time.time() - started, cpu_seconds() - cpu0
    consumer.close()
    producer.close()
    return {"contender": "plain", "events": count, "seconds": seconds, "rate": count / seconds, "cpu_s": cpu_s}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, all threads (steadier than wall time on a busy host)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--model", choices=sorted(MODELS), default="logreg")
    parser.add_argument("--at-least-once", action="store_true")
    parser.add_argument("--client", choices=["kafka-python", "confluent"], default="kafka-python",
                        help="the worker's Kafka transport")
    parser.add_argument("--max-poll-records", type=int, default=500)
    parser.add_argument("--plain", action="store_true", help="also time the tutorial loop on the same events")
    parser.add_argument("--bare", action="store_true", help="also time the model's own loop (no Kafka)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--loop-trace", action="store_true",
                        help="time each part of the worker's loop (bench.worker_trace) and print where the window went")
    parser.add_argument("--top", type=int, default=30, help="functions listed by own time")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--tree", type=Path, help="write the full call tree here")
    args = parser.parse_args(argv)
    if args.plain and "estimator" not in MODELS[args.model]:
        parser.error("--plain is the River tutorial loop: a River model only")
    with tempfile.TemporaryDirectory(prefix="profile-worker-") as tmp, stack(Path(tmp)) as (bootstrap, redis_url):
        events = f"events-{uuid.uuid4().hex[:8]}"
        ensure_topics(bootstrap, {events: 1})
        produced = replay(SOURCE, bootstrap_servers=bootstrap, topic=events, limit=args.n, seed=SEED, progress=False)
        print(f"produced {produced.sent} events of {SOURCE} (seed {SEED})")
        results = []
        if args.bare:
            results.append(run_bare(args))
        if args.plain:
            results.append(run_plain(args, bootstrap, events))
        results.append(run_worker(args, bootstrap, redis_url, events))
        mode = "at-least-once" if args.at_least_once else "exactly-once"
        for r in results:
            print(f"{r['contender']:>6}: {r['events']} events in {r['seconds']:.2f} s = {r['rate']:,.0f} events/s, "
                  f"{1000 * r['cpu_s'] / r['events']:.3f} CPU s per 1,000 events"
                  + (f" ({args.model}, {mode}, max_poll_records={args.max_poll_records})"
                     if r["contender"] == "worker" else f" ({args.model})"))
        worker = results[-1]
        for other in results[:-1]:
            if other["events"]:
                print(f"worker / {other['contender']}: {worker['rate'] / other['rate']:.2f}x events/s, "
                      f"{(other['cpu_s'] / other['events']) / (worker['cpu_s'] / worker['events']):.2f}x by CPU "
                      "per event")
        if worker.get("breakdown"):
            print(f"\n--- the worker's loop, by part (bench.worker_trace) ---\n{worker['breakdown']}")
        profiler = results[-1].get("profiler")
        if profiler is not None:
            flat = profiler.output_text(unicode=False, color=False, flat=True, flat_time="self")
            print(f"\n--- top {args.top} by own time ---")
            print("\n".join(flat.splitlines()[: args.top + 8]))
            tree = profiler.output_text(unicode=False, color=False, show_all=False)
            if args.tree is not None:
                args.tree.write_text(tree)
                print(f"call tree written to {args.tree}")
            else:
                print(tree)


if __name__ == "__main__":
    main()
