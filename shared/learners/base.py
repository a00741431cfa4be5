"""The one interface every model behind streamlearn implements.

A learner sees cleaned feature dicts (``{name: float | str | bool | None}``), an optional entity key per
row, and labels. It owns its own preprocessing (a River pipeline prefix, or a torch vectorizer), so that a
snapshot is the whole state needed to predict.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from shared.learners.replay import ReplayLog

FeatureValue = float | int | str | bool | None
Features = dict[str, FeatureValue]
Target = bool | int | float | str


class Task(enum.StrEnum):
    """What a learner predicts."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"
    ANOMALY = "anomaly"

    @property
    def is_classification(self) -> bool:
        return self in (Task.BINARY, Task.MULTICLASS)


@dataclass(frozen=True, slots=True)
class Output:
    """One prediction: the value, class probabilities for classifiers, an anomaly score for detectors."""

    prediction: Target | None
    proba: dict[Target, float] = field(default_factory=dict)
    score: float | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """One input row: the features and the entity key (used by sequence models, ignored by others)."""

    features: Features
    key: str | None = None


class MergeMode(enum.StrEnum):
    """How a learner's state combines with the other workers' in ``sync.scope: group`` (docs/models.md)."""

    #: sufficient statistics: every member's delta adds up exactly (naive Bayes, scaler and imputer statistics)
    EXACT = "exact"
    #: parameters: the weighted mean of the members' deltas (FedAvg; weights = examples learned since the sync)
    AVERAGE = "average"
    #: cannot merge: the other members' models as of their last sync vote with this one on every prediction
    VIEW = "view"
    #: examples: each member learns the labelled examples the others learned since their last sync
    #: (:mod:`shared.learners.replay`); any kind can, chosen by ``sync.merge``
    REPLAY = "replay"


class SnapshotError(Exception):
    """A snapshot could not be restored: wrong kind, wrong format version, corrupt bytes."""


class Learner(abc.ABC):
    """An online model. Prequential use: ``predict`` a row, then ``learn`` it once its label is known.

    Implementations must not mutate or keep references to the caller's feature dicts.
    """

    #: the registry name of this kind of learner, e.g. ``"river"`` or ``"torch.mlp"``
    kind: str = ""
    task: Task
    #: group scope in replay mode: the examples learned since the last sync (``None``: not recording)
    _replay: ReplayLog | None = None

    @abc.abstractmethod
    def predict_one(self, row: Row) -> Output:
        """Predict one row with the current state."""

    @abc.abstractmethod
    def learn_one(self, row: Row, target: Target | None) -> None:
        """Update the model with one row. ``target`` is ``None`` only for anomaly detectors."""

    def predict_many(self, rows: Sequence[Row]) -> list[Output]:
        """Predict several rows with the current state (no learning in between)."""
        return [self.predict_one(row) for row in rows]

    def learn_many(self, rows: Sequence[Row], targets: Sequence[Target | None]) -> None:
        """Learn several rows in order."""
        for row, target in zip(rows, targets, strict=True):
            self.learn_one(row, target)

    def process(self, rows: Sequence[Row], targets: Sequence[Target | None]) -> list[Output]:
        """Prequential batch: for each row in order, predict it, then learn it when its target is known.

        The result must equal one-at-a-time ``predict_one`` / ``learn_one``; subclasses may override it
        with a faster path that keeps that guarantee.
        """
        outputs: list[Output] = []
        learns_unlabelled = self.task is Task.ANOMALY
        for row, target in zip(rows, targets, strict=True):
            outputs.append(self.predict_one(row))
            if target is not None or learns_unlabelled:
                self.learn_one(row, target)
        return outputs

    @abc.abstractmethod
    def snapshot(self) -> bytes:
        """Serialize the whole state (weights, preprocessing, per-entity buffers)."""

    @classmethod
    @abc.abstractmethod
    def restore(cls, data: bytes) -> Self:
        """Rebuild a learner from :meth:`snapshot` bytes; raise :class:`SnapshotError` if they do not fit."""

    @abc.abstractmethod
    def clone(self) -> Self:
        """An untrained copy with the same parameters."""

    @abc.abstractmethod
    def memory_bytes(self) -> int:
        """An estimate of the memory the model holds."""

    def train_if_due(self) -> bool:
        """Train work that waited too long (a torch model's partial mini-batch); whether anything trained.

        The worker calls it on every loop iteration, so that a quiet stream still trains. Learners that
        train on every ``learn_one`` have nothing to do.
        """
        return False

    def sequence_keys(self) -> int:
        """Entities whose recent events the model keeps (0 for models that read only the current event)."""
        return 0

    # --- merging across the workers of a group (sync.scope: group; docs/models.md) -------------------------
    def merge_mode(self) -> MergeMode:
        """How this learner merges; the default, :attr:`MergeMode.VIEW`, needs nothing more than snapshots."""
        return MergeMode.VIEW

    def sync_delta(self) -> bytes | None:
        """What was learned since the last :meth:`mark_synced` (JSON bytes), ``None`` for a view-mode learner."""
        return None

    def merge(self, own: bytes | None, own_weight: int, others: Sequence[tuple[bytes, int]]) -> None:
        """Merge other members' :meth:`sync_delta` s (with the examples each holds) into this learner.

        ``own`` is this learner's own delta since the last sync (taken just before), ``own_weight`` its examples.
        View-mode learners merge nothing (their caller uses :meth:`set_views` instead).
        """
        if others and self.merge_mode() is not MergeMode.VIEW:
            raise NotImplementedError(f"{type(self).__name__} declares {self.merge_mode()} but does not merge")

    def mark_synced(self) -> None:
        """Remember the current state as the base the next :meth:`sync_delta` is measured from."""
        return None

    def replay(self, max_examples: int) -> bool:
        """Switch to :attr:`MergeMode.REPLAY`: record the examples learned from now on (at most ``max_examples``
        between two syncs) and learn the other members' examples at a merge. Whether this kind can (kinds that
        do not record what they learn keep their own mode)."""
        return False

    def mute_replay(self, muted: bool) -> None:
        """Stop (or resume) recording examples for the group: a member holding every partition has nobody to
        send them to (a member that joins restores this one's checkpoint, which holds what they taught)."""
        if self._replay is not None:
            self._replay.muted = muted

    def replay_dropped(self) -> int:
        """Examples learned but not recorded for the group because the replay buffer was full."""
        return 0 if self._replay is None else self._replay.dropped

    def set_views(self, views: Sequence[Learner]) -> None:
        """Other members' models (as of their last sync) that vote with this one; only view-mode learners use
        them, and they are read-only: never learned."""
        return None

    def describe(self) -> dict[str, Any]:
        """Parameters worth showing in logs and docs."""
        return {"kind": self.kind, "task": str(self.task)}
