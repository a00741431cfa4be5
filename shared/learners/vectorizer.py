"""Cleaned feature dicts to fixed-width float tensors, for the torch models.

Encoding is split in two so that batching never changes a result:

* :meth:`Vectorizer.encode` turns one feature dict into a *raw* float32 vector (numbers by slot, a presence
  mask, one-hot categories). It only ever assigns slots to new names, never changes an old slot.
* :meth:`Vectorizer.transform` standardizes raw vectors with the running statistics, which change only in
  :meth:`Vectorizer.learn` (called by the learner when it trains a mini-batch).

Names get slots first come, first served up to a fixed capacity, then by a stable hash (blake2b) of the name,
so the width never grows. See ``docs/models.md``.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from shared.learners.base import Features

_EPSILON = 1e-12


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class SlotTable:
    """Names to slots in ``[0, capacity)``: the first ``capacity`` names get their own slot, later ones a hashed one."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.slots: dict[str, int] = {}

    def slot(self, name: str) -> int:
        """The slot of ``name``, assigning the next free one to a new name while any is left."""
        slot = self.slots.get(name)
        if slot is not None:
            return slot
        if len(self.slots) < self.capacity:
            slot = self.slots[name] = len(self.slots)
            return slot
        return stable_hash(name) % self.capacity

    def memory_bytes(self) -> int:
        return sys.getsizeof(self.slots) + sum(sys.getsizeof(name) + 28 for name in self.slots)


class RunningStats:
    """Per-slot count, mean and sum of squared deviations (Welford, merged batch-wise as in Chan et al.)."""

    def __init__(self, width: int) -> None:
        self.count = np.zeros(width, dtype=np.float64)
        self.mean = np.zeros(width, dtype=np.float64)
        self.m2 = np.zeros(width, dtype=np.float64)

    def update(self, values: np.ndarray, present: np.ndarray) -> None:
        """Add a batch: ``values`` and ``present`` (0/1) of shape ``(batch, width)``; absent values are ignored."""
        values = values.astype(np.float64)
        present = present.astype(np.float64)
        batch_count = present.sum(axis=0)
        seen = batch_count > 0
        if not seen.any():
            return
        safe_count = np.where(seen, batch_count, 1.0)
        batch_mean = (values * present).sum(axis=0) / safe_count
        batch_m2 = (present * (values - batch_mean) ** 2).sum(axis=0)
        total = self.count + batch_count
        safe_total = np.where(seen, total, 1.0)
        delta = batch_mean - self.mean
        new_mean = self.mean + delta * batch_count / safe_total
        new_m2 = self.m2 + batch_m2 + delta**2 * self.count * batch_count / safe_total
        self.mean = np.where(seen, new_mean, self.mean)
        self.m2 = np.where(seen, new_m2, self.m2)
        self.count = total

    def std(self) -> np.ndarray:
        """The population standard deviation, 1.0 where fewer than two values were seen or all were equal."""
        variance = np.divide(self.m2, self.count, out=np.zeros_like(self.m2), where=self.count > 0)
        std = np.sqrt(variance)
        return np.where((self.count >= 2) & (std > _EPSILON), std, 1.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(getattr(self, name).copy()) for name in ("count", "mean", "m2")}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for name in ("count", "mean", "m2"):
            array = state[name].numpy().astype(np.float64)
            if array.shape != self.count.shape:
                raise ValueError(f"running stats {name!r} has shape {array.shape}, expected {self.count.shape}")
            setattr(self, name, array.copy())


@dataclass(frozen=True, slots=True)
class VectorizerConfig:
    """The shape and behaviour of a :class:`Vectorizer`; part of every torch model's options."""

    numeric_slots: int = 32
    category_slots: int = 32
    missing_indicators: bool = True
    standardize: bool = True
    one_hot: bool = True
    clip: float = 8.0

    def __post_init__(self) -> None:
        if self.numeric_slots < 0 or self.category_slots < 0:
            raise ValueError("numeric_slots and category_slots must be >= 0")
        if self.numeric_slots + self.category_slots == 0:
            raise ValueError("the vectorizer needs at least one numeric or category slot")
        if not self.clip > 0:
            raise ValueError(f"clip must be > 0, got {self.clip}")


