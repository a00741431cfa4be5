"""Learners: the interface every model implements, and the registry that builds and restores them by kind.

The River adapter (``shared.learners.river_learner``) and the torch models (``shared.learners.torch_models``)
are imported on first use, so importing this package loads neither River nor torch.
"""

from shared.learners.base import Features, Learner, Output, Row, SnapshotError, Target, Task
from shared.learners.registry import (
    LearnerConfigError,
    build_learner,
    known_kinds,
    register,
    restore_learner,
)

__all__ = [
    "Features",
    "Learner",
    "LearnerConfigError",
    "Output",
    "Row",
    "SnapshotError",
    "Target",
    "Task",
    "build_learner",
    "known_kinds",
    "register",
    "restore_learner",
]
