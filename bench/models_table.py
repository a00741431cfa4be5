"""Every model kind side by side through the real stack, with the no-change and majority baselines.

For each stream, events are replayed to a fresh Kafka topic, one streamlearn worker (all models in one model
set) predicts and learns them, and the prequential accuracy of each model is recomputed from the records on
``predictions`` and ``predictions.shadow`` (and checked against the worker's own gauges). The streams:

* Phishing (1,250 events, the whole dataset once);
* Agrawal, seeded, 20,000 events with an abrupt drift at 10,000 (classification function 0, then 2):
  accuracy over all events, before the drift, after it, and over the last 2,000.

Starts its own single-node Kafka unless ``--bootstrap`` is given, and writes the table into ``docs/models.md``
(between the ``models-table`` markers) with ``--write-docs``::

    .venv/bin/python bench/models_table.py --write-docs
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import torch
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from services.replayer import replay
from services.stack import KafkaServer, free_ports
from services.worker import Worker
from shared.datasets import iter_source
from shared.kafka.admin import ensure_topics
from shared.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "models.md"
START, END = "<!-- models-table:start -->", "<!-- models-table:end -->"
COMMAND = ".venv/bin/python bench/models_table.py --write-docs"

#: every model kind (and the River estimators of issue 3); classification on these streams
MODELS: list[dict[str, Any]] = [
    {"name": "arf", "estimator": "river.forest.ARFClassifier", "task": "binary"},
    {"name": "hat", "estimator": "river.tree.HoeffdingAdaptiveTreeClassifier", "task": "binary"},
    {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"},
    {"name": "pa", "estimator": "river.linear_model.PAClassifier"},
    {"name": "gaussian-nb", "estimator": "river.naive_bayes.GaussianNB", "task": "binary"},
    {"name": "torch-linear", "kind": "torch.linear", "task": "binary"},
    {"name": "torch-mlp", "kind": "torch.mlp", "task": "binary"},
    {"name": "torch-gru", "kind": "torch.gru", "task": "binary"},
    {"name": "torch-cnn", "kind": "torch.cnn", "task": "binary"},
]
BASELINES = ("no_change", "majority")


@dataclass
class StreamResult:
    """Accuracies per model and baseline, over named segments of one stream."""

    source: str
    n: int
    segments: dict[str, tuple[int, int]]
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


def prequential_accuracy(labels: Sequence[Any], predictions: Sequence[Any], start: int, end: int) -> float:
    """Accuracy over ``[start, end)``; a missing prediction (an untrained model) is not scored, as in River."""
    scored = [(y, p) for y, p in zip(labels[start:end], predictions[start:end], strict=True) if p is not None]
    return sum(y == p for y, p in scored) / len(scored) if scored else float("nan")


def baseline_predictions(labels: Sequence[Any]) -> dict[str, list[Any]]:
    """No-change (the previous label) and majority (the most frequent label so far; a tie keeps the current
    majority), made prequentially: the same rules as the worker's baselines (``shared/monitoring/quality.py``)."""
    no_change: list[Any] = [None]
    majority: list[Any] = []
    counts: Counter[Any] = Counter()
    current: Any = None
    for index, label in enumerate(labels):
        majority.append(current)
        counts[label] += 1
        if current is None or counts[label] > counts[current]:
            current = label
        if index + 1 < len(labels):
            no_change.append(label)
    return {"no_change": no_change, "majority": majority}


def _settings(bootstrap: str, tag: str) -> Settings:
    topics = {name: f"bench.{tag}.{name}" for name in ("events", "labels", "predictions", "shadow", "dlq")}
    return load_settings(
        None,
        kafka={"bootstrap_servers": bootstrap, "group_id": f"bench.{tag}", "max_poll_records": 500,
               "topics": {"events": topics["events"], "labels": topics["labels"],
                          "predictions": topics["predictions"], "shadow_predictions": topics["shadow"],
                          "dead_letters": topics["dlq"]}},
        metrics={"enabled": False}, checkpoint={"enabled": False}, dedup={"enabled": False},
        labels={"enabled": False}, models=MODELS, champion={"pinned": MODELS[0]["name"]},
    )


def _read(bootstrap: str, topic: str, expected: int, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             isolation_level="read_committed")
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(orjson.loads(r.value) for r in batch)
    consumer.close()
    if len(records) < expected:
        raise RuntimeError(f"{topic}: {len(records)} records after {timeout_s} s, expected {expected}")
    return records


def run_stream(bootstrap: str, source: str, n: int, seed: int, segments: dict[str, tuple[int, int]],
               drift_at: int | None = None) -> StreamResult:
    """Replay, run one worker with every model until all ``n`` events are processed, score from the topics."""
    tag = f"{source}.{seed}.{int(time.time() * 1000)}"
    settings = _settings(bootstrap, tag)
    t = settings.kafka.topics
    ensure_topics(bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                              t.dead_letters: 1})
    replay(source, bootstrap_servers=bootstrap, topic=t.events, limit=n, seed=seed, drift_at=drift_at,
           progress=False)
    registry = CollectorRegistry()
    worker = Worker(settings, registry=registry)
    worker.start()
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        while registry.get_sample_value("streamlearn_events_total", {"outcome": "valid"}) != n:
            if not thread.is_alive():
                raise RuntimeError("the worker stopped before processing every event")
            if time.monotonic() - started > 900:
                raise RuntimeError(f"{source}: not all {n} events processed in 900 s")
            time.sleep(0.2)
        seconds = time.monotonic() - started
    finally:
        worker.stop()
        thread.join(timeout=60)
    records = _read(bootstrap, t.predictions, n) + _read(bootstrap, t.shadow_predictions, n * (len(MODELS) - 1))
    by_model: dict[str, dict[int, Any]] = {m["name"]: {} for m in MODELS}
    for payload in records:
        by_model[payload["model"]][int(payload["id"].rsplit("-", 1)[1])] = payload["prediction"]
    labels = [s.label for s in iter_source(source, seed=seed, limit=n, drift_at=drift_at)]
    predictions = {name: [got[i] for i in range(n)] for name, got in by_model.items()}
    predictions.update(baseline_predictions(labels))
    result = StreamResult(source, n, segments, seconds=seconds)
    for name, preds in predictions.items():
        result.accuracy[name] = {seg: prequential_accuracy(labels, preds, a, b) for seg, (a, b) in segments.items()}
    _check_gauges(registry, result)
    return result


