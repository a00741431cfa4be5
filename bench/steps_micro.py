"""Per-event cost of the worker's steps outside the model and the Kafka client, before vs now, in-process.

``python -m bench.steps_micro [--n 20000] [--batch 500] [--repeat 5] [--baseline a1093f2] [--no-redis]``

Builds ``--n`` events of the profile's source (phishing, seed 7, inline labels, as ``bench.profile_worker``
produces them) as polled batches, runs the logistic-regression model step once to get the outputs, then times
each step on the same batches: the baseline (the step's modules as they were at ``--baseline``, loaded from git)
against the code in the working tree. Each figure is the best of ``--repeat`` runs (baseline and now taking turns),
in microseconds per event, with a fresh step (fresh scoreboards, detectors, dedup window) for every run. Dedup
needs Redis: a local ``redis-server`` is started on a free port unless ``--no-redis``. Publish sends into a list
(no Kafka).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from services.replayer.replay import event_record
from shared.datasets import iter_source
from shared.learners.registry import build_learner
from shared.monitoring.metrics import Metrics
from shared.settings import Settings, load_settings
from shared.steps.batch import Batch, Record
from shared.steps.champion import ChampionSelector
from shared.steps.clean import CleanStep
from shared.steps.decode import DecodeStep
from shared.steps.dedup import DedupStep
from shared.steps.drift import DriftStep
from shared.steps.models import ModelStep
from shared.steps.publish import PublishStep
from shared.steps.score import ScoreStep

SOURCE, SEED = "phishing", 7
TOPIC = "events"
BASELINE = "a1093f2"

#: baseline modules loaded from git: (alias, path); imports of the listed shared modules go to the aliases
_BASELINE_MODULES = [
    ("quality", "shared/monitoring/quality.py"),
    ("data_drift", "shared/monitoring/data_drift.py"),
    ("drift_monitor", "shared/monitoring/drift.py"),
    ("contract", "shared/contract.py"),
    ("score", "shared/steps/score.py"),
    ("drift", "shared/steps/drift.py"),
    ("decode", "shared/steps/decode.py"),
    ("clean", "shared/steps/clean.py"),
    ("dedup_state", "shared/state/dedup.py"),
    ("dedup", "shared/steps/dedup.py"),
    ("publish", "shared/steps/publish.py"),
]
_REDIRECTS = {
    "from shared.monitoring.quality import": "from _baseline.quality import",
    "from shared.monitoring.data_drift import": "from _baseline.data_drift import",
    "from shared.monitoring.drift import": "from _baseline.drift_monitor import",
    "from shared.state.dedup import": "from _baseline.dedup_state import",
}


def load_baseline(commit: str) -> dict[str, types.ModuleType]:
    """The baseline steps' modules at ``commit`` (``git show``), importing each other rather than today's."""
    sys.modules.setdefault("_baseline", types.ModuleType("_baseline"))
    modules: dict[str, types.ModuleType] = {}
    for alias, path in _BASELINE_MODULES:
        source = subprocess.run(["git", "show", f"{commit}:{path}"], check=True, capture_output=True,
                                text=True).stdout
        for old, new in _REDIRECTS.items():
            source = source.replace(old, new)
        module = types.ModuleType(f"_baseline.{alias}")
        module.__file__ = f"{commit}:{path}"
        sys.modules[module.__name__] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)  # our own code, from git
        modules[alias] = module
    return modules


def make_batches(n: int, batch: int) -> list[list[Record]]:
    """``n`` events as the replayer writes them (inline labels), in polled batches of ``batch``."""
    records = []
    for i, sample in enumerate(iter_source(SOURCE, seed=SEED, limit=n)):
        key, value = event_record(sample, f"bench-{i:09d}", with_label=True, ts=1.7e9 + i / 1000)
        records.append(Record(topic=TOPIC, partition=0, offset=i, key=key, value=value, timestamp_ms=1_700_000_000_000))
    return [records[i:i + batch] for i in range(0, len(records), batch)]


def prepare(settings: Settings, batches: list[list[Record]]) -> ModelStep:
    """Decode, clean and run the model once, so every record has its event, features and outputs."""
    decode, clean = DecodeStep(settings.limits), CleanStep(settings.cleaning)
    model_step = ModelStep(settings.models, lambda m: build_learner(m, settings.preprocessing, settings.worker.seed))
    model_step.assign((TOPIC, 0))
    for records in batches:
        batch = Batch(records, 0.0)
        decode.process(batch)
        clean.process(batch)
        model_step.process(batch)
    return model_step


def time_steps(makers: list[Callable[[], Any]], batches: list[list[Record]], repeat: int) -> list[float]:
    """Per maker, the best of ``repeat`` runs of a fresh step over every batch, in microseconds per event.

    The makers take turns within each repetition, so a change in the machine's load hits them alike.
    """
    n = sum(len(records) for records in batches)
    best = [float("inf")] * len(makers)
    for _ in range(repeat):
        for i, make in enumerate(makers):
            step = make()
            wrapped = [Batch(records, time.time()) for records in batches]
            started = time.perf_counter()
            for batch in wrapped:
                step.process(batch)
            best[i] = min(best[i], time.perf_counter() - started)
    return [seconds / n * 1e6 for seconds in best]


@contextlib.contextmanager
def redis_url(enabled: bool) -> Iterator[str | None]:
    if not enabled:
        yield None
        return
    from services.stack import RedisServer, free_ports

    with tempfile.TemporaryDirectory() as state_dir:
        (port,) = free_ports(1)
        server = RedisServer(Path(state_dir), port=port, die_with_parent=True)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", default=BASELINE, help="git commit of the baseline steps")
    parser.add_argument("--no-redis", action="store_true", help="skip dedup (needs a local redis-server)")
    parser.add_argument("--steps", default="", help="comma-separated steps to time (default: all)")
    args = parser.parse_args(argv)

    settings = load_settings(None, models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}])
    base = load_baseline(args.baseline)
    batches = make_batches(args.n, args.batch)
    model_step = prepare(settings, batches)
    tasks = {name: learner.task for name, learner in model_step.sets[(TOPIC, 0)].learners.items()}
    window = settings.metrics.rolling_window

    def metrics() -> Metrics:
        return Metrics(CollectorRegistry())

    def drift(module: Any) -> Callable[[], Any]:
        def make() -> Any:
            champion = ChampionSelector(model_step.model_names, settings.champion)
            score = ScoreStep(metrics(), tasks, window)
            return module(settings.drift, metrics(), model_step, tasks, champion, score.rolling,
                          settings.champion.metric)
        return make

    sent: list[Any] = []

    def publish(module: Any) -> Callable[[], Any]:
        def make() -> Any:
            sent.clear()
            return module(lambda topic, value, key, headers: sent.append(value), settings.kafka.topics,
                          model_step, lambda: model_step.model_names[0], metrics())
        return make

    rows: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("decode", lambda: base["decode"].DecodeStep(settings.limits), lambda: DecodeStep(settings.limits)),
        ("clean", lambda: base["clean"].CleanStep(settings.cleaning), lambda: CleanStep(settings.cleaning)),
        ("score", lambda: base["score"].ScoreStep(metrics(), tasks, window),
         lambda: ScoreStep(metrics(), tasks, window)),
        ("drift", drift(base["drift"].DriftStep), drift(DriftStep)),
        ("publish", publish(base["publish"].PublishStep), publish(PublishStep)),
    ]
    results: list[tuple[str, float, float]] = []
    with redis_url(not args.no_redis) as url:
        if url is not None:
            import redis

            from shared.state.dedup import DedupWindow

            client = redis.Redis.from_url(url)

            def dedup(window_cls: Any, step_cls: Any) -> Callable[[], Any]:
                def make() -> Any:
                    group = uuid.uuid4().hex[:8]
                    return step_cls(window_cls(client, "bench", group, settings.dedup.window_s,
                                               settings.dedup.max_entries), metrics())
                return make

            rows.insert(1, ("dedup", dedup(base["dedup_state"].DedupWindow, base["dedup"].DedupStep),
                            dedup(DedupWindow, DedupStep)))
        wanted = set(filter(None, args.steps.split(",")))
        for name, make_baseline, make_new in rows:
            if wanted and name not in wanted:
                continue
            before, after = time_steps([make_baseline, make_new], batches, args.repeat)
            results.append((name, before, after))
    n = sum(len(records) for records in batches)
    print(f"{n} events of {SOURCE} (seed {SEED}), batches of {args.batch}, best of {args.repeat}; "
          f"baseline {args.baseline} vs working tree; us per event")
    print(f"{'step':<10}{'baseline':>10}{'now':>10}{'speed-up':>10}")
    for name, before, after in results:
        print(f"{name:<10}{before:>10.2f}{after:>10.2f}{before / after:>9.2f}x")
    total_before = sum(r[1] for r in results)
    total_after = sum(r[2] for r in results)
    print(f"{'total':<10}{total_before:>10.2f}{total_after:>10.2f}{total_before / total_after:>9.2f}x")


if __name__ == "__main__":
    main()
