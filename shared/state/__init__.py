"""Redis stores of the worker: signed checkpoints, the delayed-label join, the dedup window, entity aggregates.

Every store takes a ``redis.Redis`` client (``decode_responses=False``), the namespace and the consumer group;
docs/state.md describes keys, bounds, atomicity and the replay rules.
"""

from shared.state.checkpoints import CheckpointStore, PartitionCheckpoint, SnapshotRejected
from shared.state.dedup import DedupWindow
from shared.state.entities import EntityFeatureSpec, EntityStore
from shared.state.label_join import JoinedLabel, JoinResult, LabelJoin, PendingPrediction, PutResult

__all__ = [
    "CheckpointStore",
    "DedupWindow",
    "EntityFeatureSpec",
    "EntityStore",
    "JoinResult",
    "JoinedLabel",
    "LabelJoin",
    "PartitionCheckpoint",
    "PendingPrediction",
    "PutResult",
    "SnapshotRejected",
]