class Vectorizer:
    """Feature dicts to float tensors of a fixed width, with online standardization of the numbers.

    Output layout: ``[standardized numbers | missing indicators (optional) | one-hot categories]``.
    A number (bool as 0/1) goes to its name's numeric slot, a string to the slot of ``"name=value"``;
    ``None``, a non-finite number or an absent name leaves the slot absent: 0 after standardization, and its
    missing indicator 1. Several names sharing a slot (after the capacity is used up) add up.
    """

    def __init__(self, config: VectorizerConfig | None = None) -> None:
        self.config = config or VectorizerConfig()
        numeric = self.config.numeric_slots
        self.numeric_names = SlotTable(numeric)
        self.category_names = SlotTable(self.config.category_slots if self.config.one_hot else 0)
        self.stats = RunningStats(numeric)
        self._cached: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def raw_width(self) -> int:
        """The width of :meth:`encode`'s vectors: values, presence mask, categories."""
        return 2 * self.config.numeric_slots + self.category_names.capacity

    @property
    def width(self) -> int:
        """The width of :meth:`transform`'s vectors."""
        numeric = self.config.numeric_slots
        return numeric + (numeric if self.config.missing_indicators else 0) + self.category_names.capacity

    def encode(self, features: Features) -> np.ndarray:
        """One raw float32 vector; assigns slots to names not seen before (in sorted order)."""
        numeric = self.config.numeric_slots
        raw = np.zeros(self.raw_width, dtype=np.float32)
        one_hot = self.category_names.capacity > 0
        for name in sorted(features):
            value = features[name]
            if isinstance(value, bool | int | float):
                number = float(value)
                if numeric == 0 or not math.isfinite(number):
                    continue
                slot = self.numeric_names.slot(name)
                raw[slot] += number
                raw[numeric + slot] = 1.0
            elif isinstance(value, str) and one_hot:
                raw[2 * numeric + self.category_names.slot(f"{name}={value}")] += 1.0
        return raw

    def encode_many(self, rows: Sequence[Features]) -> np.ndarray:
        """Raw vectors of several feature dicts, shape ``(len(rows), raw_width)``, encoded in order."""
        out = np.zeros((len(rows), self.raw_width), dtype=np.float32)
        for index, features in enumerate(rows):
            out[index] = self.encode(features)
        return out

    def learn(self, raw: np.ndarray) -> None:
        """Update the running statistics with raw vectors of shape ``(batch, raw_width)``."""
        numeric = self.config.numeric_slots
        if numeric and self.config.standardize:
            self.stats.update(raw[:, :numeric], raw[:, numeric : 2 * numeric])
            self._cached.clear()

    def transform(self, raw: torch.Tensor) -> torch.Tensor:
        """Standardize raw vectors of shape ``(..., raw_width)`` into ``(..., width)``; elementwise, so a row's
        result never depends on the rest of the batch."""
        numeric = self.config.numeric_slots
        values, present, categories = raw[..., :numeric], raw[..., numeric : 2 * numeric], raw[..., 2 * numeric :]
        if self.config.standardize:
            mean, std = self._stats_as(raw.dtype, raw.device)
            values = ((values - mean) / std).clamp(-self.config.clip, self.config.clip)
        parts = [values * present]
        if self.config.missing_indicators:
            parts.append(1.0 - present)
        parts.append(categories)
        return torch.cat(parts, dim=-1)

    def _stats_as(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._cached.get((dtype, device))
        if cached is None:
            mean = torch.from_numpy(self.stats.mean).to(device=device, dtype=dtype)
            std = torch.from_numpy(self.stats.std()).to(device=device, dtype=dtype)
            cached = self._cached[(dtype, device)] = (mean, std)
        return cached

    def state_dict(self) -> dict[str, Any]:
        """Plain containers and tensors only (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "config": asdict(self.config),
            "numeric_names": list(self.numeric_names.slots),
            "category_names": list(self.category_names.slots),
            "stats": self.stats.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Vectorizer:
        """Rebuild from :meth:`state_dict`; raises ``ValueError``/``KeyError``/``TypeError`` if it does not fit."""
        vectorizer = cls(VectorizerConfig(**state["config"]))
        for table, names in ((vectorizer.numeric_names, state["numeric_names"]),
                             (vectorizer.category_names, state["category_names"])):
            if len(names) > table.capacity or not all(isinstance(name, str) for name in names):
                raise ValueError("vectorizer state has more names than slots, or names that are not strings")
            table.slots = {name: slot for slot, name in enumerate(names)}
        vectorizer.stats.load_state_dict(state["stats"])
        return vectorizer

    def memory_bytes(self) -> int:
        """An estimate of the vocabulary and statistics held."""
        return (
            self.numeric_names.memory_bytes()
            + self.category_names.memory_bytes()
            + 3 * self.stats.count.nbytes
        )
