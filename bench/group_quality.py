"""Issue 12: what the published predictions are worth with 1 partition, 4 partitions in partition scope, and 4
partitions in group scope on 1 and on 2 workers.

The worker's model code, without Kafka: events are spread over 4 partitions as Kafka's default partitioner
spreads keyed records (a hash of the event id), and read in polls of ``--batch`` records per partition; a
group-scope worker takes its partitions' records merged in the order produced, as ``worker.partition_order: time``
does (``--order arrival``: the polls in turn, as a consumer returns a backlog). Each seed is one run of every
layout: it seeds the model, the synthetic stream (Agrawal, Friedman: seed 6 + the seed) and which events land on
which partition (the event ids), since one order of one stream is a single sample: the order alone moves a torch
MLP on Agrawal by several points. Every difference from 1 partition is the mean of the per-seed differences, with
its standard error.

Each worker holds its model set(s) as the worker does
(:class:`shared.steps.models.ModelSet`): one per partition in partition scope, one for all its partitions in group
scope; a group-scope worker syncs every ``--sync-every`` events it processed through the real
:class:`shared.sync.group.GroupSync` over a real Redis (its deltas and views go through Redis, signed, as in the
worker), and pulls the other's deltas every ``--pull-every-s`` of the bench's clock. The accuracy (MAE for
regression) is that of every prediction, prequential (predict, then learn), the figure a reader of the predictions
topic computes. Sync time and bytes are the sync's own (merges, deltas,
views), per sync.

    .venv/bin/python -m bench.group_quality --events 3000 --write-docs
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.common import write_marked_block
from shared.datasets import Sample, iter_source
from shared.learners.base import Learner, MergeMode, Row, Target
from shared.learners.registry import build_learner
from shared.settings import ModelSettings, PreprocessingSettings, SyncSettings
from shared.steps.models import ModelSet
from shared.sync.group import GroupSync, apply_merge_choice

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "models.md"
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
#: (column title, per-partition model sets, workers, sync.merge) of every layout measured
LAYOUTS: list[tuple[str, bool, int, str | None]] = [
    ("1 partition", True, 0, None),
    ("4 partitions, partition scope", True, 1, None),
    ("group scope, 1 worker", False, 1, None),
    ("group, 2 workers, native merge", False, 2, "native"),
    ("group, 2 workers, replay", False, 2, "replay"),
]
NATIVE, REPLAY = 3, 4
#: the stream's rate for the bench's clock (:class:`EventClock`)
EVENTS_PER_S = 1000.0


@dataclass(slots=True)
class Score:
    """Prequential accuracy (classification) or MAE (regression), and the syncs it took."""

    regression: bool
    total: float = 0.0
    count: int = 0
    #: the same over the second half of the stream (after the warm-up; Agrawal: after its concept change)
    late_total: float = 0.0
    late_count: int = 0
    sync_s: list[float] = field(default_factory=list)
    sync_bytes: list[int] = field(default_factory=list)
    #: per worker: peak model memory (the ``streamlearn_model_memory_bytes`` estimate, views included, measured
    #: before every sync and at the end), and
    #: the seconds it spent predicting, learning and syncing
    memory: list[int] = field(default_factory=list)
    busy_s: list[float] = field(default_factory=list)

    def add(self, prediction: Target | None, label: Target, late: bool) -> None:
        if self.regression:
            loss = abs(float(prediction if isinstance(prediction, int | float) else 0.0) - float(label))
        else:
            loss = float(prediction == label)
        self.count += 1
        self.total += loss
        if late:
            self.late_count += 1
            self.late_total += loss

    @property
    def value(self) -> float:
        return self.total / max(1, self.count)

    @property
    def late_value(self) -> float:
        return self.late_total / max(1, self.late_count)

    def pool(self, other: Score) -> None:
        """Add another seed's run (equal event counts: the pooled value is the mean over seeds)."""
        self.total += other.total
        self.count += other.count
        self.late_total += other.late_total
        self.late_count += other.late_count
        self.sync_s += other.sync_s
        self.sync_bytes += other.sync_bytes
        if not self.memory:
            self.memory, self.busy_s = list(other.memory), list(other.busy_s)
            return
        self.memory = [max(pair) for pair in zip(self.memory, other.memory, strict=True)]
        self.busy_s = [sum(pair) for pair in zip(self.busy_s, other.busy_s, strict=True)]


