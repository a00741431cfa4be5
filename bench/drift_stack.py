"""Concept-drift detection through the real stack: replayer -> Kafka -> worker (its drift step) per seed.

For each seed and source, two streams go through a real Kafka broker and a real :class:`Worker` (the same
code as ``streamlearn worker``, run in a thread of this process so that its detections can be read with their
offsets), with checkpoints to a real Redis: the drift stream (``<source>-drift``: the concept switches at
``--drift-at``) and the same source without drift, each on fresh topics and a fresh consumer group (so fresh
models). A detection at or after the drift point is a hit (delay = its offset minus the drift point); any
detection before it, or on the stream without drift, is a false alarm. Targets (issue 5): >= 95% detected,
median delay <= 300 events, <= 0.5 false alarms per 10,000 events without drift.

Starts its own Kafka and Redis on free ports (or uses ``--bootstrap`` / ``--redis-url``):

    .venv/bin/python bench/drift_stack.py --seeds 10 --write-doc

``--write-doc`` replaces the table between the markers in ``docs/drift.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from services.replayer import replay
from services.stack import KafkaServer, RedisServer, free_ports
from services.worker import Worker
from shared.kafka.admin import delete_topics, ensure_topics
from shared.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DRIFT_DOC = ROOT / "docs" / "drift.md"
DOC_BEGIN = "<!-- drift-stack:begin -->"
DOC_END = "<!-- drift-stack:end -->"

TARGET_DETECTION_RATE = 0.95
TARGET_MEDIAN_DELAY = 300
TARGET_FALSE_ALARMS_PER_10K = 0.5
MODELS: dict[str, dict[str, Any]] = {
    "logreg": {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"},
    "tree": {"name": "tree", "estimator": "river.tree.HoeffdingTreeClassifier"},
}


@dataclass(frozen=True, slots=True)
class StreamRun:
    """One stream through the worker: the offsets where drifts were detected."""

    source: str
    seed: int
    events: int
    detections: tuple[int, ...]
    seconds: float


@dataclass(frozen=True, slots=True)
class SeedResult:
    """One seed: the drift stream and the stream without drift, scored."""

    source: str
    seed: int
    detected: bool
    delay: int | None
    false_alarms_before_drift: int
    false_alarms_no_drift: int
    seconds: float


def stream_settings(bootstrap: str, redis_url: str | None, model: str, **drift: Any) -> Settings:
    """A worker on fresh topics and a fresh group (so fresh models), with the default drift settings."""
    run = f"drift-bench.{uuid.uuid4().hex[:12]}"
    topics = {"events": f"{run}.events", "labels": f"{run}.labels", "predictions": f"{run}.predictions",
              "shadow_predictions": f"{run}.shadow", "dead_letters": f"{run}.dlq"}
    overrides: dict[str, Any] = {"redis": {"url": redis_url, "namespace": run}} if redis_url else {
        "checkpoint": {"enabled": False}}
    return load_settings(
        None, kafka={"bootstrap_servers": bootstrap, "group_id": run, "topics": topics, "max_poll_records": 500},
        metrics={"port": 0}, models=[MODELS[model]], drift=drift, **overrides,
    )


def run_stream(bootstrap: str, redis_url: str | None, source: str, seed: int, length: int, drift_at: int | None,
               model: str = "logreg", timeout_s: float = 300.0) -> StreamRun:
    """Replay ``length`` events of ``source`` into Kafka and run a worker until it has processed them all."""
    settings = stream_settings(bootstrap, redis_url, model)
    t = settings.kafka.topics
    names = [t.events, t.labels, t.predictions, t.shadow_predictions, t.dead_letters]
    ensure_topics(bootstrap, dict.fromkeys(names, 1))
    started = time.monotonic()
    try:
        sent = replay(source, bootstrap_servers=bootstrap, topic=t.events, limit=length, seed=seed,
                      drift_at=drift_at, progress=False)
        assert sent.sent == length, f"replayed {sent.sent} of {length} events"
        registry = CollectorRegistry()
        worker = Worker(settings, registry=registry)
        errors: list[BaseException] = []

        def target() -> None:
            try:
                worker.run()
            except BaseException as exc:  # re-raised below, in the caller's thread
                errors.append(exc)

        thread = threading.Thread(target=target, name=f"worker-{source}-{seed}", daemon=True)
        worker.start()
        thread.start()
        deadline = time.monotonic() + timeout_s
        try:
            while (registry.get_sample_value("streamlearn_events_total", {"outcome": "valid"}) or 0) < length:
                if errors or not thread.is_alive():
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{source} seed {seed}: the worker did not process {length} events "
                                       f"in {timeout_s} s")
                time.sleep(0.05)
        finally:
            worker.stop()
            thread.join(timeout=60)
        if errors:
            raise errors[0]
        processed = int(registry.get_sample_value("streamlearn_events_total", {"outcome": "valid"}) or 0)
        detections = tuple(d.offset for d in worker.drift_step.detections)
    finally:
        delete_topics(bootstrap, names)
    return StreamRun(source, seed, processed, detections, time.monotonic() - started)


def score_seed(drifting: StreamRun, steady: StreamRun, drift_at: int) -> SeedResult:
    """Hit, delay and false alarms of one seed."""
    after = [offset for offset in drifting.detections if offset >= drift_at]
    return SeedResult(
        source=drifting.source, seed=drifting.seed, detected=bool(after),
        delay=after[0] - drift_at if after else None,
        false_alarms_before_drift=sum(1 for offset in drifting.detections if offset < drift_at),
        false_alarms_no_drift=len(steady.detections), seconds=drifting.seconds + steady.seconds,
    )


def summarize(results: Sequence[SeedResult], drift_at: int, length: int) -> dict[str, float]:
    """Detection rate, median delay and false alarms per 10,000 events without drift."""
    delays = [r.delay for r in results if r.delay is not None]
    false_alarms = sum(r.false_alarms_before_drift + r.false_alarms_no_drift for r in results)
    events_without_drift = len(results) * (drift_at + length)
    return {
        "detection_rate": sum(r.detected for r in results) / len(results),
        "median_delay": statistics.median(delays) if delays else float("nan"),
        "false_alarms_per_10k": 10_000 * false_alarms / events_without_drift,
        "false_alarms": false_alarms,
        "events_without_drift": events_without_drift,
    }


def passes(summary: dict[str, float]) -> bool:
    return (summary["detection_rate"] >= TARGET_DETECTION_RATE and summary["median_delay"] <= TARGET_MEDIAN_DELAY
            and summary["false_alarms_per_10k"] <= TARGET_FALSE_ALARMS_PER_10K)


@contextlib.contextmanager
def own_stack(with_redis: bool) -> Iterator[tuple[str, str | None]]:
    """Kafka (and Redis) on free loopback ports in a temporary directory, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="streamlearn-drift-bench-") as state_dir:
        kafka_port, controller_port, redis_port = free_ports(3)
        kafka = KafkaServer(state_dir, port=kafka_port, controller_port=controller_port, heap="512M",
                            die_with_parent=True)
        redis_server = RedisServer(state_dir, port=redis_port, die_with_parent=True) if with_redis else None
        try:
            kafka.start()
            if redis_server is not None:
                redis_server.start()
            yield kafka.bootstrap, redis_server.url if redis_server is not None else None
        finally:
            kafka.stop()
            if redis_server is not None:
                redis_server.stop()