def _check_gauges(registry: CollectorRegistry, result: StreamResult) -> None:
    """The worker's cumulative gauges (models and baselines) must agree with the accuracies recomputed here."""
    whole = next(iter(result.segments))
    for model in MODELS:
        gauge = registry.get_sample_value("streamlearn_model_metric",
                                          {"model": model["name"], "metric": "accuracy", "window": "cumulative"})
        mine = result.accuracy[model["name"]][whole]
        if gauge is None or abs(gauge - mine) > 1e-9:
            raise AssertionError(f"{result.source} {model['name']}: gauge {gauge} != recomputed {mine}")
    for baseline in BASELINES:
        gauge = registry.get_sample_value("streamlearn_baseline_metric",
                                          {"baseline": baseline, "metric": "accuracy", "window": "cumulative"})
        mine = result.accuracy[baseline][whole]
        if gauge is None or abs(gauge - mine) > 1e-9:
            raise AssertionError(f"{result.source} baseline {baseline}: gauge {gauge} != recomputed {mine}")


def render(results: Sequence[StreamResult], seed: int, drift_at: int) -> str:
    """The Markdown table(s) and how they were made."""
    lines = [
        f"Made by `{COMMAND}` on {time.strftime('%Y-%m-%d')} (seed {seed}; {platform.machine()}, "
        f"torch {torch.__version__} on CPU, one torch thread; every model in one worker, real Kafka). "
        "Prequential accuracy recomputed from the records on `predictions` / `predictions.shadow`; the baselines "
        "are scored on the same labels. A prediction of an untrained model (`None`) is not scored, as in River.",
        "",
    ]
    columns = [(r, seg) for r in results for seg in r.segments]
    header = "| model | kind | " + " | ".join(f"{r.source} {seg}" for r, seg in columns) + " |"
    lines += [header, "|" + "---|" * (2 + len(columns))]
    kinds = {m["name"]: m.get("estimator", m.get("kind", "")).removeprefix("river.") for m in MODELS}
    for name in [m["name"] for m in MODELS] + list(BASELINES):
        cells = [f"{r.accuracy[name][seg]:.3f}" for r, seg in columns]
        label = f"*{name}* (baseline)" if name in BASELINES else f"`{name}`"
        lines.append(f"| {label} | {kinds.get(name, '')} | " + " | ".join(cells) + " |")
    lines += ["", "Segments: " + "; ".join(
        f"{r.source} {seg} = events [{a:,}, {b:,})" for r in results for seg, (a, b) in r.segments.items()
    ) + f". Agrawal: `agrawal-drift`, classification function 0 then 2 from event {drift_at:,}."]
    lines.append("Wall time (replayed topic to all events processed, all models together): " + ", ".join(
        f"{r.source} {r.seconds:.0f} s" for r in results) + ".")
    return "\n".join(lines)


def write_docs(table: str, path: Path = DOCS) -> None:
    """Replace the text between the markers in ``docs/models.md`` (appended with them if absent)."""
    text = path.read_text()
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


@contextmanager
def kafka_broker(bootstrap: str | None) -> Iterator[str]:
    """The given broker, or a fresh single-node one in a temporary directory, stopped on exit."""
    if bootstrap:
        yield bootstrap
        return
    with tempfile.TemporaryDirectory(prefix="streamlearn-bench-") as state_dir:
        port, controller_port = free_ports(2)
        server = KafkaServer(Path(state_dir), port=port, controller_port=controller_port, heap="512M",
                             die_with_parent=True)
        server.start()
        try:
            yield server.bootstrap
        finally:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="an existing Kafka (default: start one)")
    parser.add_argument("--seed", type=int, default=42, help="replay and Agrawal seed (the worker seed is 42)")
    parser.add_argument("--agrawal-n", type=int, default=20_000)
    parser.add_argument("--drift-at", type=int, default=10_000)
    parser.add_argument("--write-docs", action="store_true", help=f"write the table into {DOCS.relative_to(REPO)}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n, drift = args.agrawal_n, args.drift_at
    with kafka_broker(args.bootstrap) as bootstrap:
        print(f"kafka at {bootstrap}", file=sys.stderr)
        results = [
            run_stream(bootstrap, "phishing", 1250, args.seed, {"all": (0, 1250)}),
            run_stream(bootstrap, "agrawal-drift", n, args.seed,
                       {"all": (0, n), "before drift": (0, drift), "after drift": (drift, n),
                        "last 2,000": (max(drift, n - 2000), n)}, drift_at=drift),
        ]
    table = render(results, args.seed, drift)
    print(table)
    if args.write_docs:
        write_docs(table)
        print(f"written to {DOCS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
