"""What the benchmark's contenders share: the models, the events, the worker settings and result files."""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared.datasets import Sample, iter_source
from shared.settings import ModelSettings, Settings, load_settings

#: every contender reads the same source, so the same events
SOURCE = "phishing"
SEED = 7
#: model name -> the model's settings (the same model in the bare loop, the plain loop and the worker)
MODELS: dict[str, dict[str, Any]] = {
    "logreg": {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"},
    "arf": {"name": "arf", "estimator": "river.forest.ARFClassifier", "params": {"n_models": 10}},
    "mlp": {"name": "mlp", "kind": "torch.mlp", "params": {"batch_size": 64, "device": "cpu"}},
}
MODEL_TITLES = {
    "logreg": "StandardScaler + LogisticRegression (River)",
    "arf": "ARFClassifier, 10 trees (River)",
    "mlp": "torch MLP, batch 64",
}


def model_settings(model: str) -> ModelSettings:
    """The :class:`ModelSettings` of one of :data:`MODELS`."""
    return ModelSettings(**MODELS[model])


def samples(n: int) -> Iterator[Sample]:
    """The first ``n`` samples of the benchmark's source (what the replayer sends as events)."""
    return iter_source(SOURCE, seed=SEED, limit=n)


def worker_settings(
    *,
    bootstrap: str,
    model: str,
    events_topic: str,
    predictions_topic: str,
    group_id: str,
    redis_url: str | None,
    exactly_once: bool = True,
    commit_interval_s: float | None = None,
    linger_ms: int | None = None,
    checkpoint_background: bool = True,
    transactional_id: str | None = None,
    namespace: str | None = None,
    client: str = "kafka-python",
    scope: str | None = None,
) -> Settings:
    """The worker's settings for one run: everything on (validation, metrics, checkpoints, exactly-once).

    ``scope``: ``sync.scope`` (``group`` or ``partition``); None keeps the settings' default.
    """
    suffix = group_id
    kafka: dict[str, Any] = {
        "bootstrap_servers": bootstrap, "group_id": group_id, "exactly_once": exactly_once,
        "topics": {"events": events_topic, "predictions": predictions_topic,
                   "shadow_predictions": f"{predictions_topic}.shadow", "dead_letters": f"{events_topic}.dlq",
                   "labels": f"{events_topic}.labels"},
        "transactional_id": transactional_id or suffix, "client": client,
    }
    overrides: dict[str, Any] = {"kafka": kafka, "models": [MODELS[model]], "metrics": {"port": 0}}
    if commit_interval_s is not None:
        overrides["worker"] = {"commit_interval_s": commit_interval_s}
    if linger_ms is not None:
        kafka["linger_ms"] = linger_ms
    if not checkpoint_background:
        overrides["checkpoint"] = {"background": False}
    if scope is not None:
        overrides["sync"] = {"scope": scope}
    if redis_url is None:
        overrides["checkpoint"] = {"enabled": False}
    else:
        overrides["redis"] = {"url": redis_url, "namespace": namespace or f"bench-{suffix}"}
    return load_settings(None, **overrides)


@dataclass(slots=True)
class RunResult:
    """What one contender's process reports about its measured window (wall clock is ``time.time()``)."""

    contender: str
    model: str
    events: int = 0
    #: when the first event was received, and when the last one was processed and its output made durable
    started: float = 0.0
    finished: float = 0.0
    #: CPU seconds (user + system, all threads) of the process within the window
    cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(self.finished - self.started, 1e-9)

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def write(self, path: Path) -> None:
        """Write atomically, so that a reader never sees half a file."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> RunResult:
        return cls(**json.loads(path.read_text()))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of each live Python thread of this process, by thread name."""
    import threading

    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except (OSError, TypeError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[thread.name] = found.get(thread.name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return found


def thread_cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per thread, the CPU seconds between two :func:`thread_cpu_seconds` snapshots (threads started since count
    from zero)."""
    return {name: round(after[name] - before.get(name, 0.0), 3) for name in after}


def wait_for_file(path: Path, timeout_s: float, what: str, alive: Any = None) -> None:
    """Wait until ``path`` exists; ``alive()`` returning False (a dead child) fails at once."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited before it was done")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.02)


def write_marked_block(path: Path, name: str, body: str, heading: str) -> None:
    """Put ``body`` between the ``<!-- name:start -->`` and ``<!-- name:end -->`` lines of ``path`` (a generated
    table in the docs); where the markers are not there yet, append them under ``## heading``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8")
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
