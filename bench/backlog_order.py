"""Issue 12's own measurement on the real broker: one worker catching up on a backlog on 1 or 4 partitions.

12,000 Agrawal events with a concept change at 6,000, ``river.forest.ARFClassifier`` with 5 trees, preprocessing
off, group scope, produced before the worker starts; the accuracy of the published predictions, and how far from
its place in the stream each event was learned: the mean distance between an event's position in the stream and
the examples the model had learned when it predicted it (the end of its ``model_version``). Rows: 1 partition, 4
partitions with ``worker.partition_order: time`` and with ``arrival`` (as polled); per Kafka client
and seed. The broker is the project's own (started here on free loopback ports); no Redis (checkpoints off: one
worker, nothing to sync).

    .venv/bin/python -m bench.backlog_order --write-docs
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import tempfile
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry
from river import forest

from bench.common import write_marked_block
from services.replayer import replay
from services.stack import KafkaServer, free_ports
from services.worker import Worker
from shared.datasets import iter_source
from shared.kafka.admin import ensure_topics
from shared.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "models.md"
SOURCE = "agrawal-drift"
#: (column title, partitions, worker.partition_order)
LAYOUTS = [("1 partition", 1, "time"), ("4 partitions, time order", 4, "time"),
           ("4 partitions, as polled", 4, "arrival")]


@dataclass(frozen=True, slots=True)
class Outcome:
    accuracy: float
    displacement: float
    seconds: float
    waits: float


def run(bootstrap: str, *, client: str, partitions: int, order: str, seed: int, events: int) -> Outcome:
    """One worker over a backlog of ``events`` on ``partitions``; what its published predictions are worth."""
    tag = f"{partitions}.{order}.{client}.{seed}.{time.time_ns()}"
    topics = {"events": f"e.{tag}", "labels": f"l.{tag}", "predictions": f"p.{tag}",
              "shadow_predictions": f"s.{tag}", "dead_letters": f"d.{tag}"}
    ensure_topics(bootstrap, {topics["events"]: partitions, topics["labels"]: 1, topics["predictions"]: 1,
                              topics["shadow_predictions"]: 1, topics["dead_letters"]: 1})
    drift_at = events // 2
    replay(SOURCE, bootstrap_servers=bootstrap, topic=topics["events"], limit=events, seed=seed, drift_at=drift_at,
           progress=False)
    settings = load_settings(
        None, kafka={"bootstrap_servers": bootstrap, "group_id": f"g.{tag}", "topics": topics, "client": client},
        metrics={"enabled": False}, checkpoint={"enabled": False}, dedup={"enabled": False},
        labels={"enabled": False}, worker={"partition_order": order}, sync={"scope": "group"},
        preprocessing={"scale_numbers": False, "one_hot_categories": False, "impute_missing": False},
        models=[{"name": "arf", "estimator": "river.forest.ARFClassifier", "task": "binary",
                 "params": {"n_models": 5, "seed": seed}}],
        champion={"pinned": "arf", "scope": "worker"},
    )
    registry = CollectorRegistry()
    worker = Worker(settings, registry=registry)
    worker.start()
    thread = threading.Thread(target=worker.run, daemon=True)
    started = time.monotonic()
    thread.start()
    while registry.get_sample_value("streamlearn_events_total", {"outcome": "valid"}) != events:
        if not thread.is_alive() or time.monotonic() - started > 600:
            raise RuntimeError(f"the worker stopped or stalled: {tag}")
        time.sleep(0.05)
    seconds = time.monotonic() - started
    waits = sum(registry.get_sample_value("streamlearn_order_waits_total", {"outcome": outcome}) or 0.0
                for outcome in ("delivered", "gave_up"))
    worker.stop()
    thread.join(60)
    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                           isolation_level="read_committed")
    reader.assign([TopicPartition(topics["predictions"], 0)])
    reader.seek_to_beginning()
    published: list[dict[str, object]] = []
    deadline = time.monotonic() + 120
    while len(published) < events and time.monotonic() < deadline:
        for batch in reader.poll(timeout_ms=500).values():
            published.extend(orjson.loads(record.value) for record in batch)
    reader.close()
    if len(published) != events:
        raise RuntimeError(f"{len(published)} predictions of {events} published: {tag}")
    labels = [sample.label for sample in iter_source(SOURCE, seed=seed, limit=events, drift_at=drift_at)]
    positions = [int(str(p["id"]).rsplit("-", 1)[1]) for p in published]
    scored = [(labels[i], p["prediction"]) for i, p in zip(positions, published, strict=True)
              if p["prediction"] is not None]
    return Outcome(
        accuracy=sum(y == y_hat for y, y_hat in scored) / len(scored),
        displacement=sum(abs(int(str(p["model_version"]).rsplit(".", 1)[1]) - position)
                         for p, position in zip(published, positions, strict=True)) / events,
        seconds=seconds, waits=waits,
    )


def tie_sensitivity(seed: int, events: int, shuffles: int, block: int = 8) -> tuple[float, list[float]]:
    """River's own prequential loop of the same forest over the same events: in the exact order, and with each block
    of ``block`` consecutive events shuffled (the events of one millisecond, whose order a timestamp cannot tell)."""
    samples: list[tuple[dict[Hashable, Any], Any]] = [
        ({str(name): value for name, value in sample.features.items()}, sample.label)
        for sample in iter_source(SOURCE, seed=seed, limit=events, drift_at=events // 2)]

    def accuracy(order: list[int]) -> float:
        model = forest.ARFClassifier(n_models=5, seed=seed)
        correct = scored = 0
        for index in order:
            features, label = samples[index]
            prediction = model.predict_one(features)
            if prediction is not None:
                scored += 1
                correct += prediction == label
            model.learn_one(features, label)
        return correct / scored

    exact = list(range(events))
    shuffled = []
    for shuffle in range(shuffles):
        rng = random.Random(shuffle)
        order: list[int] = []
        for first in range(0, events, block):
            chunk = exact[first:first + block]
            rng.shuffle(chunk)
            order += chunk
        shuffled.append(accuracy(order))
    return accuracy(exact), shuffled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=12_000, help="events, the concept change in the middle")
    parser.add_argument("--seeds", type=lambda text: [int(x) for x in text.split(",")], default=[42, 7, 3],
                        help="seeds of the stream and the forest (default 42,7,3)")
    parser.add_argument("--clients", default="kafka-python,confluent", help="Kafka clients (default both)")
    parser.add_argument("--tie-shuffles", type=int, default=4,
                        help="also run River's own loop with each block of 8 events shuffled this many times, on "
                             "the first seed (0: not)")
    parser.add_argument("--write-docs", action="store_true", help=f"write the table into {DOCS.relative_to(REPO)}")
    args = parser.parse_args(argv)
    os.environ.setdefault("STREAMLEARN_HMAC_KEY", "bench-backlog-order-key-0123456789abcdef")
    rows: list[str] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as directory:
        port, controller_port = free_ports(2)
        kafka = KafkaServer(directory, port=port, controller_port=controller_port, heap="512M",
                            die_with_parent=True)
        kafka.start()
        try:
            for client in args.clients.split(","):
                for seed in args.seeds:
                    cells = []
                    outcomes = [run(kafka.bootstrap, client=client, partitions=partitions, order=order, seed=seed,
                                    events=args.events) for _, partitions, order in LAYOUTS]
                    base = outcomes[0]
                    for outcome in outcomes:
                        cells.append(f"{outcome.accuracy:.4f} ({(outcome.accuracy - base.accuracy) * 100:+.1f}), "
                                     f"{outcome.displacement:.0f}, {outcome.seconds:.1f} s "
                                     f"({base.seconds / outcome.seconds:.2f}x), {outcome.waits:.0f}")
                    row = f"| {client} | {seed} | " + " | ".join(cells) + " |"
                    print(row, flush=True)
                    rows.append(row)
        finally:
            kafka.stop()
    ties = ""
    if args.tie_shuffles:
        exact, shuffled = tie_sensitivity(args.seeds[0], args.events, args.tie_shuffles)
        ties = (f" The same forest in River's own loop over the same events (seed {args.seeds[0]}): {exact:.4f} in the "
                f"exact order, {min(shuffled):.4f} to {max(shuffled):.4f} with each block of 8 events shuffled "
                f"({args.tie_shuffles} shuffles): what the order of the events of one millisecond alone moves.")
        print(ties, flush=True)
    lines = [
        f"Measured {datetime.date.today().isoformat()} with `.venv/bin/python -m bench.backlog_order --events "
        f"{args.events} --seeds {','.join(map(str, args.seeds))} --clients {args.clients} "
        f"--tie-shuffles {args.tie_shuffles}` "
        f"({time.monotonic() - began:.0f} s): {args.events:,} Agrawal events, the concept change in the middle, "
        "produced before one worker starts (a backlog); ARF with 5 trees, preprocessing off, group scope. Each cell: "
        "accuracy of the published predictions (points from 1 partition), the mean distance between an event's "
        "place in the stream and the examples learned before its prediction, the seconds to process the backlog (1 "
        "partition's over this one's: throughput as a ratio), and the times the time order waited for a partition."
        + ties,
        "",
        "| client | seed | " + " | ".join(title for title, *_ in LAYOUTS) + " |",
        "|---|---|" + "---|" * len(LAYOUTS),
        *rows,
    ]
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        write_marked_block(DOCS, "backlog-order", table, "Group scope on the real broker: a backlog on 4 partitions")
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
