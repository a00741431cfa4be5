"""Predict with every model, then learn inline labels (prequential order).

``sync.scope: partition``: one model set per input partition. ``sync.scope: group``: one model set shared by every
partition this worker holds (``sets`` maps each partition to the same object), merged with the other workers' at
syncs (:mod:`shared.sync.group`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from shared.learners.base import Learner, Output, Row, Target
from shared.settings import ModelSettings
from shared.steps.batch import Batch, Record

TopicPartition = tuple[str, int]
LearnerFactory = Callable[[ModelSettings], Learner]
#: how long :meth:`ModelStep.memory_bytes` reuses its last answer at least (it walks every model's object graph: for
#: a forest, tens of milliseconds, which the worker would otherwise pay at every commit)
MEMORY_INTERVAL_S = 15.0
#: and at most this fraction of the time goes to it: a walk that took t seconds is reused for t / fraction seconds
#: when that is longer (a 10-tree ARF: 25 ms, so the 15 s floor; a walk of 0.5 s: every 50 s)
MEMORY_MAX_TIME_FRACTION = 0.01


def config_fingerprint(model: ModelSettings) -> str:
    """A short stable hash of a model's configuration, part of ``model_version``."""
    raw = orjson.dumps(model.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:8]


@dataclass(slots=True)
class ModelSet:
    """The models that learn from one input partition, and how many examples each has learned."""

    learners: dict[str, Learner]
    learned: dict[str, int] = field(default_factory=dict)
    #: labelled examples learned per source partition (``topic:partition``), merged ones included (group scope:
    #: how the group counts that every label is learned exactly once)
    sources: dict[str, int] = field(default_factory=dict)

    def version(self, name: str, fingerprint: str) -> str:
        """``<config hash>.<examples learned>``: changes whenever the model changes."""
        return f"{fingerprint}.{self.learned.get(name, 0)}"