class EventClock:
    """A clock driven by the processed events (``EVENTS_PER_S`` of them a second): what the bench's timers (torch's
    partial-batch wait, the views' TTL) read, so that a run does not depend on the machine's speed."""

    def __init__(self) -> None:
        self.events = 0

    def __call__(self) -> float:
        return self.events / EVENTS_PER_S


class Member:
    """One worker: its partitions, its model set(s), its sync."""

    def __init__(self, model: ModelSettings, partitions: list[int], *, group: GroupSync | None, per_partition: bool,
                 seed: int, clock: EventClock) -> None:
        self.partitions = partitions
        self.group = group
        self.clock = clock
        if per_partition:
            self.sets = {p: ModelSet({model.name: self._build(model, seed)}) for p in partitions}
        else:
            shared = ModelSet({model.name: self._build(model, seed)})
            self.sets = {p: shared for p in partitions}
            if group is not None:
                group.adopt(shared, None)
        self.since_sync = 0
        self.busy_s = 0.0
        self.peak_memory = 0
        self.last_pull = 0.0

    def _build(self, model: ModelSettings, seed: int) -> Learner:
        learner = build_learner(model, PreprocessingSettings(), seed)
        if hasattr(learner, "_clock"):  # torch: a partial mini-batch waits by events, not by this machine's speed
            learner._clock = self.clock
        return learner

    def process(self, partitions: list[int], rows: list[Row], labels: list[Target], late: list[bool], score: Score,
                sync_every: int, pull_every_s: float = 0.0) -> None:
        """Predict and learn ``rows`` (``partitions``: each row's; one model set's, so one partition's in partition
        scope)."""
        started = time.perf_counter()
        model_set = self.sets[partitions[0]]
        if self.group is not None and pull_every_s > 0 and self.clock() - self.last_pull >= pull_every_s:
            self.group.pull(model_set)
            self.last_pull = self.clock()
        (name, learner), = model_set.learners.items()
        for output, label, is_late in zip(learner.process(rows, list(labels)), labels, late, strict=True):
            score.add(output.prediction, label, is_late)
        self.clock.events += len(rows)
        model_set.learned[name] = model_set.learned.get(name, 0) + len(rows)
        for partition, count in Counter(partitions).items():
            source = f"events:{partition}"
            model_set.sources[source] = model_set.sources.get(source, 0) + count
        self.since_sync += len(rows)
        self.busy_s += time.perf_counter() - started
        if self.group is not None and (self.since_sync >= sync_every or self.group.warmup_due(model_set)):
            self.sync(score)

    def sync(self, score: Score) -> None:
        assert self.group is not None
        self.peak_memory = max(self.peak_memory, self.memory_bytes())  # the replay buffer is fullest now
        started = time.perf_counter()
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
        self.busy_s += time.perf_counter() - started

    def memory_bytes(self) -> int:
        """What the worker's ``streamlearn_model_memory_bytes`` reports: every distinct model it holds."""
        distinct = {id(model_set): model_set for model_set in self.sets.values()}
        return sum(learner.memory_bytes() for model_set in distinct.values()
                   for learner in model_set.learners.values())


def _partition_of(event_id: str) -> int:
    return zlib.crc32(event_id.encode()) % PARTITIONS


