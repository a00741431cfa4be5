"""Which learner a model's ``kind`` builds, and how its snapshots are restored.

Built-in kinds are declared by module path and imported on first use, so River-only use never imports torch.
A lazily imported module either calls :func:`register` for its kinds while it is imported, or exposes the
factory and restorer under the attribute names declared in :data:`BUILTIN_KINDS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.learners.base import Learner, SnapshotError, Task

if TYPE_CHECKING:
    from collections.abc import Mapping

    from river.compose import Pipeline

    from shared.settings import ModelSettings, PreprocessingSettings

LearnerFactory = Callable[["ModelSettings", "PreprocessingSettings", int], Learner]
LearnerRestorer = Callable[[bytes], Learner]


class LearnerConfigError(ValueError):
    """A model's settings cannot build a learner; the message names the model and the field."""


@dataclass(frozen=True, slots=True)
class KindEntry:
    """How to build a fresh learner of one kind, and how to restore one from a snapshot."""

    factory: LearnerFactory
    restore: LearnerRestorer


@dataclass(frozen=True, slots=True)
class LazyKind:
    """A kind whose module is imported on first use: ``module.factory`` and ``module.restore``."""

    module: str
    factory: str
    restore: str


TORCH_MODULE = "shared.learners.torch_models"
BUILTIN_KINDS: dict[str, LazyKind] = {
    "river": LazyKind("shared.learners.river_learner", "build_river_learner", "restore_river_learner"),
    **{
        kind: LazyKind(TORCH_MODULE, "build_torch_learner", "restore_torch_learner")
        for kind in ("torch.linear", "torch.mlp", "torch.gru", "torch.cnn")
    },
}

_registered: dict[str, KindEntry] = {}


def register(kind: str, factory: LearnerFactory, restore: LearnerRestorer) -> None:
    """Make ``kind`` buildable by :func:`build_learner` and restorable by :func:`restore_learner`.

    ``factory(model, preprocessing, seed)`` returns a fresh learner; ``restore(data)`` rebuilds one from its
    snapshot. Registering the same kind again with other functions is an error.
    """
    if not kind:
        raise ValueError("a learner kind needs a name")
    entry = KindEntry(factory, restore)
    existing = _registered.get(kind)
    if existing is not None and existing != entry:
        raise ValueError(f"learner kind {kind!r} is already registered")
    _registered[kind] = entry


def known_kinds() -> list[str]:
    """Every kind that can be asked for: registered ones and built-ins not imported yet."""
    return sorted(set(_registered) | set(BUILTIN_KINDS))


def _entry(kind: str) -> KindEntry:
    entry = _registered.get(kind)
    if entry is not None:
        return entry
    lazy = BUILTIN_KINDS.get(kind)
    if lazy is None:
        raise KeyError(kind)
    module = importlib.import_module(lazy.module)
    entry = _registered.get(kind)
    if entry is None:
        try:
            entry = KindEntry(getattr(module, lazy.factory), getattr(module, lazy.restore))
        except AttributeError as exc:
            raise ImportError(
                f"{lazy.module} neither registers kind {kind!r} nor defines {lazy.factory} and {lazy.restore}"
            ) from exc
        _registered[kind] = entry
    return entry


def _resolve(kind: str, model_name: str) -> KindEntry:
    try:
        return _entry(kind)
    except KeyError:
        raise LearnerConfigError(
            f"model {model_name!r}: field 'kind' is {kind!r}, which is not a known learner kind; "
            f"known kinds: {', '.join(known_kinds())}"
        ) from None
    except ImportError as exc:
        raise LearnerConfigError(f"model {model_name!r}: kind {kind!r} is unavailable: {exc}") from exc


def build_learner(model: ModelSettings, preprocessing: PreprocessingSettings, seed: int) -> Learner:
    """A fresh, untrained learner for one model of the settings.

    Raises :class:`LearnerConfigError` naming the model and the field for an unknown kind, an estimator
    that does not import, or parameters the estimator rejects.
    """
    entry = _resolve(model.kind, model.name)
    try:
        learner = entry.factory(model, preprocessing, seed)
    except LearnerConfigError as exc:
        message = str(exc)
        prefix = f"model {model.name!r}"
        raise LearnerConfigError(message if message.startswith(prefix) else f"{prefix}: {message}") from exc
    except (TypeError, ValueError) as exc:
        raise LearnerConfigError(f"model {model.name!r} (kind {model.kind!r}): {exc}") from exc
    if learner.kind != model.kind:
        raise LearnerConfigError(
            f"model {model.name!r}: the factory of kind {model.kind!r} built a learner of kind {learner.kind!r}"
        )
    return learner


def restore_learner(kind: str, data: bytes) -> Learner:
    """Rebuild a learner of ``kind`` from its snapshot; raise :class:`SnapshotError` if it does not fit."""
    try:
        entry = _entry(kind)
    except KeyError:
        raise SnapshotError(f"snapshot of unknown learner kind {kind!r}") from None
    except ImportError as exc:
        raise SnapshotError(f"snapshot of kind {kind!r} cannot be restored: {exc}") from exc
    try:
        learner = entry.restore(data)
    except SnapshotError:
        raise
    except Exception as exc:
        raise SnapshotError(f"snapshot of kind {kind!r} cannot be restored: {exc!r}") from exc
    if learner.kind != kind:
        raise SnapshotError(f"snapshot holds a learner of kind {learner.kind!r}, expected {kind!r}")
    return learner


def build_river_pipeline(
    estimator_path: str,
    params: Mapping[str, Any],
    preprocessing: PreprocessingSettings,
    seed: int,
    *,
    task: Task | None = None,
) -> Pipeline:
    """The River pipeline a ``river`` model runs (see :func:`shared.learners.river_learner.build_river_pipeline`).

    Give it to ``river.evaluate.progressive_val_score`` to reproduce a worker's predictions exactly.
    """
    from shared.learners.river_learner import build_river_pipeline as build

    return build(estimator_path, params, preprocessing, seed, task=task)
