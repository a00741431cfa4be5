"""Issue 12: what the published predictions are worth with 1 partition, 4 partitions in partition scope, and 4
partitions in group scope on 1 and on 2 workers.

The worker's model code, without Kafka: events are spread over 4 partitions as Kafka's default partitioner
spreads keyed records (a hash of the event id), and read in polls of ``--batch`` records per partition, round
robin, as a consumer reads a backlog. Each worker holds its model set(s) as the worker does
(:class:`shared.steps.models.ModelSet`): one per partition in partition scope, one for all its partitions in group
scope; a group-scope worker syncs every ``--sync-every`` events it processed through the real
:class:`shared.sync.group.GroupSync` over a real Redis (its deltas and views go through Redis, signed, as in the
worker). The accuracy (MAE for regression) is that of every prediction, prequential (predict, then learn), the
figure a reader of the predictions topic computes. Sync time and bytes are the sync's own (merges, deltas,
views), per sync.

    .venv/bin/python -m bench.group_quality --events 3000 --write-docs
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from shared.datasets import iter_source
from shared.learners.base import Row, Target
from shared.learners.registry import build_learner
from shared.settings import ModelSettings, PreprocessingSettings, SyncSettings
from shared.steps.models import ModelSet
from shared.sync.group import GroupSync

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "models.md"
START, END = "<!-- group-quality:start -->", "<!-- group-quality:end -->"
PARTITIONS = 4
CLASSIFIERS: list[dict[str, Any]] = [
    {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"},
    {"name": "gaussian-nb", "estimator": "river.naive_bayes.GaussianNB", "task": "binary"},
    {"name": "arf-10", "estimator": "river.forest.ARFClassifier", "params": {"n_models": 10}, "task": "binary"},
    {"name": "torch-mlp", "kind": "torch.mlp", "task": "binary"},
]
REGRESSORS: list[dict[str, Any]] = [
    {"name": "linreg", "estimator": "river.linear_model.LinearRegression", "task": "regression"},
    {"name": "arf-10-reg", "estimator": "river.forest.ARFRegressor", "params": {"n_models": 10},
     "task": "regression"},
    {"name": "torch-mlp-reg", "kind": "torch.mlp", "task": "regression"},
]
STREAMS = [("phishing", CLASSIFIERS, None), ("agrawal-drift", CLASSIFIERS, 0.5), ("friedman", REGRESSORS, None)]
LAYOUTS = ["1 partition", "4 partitions, partition scope", "4 partitions, group scope, 1 worker",
           "4 partitions, group scope, 2 workers"]


@dataclass(slots=True)
class Score:
    """Prequential accuracy (classification) or MAE (regression), and the syncs it took."""

    regression: bool
    total: float = 0.0
    count: int = 0
    sync_s: list[float] = field(default_factory=list)
    sync_bytes: list[int] = field(default_factory=list)

    def add(self, prediction: Target | None, label: Target) -> None:
        self.count += 1
        if self.regression:
            self.total += abs(float(prediction if isinstance(prediction, int | float) else 0.0) - float(label))
        else:
            self.total += prediction == label

    @property
    def value(self) -> float:
        return self.total / max(1, self.count)


class Member:
    """One worker: its partitions, its model set(s), its sync."""

    def __init__(self, model: ModelSettings, partitions: list[int], *, group: GroupSync | None, per_partition: bool,
                 seed: int) -> None:
        prep = PreprocessingSettings()
        self.partitions = partitions
        self.group = group
        self.sets = {p: ModelSet({model.name: build_learner(model, prep, seed)}) for p in partitions} \
            if per_partition else {}
        if not per_partition:
            shared = ModelSet({model.name: build_learner(model, prep, seed)})
            self.sets = {p: shared for p in partitions}
            if group is not None:
                group.adopt(shared, None)
        self.since_sync = 0

    def process(self, partition: int, rows: list[Row], labels: list[Target], score: Score, sync_every: int) -> None:
        model_set = self.sets[partition]
        (name, learner), = model_set.learners.items()
        for output, label in zip(learner.process(rows, list(labels)), labels, strict=True):
            score.add(output.prediction, label)
        model_set.learned[name] = model_set.learned.get(name, 0) + len(rows)
        source = f"events:{partition}"
        model_set.sources[source] = model_set.sources.get(source, 0) + len(rows)
        self.since_sync += len(rows)
        if self.group is not None and self.since_sync >= sync_every:
            self.sync(score)

    def sync(self, score: Score) -> None:
        assert self.group is not None
        model_set = next(iter(self.sets.values()))
        outcome = self.group.sync(model_set)
        client: redis.Redis = self.group._client
        pipe = client.pipeline(transaction=True)
        outcome.publish(pipe)
        pipe.execute()
        self.group.published(outcome)
        score.sync_s.append(outcome.seconds)
        score.sync_bytes.append(outcome.published_bytes + outcome.read_bytes)
        self.since_sync = 0


def _partition_of(event_id: str) -> int:
    return zlib.crc32(event_id.encode()) % PARTITIONS


def run_layout(layout: str, model: ModelSettings, samples: list[Any], source: str, *, client: redis.Redis,
               batch: int, sync_every: int, seed: int) -> Score:
    """The prequential score of one model under one layout."""
    regression = model.task == "regression"
    score = Score(regression)
    namespace = f"bench{time.monotonic_ns()}"
    settings = SyncSettings(every_events=sync_every)
    if layout == LAYOUTS[0]:
        members = [Member(model, [0], group=None, per_partition=True, seed=seed)]
        partition_of = {i: 0 for i in range(len(samples))}
    else:
        partition_of = {i: _partition_of(f"{source}-{i}") for i in range(len(samples))}
        if layout == LAYOUTS[1]:
            members = [Member(model, list(range(PARTITIONS)), group=None, per_partition=True, seed=seed)]
        elif layout == LAYOUTS[2]:
            members = [Member(model, list(range(PARTITIONS)), group=None, per_partition=False, seed=seed)]
        else:
            members = [
                Member(model, parts, per_partition=False, seed=seed,
                       group=GroupSync(client, namespace, "bench", b"bench-key", settings))
                for parts in ([0, 1], [2, 3])
            ]
    owner = {p: m for m in members for p in m.partitions}
    queues: dict[int, list[int]] = {}
    for index in range(len(samples)):
        queues.setdefault(partition_of[index], []).append(index)
    cursors = dict.fromkeys(queues, 0)
    while any(cursors[p] < len(q) for p, q in queues.items()):
        for partition in sorted(queues):  # one poll: up to ``batch`` records of each partition, round robin
            chunk = queues[partition][cursors[partition]:cursors[partition] + batch]
            cursors[partition] += len(chunk)
            if chunk:
                owner[partition].process(partition, [Row(samples[i].features) for i in chunk],
                                         [samples[i].label for i in chunk], score, sync_every)
    return score


@contextmanager
def redis_client(url: str | None) -> Iterator[redis.Redis]:
    if url:
        client = redis.Redis.from_url(url)
        yield client
        client.close()
        return
    from services.stack import free_ports
    from services.stack.redis_server import RedisServer

    with tempfile.TemporaryDirectory() as state:
        (port,) = free_ports(1)
        server = RedisServer(state, port=port, die_with_parent=True)
        server.start()
        try:
            client = redis.Redis.from_url(server.url)
            yield client
            client.close()
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000, help="events per stream (default 3000)")
    parser.add_argument("--batch", type=int, default=100, help="records per partition per poll (default 100)")
    parser.add_argument("--sync-every", type=int, default=500, help="events per worker between syncs")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--redis-url", default=None, help="a Redis to use (default: start one)")
    parser.add_argument("--only", default=None, help="comma-separated model names (default: all)")
    parser.add_argument("--write-docs", action="store_true", help=f"write the table into {DOCS.relative_to(REPO)}")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    rows: list[str] = []
    started = time.monotonic()
    with redis_client(args.redis_url) as client:
        for source, models, drift in STREAMS:
            drift_at = int(args.events * drift) if drift else None
            samples = list(iter_source(source, seed=7, limit=args.events, drift_at=drift_at))
            for spec in models:
                if only and spec["name"] not in only:
                    continue
                model = ModelSettings(**spec)
                scores = [run_layout(layout, model, samples, source, client=client, batch=args.batch,
                                     sync_every=args.sync_every, seed=args.seed) for layout in LAYOUTS]
                base = scores[0].value
                regression = model.task == "regression"
                cells = []
                for score in scores:
                    if regression:
                        cells.append(f"{score.value:.3f} ({(score.value / base - 1) * 100:+.1f} %)")
                    else:
                        cells.append(f"{score.value:.3f} ({(score.value - base) * 100:+.1f})")
                group2 = scores[3]
                target = abs(group2.value / base - 1) <= 0.03 if regression else (base - group2.value) <= 0.01
                target1 = abs(scores[2].value / base - 1) <= 0.03 if regression else (base - scores[2].value) <= 0.01
                sync = (f"{1000 * sum(group2.sync_s) / max(1, len(group2.sync_s)):.1f} ms, "
                        f"{sum(group2.sync_bytes) / max(1, len(group2.sync_bytes)) / 1024:.1f} KiB "
                        f"({len(group2.sync_s)} syncs)")
                metric = "MAE" if regression else "accuracy"
                row = (f"| {source} | {spec['name']} | {metric} | " + " | ".join(cells)
                       + f" | {'yes' if target1 and target else 'no'} | {sync} |")
                print(row, flush=True)
                rows.append(row)
    elapsed = time.monotonic() - started
    header = [
        f"Measured {datetime.date.today().isoformat()} with `.venv/bin/python -m bench.group_quality --events "
        f"{args.events} --sync-every {args.sync_every} --batch {args.batch}` ({elapsed:.0f} s). In brackets: the "
        "difference from 1 partition (accuracy points; MAE in %). Target: group scope within 1.0 point "
        "(classifiers) or 3 % MAE (regressors) of 1 partition, on 1 and on 2 workers. Sync: mean time and bytes "
        "(published + read) per sync of one of the 2 workers.",
        "",
        "| stream | model | metric | " + " | ".join(LAYOUTS) + " | target met | sync (2 workers) |",
        "|---|---|---|" + "---|" * len(LAYOUTS) + "---|---|",
    ]
    table = "\n".join(header + rows)
    print(table)
    if args.write_docs:
        text = DOCS.read_text(encoding="utf-8")
        block = f"{START}\n{table}\n{END}"
        if START in text and END in text:
            text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n## Group scope: quality with 4 partitions and 2 workers\n\n" + block + "\n"
        DOCS.write_text(text, encoding="utf-8")
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
