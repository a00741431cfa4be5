"""Redis key naming shared by the state stores: ``<namespace>:<group>:<store>:<name>`` (see docs/state.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: where a Kafka record came from: (topic, partition, offset)
Position = tuple[str, int, int]


def _check_part(label: str, value: str) -> str:
    if not value:
        raise ValueError(f"{label} must not be empty")
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{label} must not contain whitespace: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class KeySpace:
    """The key prefix of one store: ``namespace:group:store``."""

    namespace: str
    group: str
    store: str

    def __post_init__(self) -> None:
        _check_part("namespace", self.namespace)
        _check_part("group", self.group)
        _check_part("store", self.store)

    @property
    def prefix(self) -> str:
        """``namespace:group:store:``, the start of every key of this store."""
        return f"{self.namespace}:{self.group}:{self.store}:"

    def key(self, *parts: str | int) -> str:
        """The key ``namespace:group:store:part1:part2...``."""
        return self.prefix + ":".join(str(part) for part in parts)


def source_of(topic: str, partition: int) -> str:
    """The stable name of one input partition inside stored values: ``topic:partition``."""
    return f"{topic}:{partition}"


def split_positions(positions: Sequence[Position] | None, count: int) -> list[tuple[str, int]] | None:
    """``(source, offset)`` pairs for a batch of ``count`` records, or ``None`` when positions are not given."""
    if positions is None:
        return None
    if len(positions) != count:
        raise ValueError(f"got {len(positions)} positions for {count} records")
    return [(source_of(topic, partition), offset) for topic, partition, offset in positions]
