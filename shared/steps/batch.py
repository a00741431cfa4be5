"""The unit that flows through the worker's steps: a polled batch of records and what each step added."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from shared.contract import Event
from shared.learners.base import Features, Output


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record is dead-lettered: a stable code (a metric label) and a reason a person can act on."""

    code: str
    reason: str


class InvalidMessage(Exception):
    """Raised by a decoder for input that can never be processed; the record goes to the dead-letter topic."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.rejection = Rejection(code, reason)


@dataclass(slots=True)
class Record:
    """One Kafka record and the results of the steps so far."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    event: Event | None = None
    rejection: Rejection | None = None
    duplicate: bool = False
    features: Features | None = None
    outputs: dict[str, Output] = field(default_factory=dict)
    #: per model, the examples it had learned when it predicted this record (the ``model_version`` published)
    learned_before: dict[str, int] = field(default_factory=dict)
    #: learning was deferred to the delayed-label join (no inline label)
    pending_label: bool = False
    #: replayed after a crash: already published (committed offset), so it must not be published again
    already_published: bool = False

    @property
    def is_valid(self) -> bool:
        """Valid and not a duplicate: it is to be predicted."""
        return self.event is not None and self.rejection is None and not self.duplicate


@dataclass(slots=True)
class Batch:
    """Records polled together, in partition order (offsets ascending within a partition)."""

    records: list[Record]
    polled_at: float

    def valid(self) -> list[Record]:
        """The records still to be predicted."""
        return [r for r in self.records if r.is_valid]

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition), the offset to commit once this batch is done (last offset + 1)."""
        offsets: dict[tuple[str, int], int] = {}
        for record in self.records:
            tp = (record.topic, record.partition)
            if record.offset + 1 > offsets.get(tp, -1):
                offsets[tp] = record.offset + 1
        return offsets


class Step(Protocol):
    """One stage of the worker's chain. It reads and annotates the batch in place."""

    def process(self, batch: Batch) -> None:
        """Do this step's work on every record that needs it."""
        ...