def run_layout(layout: tuple[str, bool, int, str | None], model: ModelSettings, samples: list[Any], source: str, *,
               client: redis.Redis, batch: int, sync_every: int, seed: int, pull_every_s: float = 0.0,
               order: str = "time") -> Score:
    """The prequential score of one model under one layout (``order``: the worker's ``partition_order``)."""
    _, per_partition, workers, merge = layout
    score = Score(model.task == "regression")
    namespace = f"bench{time.monotonic_ns()}"
    clock = EventClock()
    if workers == 0:
        members = [Member(model, [0], group=None, per_partition=True, seed=seed, clock=clock)]
        partition_of = {i: 0 for i in range(len(samples))}
    else:
        partition_of = {i: _partition_of(f"{source}-{seed}-{i}") for i in range(len(samples))}
        if workers == 1:
            members = [Member(model, list(range(PARTITIONS)), group=None, per_partition=per_partition, seed=seed,
                              clock=clock)]
        else:
            settings = SyncSettings(every_events=sync_every, merge=merge or "auto")
            members = [
                Member(model, parts, per_partition=False, seed=seed, clock=clock,
                       group=GroupSync(client, namespace, "bench", b"bench-key", settings, clock=clock))
                for parts in ([0, 1], [2, 3])
            ]
    owner = {p: m for m in members for p in m.partitions}
    queues: dict[int, list[int]] = {}
    for index in range(len(samples)):
        queues.setdefault(partition_of[index], []).append(index)
    def feed(member: Member, chunk: list[int]) -> None:
        member.process([partition_of[i] for i in chunk], [Row(samples[i].features) for i in chunk],
                       [samples[i].label for i in chunk], [2 * i >= len(samples) for i in chunk],
                       score, sync_every, pull_every_s)

    if order == "time" and not per_partition:
        # worker.partition_order: time: each worker takes its partitions' records merged in produced order, in
        # polls of up to ``batch`` records per partition
        for start in range(0, len(samples), batch * len(queues)):
            window = range(start, min(len(samples), start + batch * len(queues)))
            for member in members:
                mine = [i for i in window if owner[partition_of[i]] is member]
                for first in range(0, len(mine), batch):  # chunks of one poll's size: the syncs' cadence as before
                    feed(member, mine[first:first + batch])
    else:
        cursors = dict.fromkeys(queues, 0)
        while any(cursors[p] < len(q) for p, q in queues.items()):
            for partition in sorted(queues):  # one poll: up to ``batch`` records of each partition, round robin
                chunk = queues[partition][cursors[partition]:cursors[partition] + batch]
                cursors[partition] += len(chunk)
                if chunk:
                    feed(owner[partition], chunk)
    score.memory = [max(member.peak_memory, member.memory_bytes()) for member in members]
    score.busy_s = [member.busy_s for member in members]
    return score


def default_design(model: ModelSettings) -> int:
    """The layout index of the design ``sync.merge: auto`` picks for ``model`` (native or replay)."""
    learner = build_learner(model, PreprocessingSettings(), 0)
    return REPLAY if apply_merge_choice(learner, SyncSettings()) is MergeMode.REPLAY else NATIVE


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


def _sync_cell(score: Score) -> str:
    count = max(1, len(score.sync_s))
    return (f"{1000 * sum(score.sync_s) / count:.1f} ms, {sum(score.sync_bytes) / count / 1024:.1f} KiB "
            f"({len(score.sync_s)})")


def _mib(size: float) -> str:
    return f"{size / 2**20:.2f}"


def _within(value: float, base: float, regression: bool) -> bool:
    return abs(value / base - 1) <= 0.03 if regression else (base - value) <= 0.01


def _difference(value: float, base: float, regression: bool) -> float:
    """Accuracy points, or MAE in %."""
    return (value / base - 1) * 100 if regression else (value - base) * 100


def _cell(value: float, base: float, regression: bool, paired: list[tuple[float, float]] | None = None) -> str:
    """The value and its difference from ``base``; with ``paired`` (per seed: value, base), the mean of the per-seed
    differences and its standard error."""
    unit = " %" if regression else ""
    if not paired:
        return f"{value:.3f} ({_difference(value, base, regression):+.1f}{unit})"
    differences = [_difference(v, b, regression) for v, b in paired]
    error = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else 0.0
    return f"{value:.3f} ({statistics.fmean(differences):+.1f} ± {error:.1f}{unit})"