class ModelStep:
    """Runs every model on the valid records of a batch.

    Records with an inline label are learned right after they are predicted; the others are marked
    ``pending_label`` for the delayed-label join.
    """

    def __init__(
        self, models: Sequence[ModelSettings], factory: LearnerFactory, *,
        monotonic: Callable[[], float] = time.monotonic, scope: str = "partition",
    ) -> None:
        self._models = list(models)
        #: "group": every partition shares one model set; "partition": one per partition
        self.scope = scope
        self._factory = factory
        self.fingerprints = {m.name: config_fingerprint(m) for m in self._models}
        self.sets: dict[TopicPartition, ModelSet] = {}
        self._monotonic = monotonic
        #: the last :meth:`memory_bytes`: until when it holds, from when a model that has doubled what it learned
        #: may be walked again, for which model sets, and the answer
        self._memory: tuple[float, float, list[int], dict[str, int]] | None = None
        #: seconds the last :meth:`memory_bytes` walk took, and :meth:`learned_total` then
        self.memory_walk_s = 0.0
        self.memory_walk_learned = 0

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self._models]

    def fresh_set(self) -> ModelSet:
        """Untrained models, built from the settings."""
        return ModelSet({m.name: self._factory(m) for m in self._models})

    def shared_set(self) -> ModelSet | None:
        """Group scope: the one model set of every held partition (``None`` when none is held)."""
        return next(iter(self.sets.values()), None) if self.scope == "group" else None

    def distinct_sets(self) -> list[ModelSet]:
        """Every model set once (in group scope, the shared one)."""
        unique: dict[int, ModelSet] = {}
        for model_set in self.sets.values():
            unique.setdefault(id(model_set), model_set)
        return list(unique.values())

    def assign(self, tp: TopicPartition, model_set: ModelSet | None = None) -> None:
        """Start serving a partition, with restored models or fresh ones (group scope: the shared set)."""
        if model_set is None:
            model_set = self.shared_set() or self.fresh_set()
        self.sets[tp] = model_set

    def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """Stop serving partitions (after their state was checkpointed)."""
        for tp in tps:
            self.sets.pop(tp, None)

    def process(self, batch: Batch) -> None:
        """Predict (and learn inline labels) per model set, each set's records in the batch's order: in group scope
        all partitions share one set, so a time-ordered batch is learned in produced order."""
        by_set: dict[int, tuple[ModelSet, list[Record]]] = {}
        for record in batch.records:
            if not record.is_valid:
                continue
            tp = (record.topic, record.partition)
            model_set = self.sets.get(tp)
            if model_set is None:
                model_set = self.sets[tp] = self.shared_set() or self.fresh_set()
            by_set.setdefault(id(model_set), (model_set, []))[1].append(record)
        for model_set, records in by_set.values():
            self._run(model_set, records)

    def _run(self, model_set: ModelSet, records: list[Record]) -> None:
        rows = [Row(r.features or {}, r.event.key if r.event else None) for r in records]
        targets: list[Target | None] = [r.event.label if r.event else None for r in records]
        n_labelled = sum(t is not None for t in targets)
        # labelled examples learned before each record, within this batch (a batch predicts as one by one would)
        before: list[int] = []
        count = 0
        for record, target in zip(records, targets, strict=True):
            record.pending_label = target is None
            before.append(count)
            count += target is not None
        for name, learner in model_set.learners.items():
            outputs: list[Output] = learner.process(rows, targets)
            learned = model_set.learned.get(name, 0)
            for record, output, k in zip(records, outputs, before, strict=True):
                record.outputs[name] = output
                record.learned_before[name] = learned + k
            model_set.learned[name] = learned + n_labelled
        if n_labelled:
            for record, target in zip(records, targets, strict=True):
                if target is not None:
                    source = f"{record.topic}:{record.partition}"
                    model_set.sources[source] = model_set.sources.get(source, 0) + 1

    def learn_delayed(self, tp: TopicPartition, rows: Sequence[Row], targets: Sequence[Target]) -> None:
        """Learn examples whose labels arrived late (from the delayed-label join)."""
        model_set = self.sets.get(tp)
        if model_set is None:
            return
        for name, learner in model_set.learners.items():
            learner.learn_many(rows, targets)
            model_set.learned[name] = model_set.learned.get(name, 0) + len(rows)
        if rows:
            source = f"{tp[0]}:{tp[1]}"
            model_set.sources[source] = model_set.sources.get(source, 0) + len(rows)

    def train_if_due(self) -> int:
        """Let every model train work that waited too long (see :meth:`Learner.train_if_due`); how many did."""
        return sum(
            learner.train_if_due() for model_set in self.distinct_sets() for learner in model_set.learners.values()
        )

    def sequence_keys(self) -> dict[str, int]:
        """Per model name, the entities whose recent events it keeps, over all partitions."""
        totals = {name: 0 for name in self.model_names}
        for model_set in self.distinct_sets():
            for name, learner in model_set.learners.items():
                totals[name] += learner.sequence_keys()
        return totals

    def learned_total(self) -> int:
        """Examples learned by every model of every set (how far the models may have grown)."""
        return sum(sum(model_set.learned.values()) for model_set in self.distinct_sets())

    def memory_bytes(self) -> dict[str, int]:
        """Per model name, the memory held over all partitions.

        Recomputed when the model sets changed, or once they have learned twice as many examples as at the last
        walk (a young model grows fast), else at most every ``MEMORY_INTERVAL_S``; and never sooner than
        walk-time / ``MEMORY_MAX_TIME_FRACTION`` after the last walk, unless the model sets changed.
        """
        now = self._monotonic()
        identity = [id(learner) for model_set in self.distinct_sets() for learner in model_set.learners.values()]
        learned = self.learned_total()
        cached = self._memory
        if cached is not None and cached[2] == identity:
            expires, doubled_from, _, totals = cached
            doubled = learned > 0 and learned >= 2 * self.memory_walk_learned
            if now < expires and not (doubled and now >= doubled_from):
                return dict(totals)
        totals = {name: 0 for name in self.model_names}
        for model_set in self.distinct_sets():
            for name, learner in model_set.learners.items():
                totals[name] += learner.memory_bytes()
        walk_s = max(0.0, self._monotonic() - now)
        self.memory_walk_s, self.memory_walk_learned = walk_s, learned
        spacing = walk_s / MEMORY_MAX_TIME_FRACTION
        self._memory = (now + max(MEMORY_INTERVAL_S, spacing), now + spacing, identity, totals)
        return dict(totals)

    def last_walk(self) -> tuple[float, int] | None:
        """The last :meth:`memory_bytes` walk: its seconds, and the examples learned then (``None``: none yet)."""
        return None if self._memory is None else (self.memory_walk_s, self.memory_walk_learned)