def markdown_table(rows: list[tuple[str, str, dict[str, float], list[SeedResult]]], command: str, drift_at: int,
                   length: int) -> str:
    """The per-source summary table and the per-seed delays, as Markdown."""
    lines = [
        f"Measured with `{command}` ({length:,} events per stream, drift at event {drift_at:,}; each seed runs "
        "a drift stream and a stream without drift through Kafka and a worker with checkpoints to Redis):",
        "",
        "| source | model | seeds | detected | median delay (events) | false alarms / 10k events without drift |"
        " delays per seed | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source, model, summary, results in rows:
        delays = ", ".join("-" if r.delay is None else str(r.delay) for r in results)
        lines.append(
            f"| {source} | {model} | {len(results)} | {summary['detection_rate']:.0%} | "
            f"{summary['median_delay']:.0f} | {summary['false_alarms_per_10k']:.2f} "
            f"({summary['false_alarms']:.0f} in {summary['events_without_drift']:,.0f}) | {delays} | "
            f"{'PASS' if passes(summary) else 'FAIL'} |")
    return "\n".join(lines)


def write_doc(table: str, path: Path = DRIFT_DOC) -> None:
    """Put ``table`` between the markers of ``docs/drift.md``."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(DOC_BEGIN) + r".*?" + re.escape(DOC_END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no {DOC_BEGIN} ... {DOC_END} markers")
    path.write_text(pattern.sub(lambda _: f"{DOC_BEGIN}\n{table}\n{DOC_END}", text), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", choices=["agrawal", "sea"], default=["agrawal", "sea"])
    parser.add_argument("--model", choices=sorted(MODELS), default="logreg")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--drift-at", type=int, default=5_000)
    parser.add_argument("--after", type=int, default=2_000, help="events after the drift point")
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting one")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--no-redis", action="store_true", help="run the workers without checkpoints")
    parser.add_argument("--write-doc", action="store_true", help=f"write the table into {DRIFT_DOC}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    length = args.drift_at + args.after
    command = "python bench/drift_stack.py " + " ".join(argv if argv is not None else sys.argv[1:])

    with contextlib.ExitStack() as stack:
        if args.bootstrap:
            bootstrap, redis_url = args.bootstrap, None if args.no_redis else args.redis_url
        else:
            bootstrap, redis_url = stack.enter_context(own_stack(with_redis=not args.no_redis))
        rows = []
        for source in args.sources:
            print(f"source={source} model={args.model} drift_at={args.drift_at} events/stream={length} "
                  f"kafka={bootstrap} redis={redis_url}", flush=True)
            print(f"{'seed':>5} {'detected':>9} {'delay':>6} {'false_alarms_before':>20} "
                  f"{'false_alarms_no_drift':>22} {'seconds':>8}", flush=True)
            results = []
            for seed in range(args.seeds):
                drifting = run_stream(bootstrap, redis_url, f"{source}-drift", seed, length, args.drift_at,
                                      args.model)
                steady = run_stream(bootstrap, redis_url, source, seed, length, None, args.model)
                result = score_seed(drifting, steady, args.drift_at)
                results.append(result)
                delay = "-" if result.delay is None else str(result.delay)
                print(f"{seed:>5} {result.detected!s:>9} {delay:>6} {result.false_alarms_before_drift:>20} "
                      f"{result.false_alarms_no_drift:>22} {result.seconds:>8.1f}", flush=True)
            summary = summarize(results, args.drift_at, length)
            print(f"detected {summary['detection_rate']:.0%}  median delay {summary['median_delay']:.0f}  "
                  f"false alarms/10k {summary['false_alarms_per_10k']:.2f}  -> "
                  f"{'PASS' if passes(summary) else 'FAIL'}", flush=True)
            rows.append((source, args.model, summary, results))
    table = markdown_table(rows, command, args.drift_at, length)
    print(table)
    if args.write_doc:
        write_doc(table)
    return 0 if all(passes(summary) for _, _, summary, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