def measure(spec: dict[str, Any], samples_by_seed: dict[int, list[Sample]], source: str, args: argparse.Namespace,
            client: redis.Redis) -> tuple[str, str]:
    """One model on one stream, every layout, every seed: its quality row and its cost row."""
    model = ModelSettings(**spec)
    regression = model.task == "regression"
    scores: list[Score] = []
    per_seed: list[list[float]] = []
    for layout in LAYOUTS:
        pooled = Score(regression)
        values = []
        for seed in args.seeds:
            score = run_layout(layout, model, samples_by_seed[seed], source, client=client, batch=args.batch,
                               sync_every=args.sync_every, seed=seed, pull_every_s=args.pull_every_s,
                               order=args.order)
            values.append(score.value)
            pooled.pool(score)
        print(f"  {source} {spec['name']} {layout[0]}: per seed {' '.join(f'{v:.3f}' for v in values)}", flush=True)
        scores.append(pooled)
        per_seed.append(values)
    base = scores[0].value
    paired = [list(zip(values, per_seed[0], strict=True)) for values in per_seed]
    samples = samples_by_seed[args.seeds[0]]
    chosen = default_design(model)
    met = _within(scores[2].value, base, regression) and _within(scores[chosen].value, base, regression)
    metric = "MAE" if regression else "accuracy"
    design = "replay" if chosen == REPLAY else "native"
    late = f"{scores[0].late_value:.3f} / {_cell(scores[chosen].late_value, scores[0].late_value, regression)}"
    quality = (f"| {source} ({len(samples)}) | {spec['name']} | {metric} | "
               + " | ".join(_cell(score.value, base, regression, paired[index] if index else None)
                            for index, score in enumerate(scores))
               + f" | {design} | {'yes' if met else 'no'} | {late} |")
    one = scores[0].memory[0]
    native_mem, replay_mem = max(scores[NATIVE].memory), max(scores[REPLAY].memory)
    busy = scores[0].busy_s[0]
    cost = (f"| {source} | {spec['name']} | {_sync_cell(scores[NATIVE])} | {_sync_cell(scores[REPLAY])} | "
            f"{_mib(one)} | {_mib(native_mem)} ({native_mem / one:.2f}x) | {_mib(replay_mem)} "
            f"({replay_mem / one:.2f}x) | {max(scores[NATIVE].busy_s) / busy:.2f} | "
            f"{max(scores[REPLAY].busy_s) / busy:.2f} |")
    return quality, cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000, help="events of Phishing (default 3000)")
    parser.add_argument("--drift-events", type=int, default=12_000,
                        help="events of the Agrawal stream, its concept change in the middle (default 12000)")
    parser.add_argument("--regression-events", type=int, default=6000,
                        help="events of the Friedman stream (default 6000)")
    parser.add_argument("--batch", type=int, default=100, help="records per partition per poll (default 100)")
    parser.add_argument("--order", choices=["time", "arrival"], default="time",
                        help="how a group-scope worker interleaves its partitions: merged in produced order, as "
                             "worker.partition_order: time does, or polls of --batch per partition in turn "
                             "(default: time)")
    parser.add_argument("--sync-every", type=int, default=SyncSettings().every_events,
                        help="events per worker between syncs (default: the worker's sync.every_events)")
    parser.add_argument("--pull-every-s", type=float, default=SyncSettings().pull_every_s,
                        help="between syncs, read the others' deltas every this many seconds of the stream's clock "
                             "(1,000 events a second; 0: never; default: the worker's sync.pull_every_s)")
    parser.add_argument("--seeds", type=lambda text: [int(x) for x in text.split(",")], default=list(range(1, 11)),
                        help="seeds; every figure is the mean over them (default 1 to 10)")
    parser.add_argument("--redis-url", default=None, help="a Redis to use (default: start one)")
    parser.add_argument("--only", default=None, help="comma-separated model names (default: all)")
    parser.add_argument("--streams", default=None, help="comma-separated stream names (default: all)")
    parser.add_argument("--write-docs", action="store_true", help=f"write the table into {DOCS.relative_to(REPO)}")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    streams = set(args.streams.split(",")) if args.streams else None
    quality_rows: list[str] = []
    cost_rows: list[str] = []
    started = time.monotonic()
    with redis_client(args.redis_url) as client:
        for source, models, drift in STREAMS:
            if streams and source not in streams:
                continue
            events = args.drift_events if drift else args.regression_events if source == "friedman" else args.events
            drift_at = int(events * drift) if drift else None
            # feature names as the worker sees them after decoding JSON: strings (Friedman's are ints in River)
            samples_by_seed = {
                seed: [Sample({str(name): value for name, value in sample.features.items()}, sample.label)
                       for sample in iter_source(source, seed=6 + seed, limit=events, drift_at=drift_at)]
                for seed in args.seeds}
            for spec in models:
                if only and spec["name"] not in only:
                    continue
                quality, cost = measure(spec, samples_by_seed, source, args, client)
                print(quality, flush=True)
                print(cost, flush=True)
                quality_rows.append(quality)
                cost_rows.append(cost)
    elapsed = time.monotonic() - started
    command = (f"`.venv/bin/python -m bench.group_quality --events {args.events} --drift-events {args.drift_events} "
               f"--regression-events {args.regression_events} "
               f"--sync-every {args.sync_every} --pull-every-s {args.pull_every_s:g} --batch {args.batch} "
               f"--order {args.order} "
               f"--seeds {','.join(map(str, args.seeds))}`")
    lines = [
        f"Measured {datetime.date.today().isoformat()} with {command} ({elapsed:.0f} s). In brackets: the difference "
        "from 1 partition (accuracy points; MAE in %). Target: group scope within 1.0 point (classifiers) or 3 % MAE "
        "(regressors) of 1 partition on 1 worker and on 2 workers with the design `sync.merge: auto` picks "
        "(*default*). Native merge: exact sums, FedAvg or views (docs/models.md); replay: each worker learns the "
        "others' examples; between syncs, a worker reads what the other published every `--pull-every-s` "
        "seconds of the bench's clock (1,000 events a second; `sync.pull_every_s`), learning replayed examples at "
        "once. The stream's event count is in brackets. Every figure is the mean over the seeds "
        "(each seeds the model, the synthetic stream and the partition of every event: one stream order is a "
        "single sample); a difference is the mean of the per-seed differences ± its standard error. "
        "Last column: the same over the second half of the stream only (after the warm-up; Agrawal: after its "
        "concept change), 1 partition and the default 2-worker design.",
        "",
        "| stream | model | metric | " + " | ".join(title for title, *_ in LAYOUTS)
        + " | default | target met | 2nd half: 1 partition / default |",
        "|---|---|---|" + "---|" * len(LAYOUTS) + "---|---|---|",
        *quality_rows,
        "",
        "Cost of the two 2-worker designs. Sync: mean time and bytes (published + read) per sync of a worker, and "
        "the number of syncs of both. Memory: peak model memory per worker (before every sync and at the end: the "
        "`streamlearn_model_memory_bytes` estimate: the model, plus in group scope the copy a delta is measured "
        "from, the other worker's model that votes, or the replay buffer), MiB, the busiest worker's, and its ratio "
        "to 1 partition (acceptance 3: at most 2x). Work: the busiest worker's seconds predicting, learning and "
        "syncing over 1 partition's (2 workers sharing the load perfectly: 0.5).",
        "",
        "| stream | model | sync, native | sync, replay | memory, 1 partition | memory, native | memory, replay "
        "| work, native | work, replay |",
        "|---|---|---|---|---|---|---|---|---|",
        *cost_rows,
    ]
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        write_marked_block(DOCS, "group-quality", table, "Group scope: quality with 4 partitions and 2 workers")
        print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
