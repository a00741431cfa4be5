"""Loading snapshots safely: nothing from Redis is unpickled before its signature is checked.

An unsigned envelope, one signed with another key and one changed after signing are all refused with
``pickle.loads`` never called (it is patched to record and raise); a correctly signed one, or one signed with a
verify-only key during a rotation, is restored. Torch state goes through ``torch.load(weights_only=True)``,
which refuses a pickle that would run code even when its header and checksum are right.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

import shared.learners.river_learner as river_learner
from services.worker.checkpointing import Checkpointer
from shared.learners import torch_models
from shared.learners.base import Row, SnapshotError
from shared.learners.registry import build_learner, restore_learner
from shared.monitoring.metrics import Metrics
from shared.settings import CheckpointSettings, ModelSettings, PreprocessingSettings
from shared.state.checkpoints import CheckpointStore, PartitionCheckpoint, library_versions, seal
from shared.steps.models import ModelStep

KEY = b"k" * 40
OTHER_KEY = b"o" * 40
GROUP, TOPIC, PARTITION = "g", "events", 0
LOGREG = ModelSettings(name="logreg", estimator="river.linear_model.LogisticRegression")
MARKER: list[str] = []


class RunsCode:
    """A pickle that would run code when loaded."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (MARKER.append, ("code ran",))


class DictRedis:
    """The one Redis call ``CheckpointStore.load`` makes, over a dict (a fake for this pure-logic test)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def pipeline(self, transaction: bool = True) -> DictRedis:
        return self

    def set(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def hset(self, *args: Any) -> None:
        pass

    def execute(self) -> None:
        pass


def trained_snapshot() -> bytes:
    learner = build_learner(LOGREG, PreprocessingSettings(), 42)
    for i in range(20):
        learner.learn_one(Row({"x": float(i)}), i % 2 == 0)
    return learner.snapshot()


def malicious_river_snapshot() -> bytes:
    """A River snapshot whose header is right and whose payload runs code when unpickled."""
    header, _, _ = trained_snapshot().partition(b"\n")
    return header + b"\n" + pickle.dumps(RunsCode())


def envelope(models: dict[str, tuple[str, bytes]], key: bytes) -> bytes:
    return seal(PartitionCheckpoint(models=models, next_offset=10), hmac_key=key, group=GROUP, topic=TOPIC,
                partition=PARTITION, created_at=1.0, versions=library_versions())


def restore_with(blob: bytes, keys: list[bytes]) -> tuple[Checkpointer, Metrics, DictRedis]:
    client = DictRedis()
    store = CheckpointStore(client, "ns", GROUP, keys)  # type: ignore[arg-type]
    client.data[store.key_for(TOPIC, PARTITION)] = blob
    metrics = Metrics(CollectorRegistry())
    models = ModelStep([LOGREG], lambda m: build_learner(m, PreprocessingSettings(), 42))
    return Checkpointer(store, models, CheckpointSettings(background=False), metrics), metrics, client


@pytest.fixture
def unpickled(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every payload the River learner tried to unpickle; each attempt raises."""
    calls: list[bytes] = []

    def refuse(payload: bytes, *args: Any, **kwargs: Any) -> Any:
        calls.append(bytes(payload))
        raise AssertionError("pickle.loads reached")

    monkeypatch.setattr(river_learner.pickle, "loads", refuse)
    return calls


def flip_last_byte(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 0xFF])


@pytest.mark.parametrize(("name", "make_blob", "reason"), [
    ("raw pickle, no envelope", lambda: pickle.dumps(RunsCode()), "unsigned"),
    ("signed with another key", lambda: envelope({"logreg": ("river", malicious_river_snapshot())}, OTHER_KEY),
     "tampered"),
    ("changed after signing", lambda: flip_last_byte(envelope({"logreg": ("river", trained_snapshot())}, KEY)),
     "tampered"),
    ("signature stripped", lambda: envelope({"logreg": ("river", trained_snapshot())}, KEY)[:6] + b"\x01\x00"
     + envelope({"logreg": ("river", trained_snapshot())}, KEY)[8 + 32:], "unsigned"),
])
def test_a_bad_signature_never_reaches_pickle(
    unpickled: list[bytes], name: str, make_blob: Any, reason: str
) -> None:
    checkpointer, metrics, _ = restore_with(make_blob(), [KEY])
    restored = checkpointer.restore((TOPIC, PARTITION), committed=10)
    assert unpickled == [], name
    assert MARKER == []
    assert restored.seek_to is None  # fresh models from the committed offset
    assert metrics.registry.get_sample_value("streamlearn_snapshots_rejected_total", {"reason": reason}) == 1
    assert metrics.registry.get_sample_value("streamlearn_state_lost_total") == 1


def test_a_good_signature_is_what_lets_pickle_run(unpickled: list[bytes]) -> None:
    """The control: the same path does reach ``pickle.loads`` once the envelope verifies."""
    checkpointer, _, _ = restore_with(envelope({"logreg": ("river", trained_snapshot())}, KEY), [KEY])
    with pytest.raises(SnapshotError):
        checkpointer.restore((TOPIC, PARTITION), committed=10)
    assert len(unpickled) == 1


@pytest.mark.parametrize("signed_with", [KEY, OTHER_KEY])
def test_any_configured_key_verifies_and_the_first_signs(signed_with: bytes) -> None:
    """A rotation: the new key signs, the old one still verifies, so no model is lost."""
    checkpointer, metrics, client = restore_with(envelope({"logreg": ("river", trained_snapshot())}, signed_with),
                                                 [OTHER_KEY, KEY])
    restored = checkpointer.restore((TOPIC, PARTITION), committed=10)
    assert restored.seek_to == 10
    assert metrics.registry.get_sample_value("streamlearn_state_lost_total") == 0
    store = CheckpointStore(client, "ns", GROUP, [OTHER_KEY, KEY])  # type: ignore[arg-type]
    store.save({(TOPIC, PARTITION): PartitionCheckpoint(models={}, next_offset=11)})
    saved = client.data[store.key_for(TOPIC, PARTITION)]
    assert CheckpointStore(client, "ns", GROUP, OTHER_KEY).load(TOPIC, PARTITION) is not None  # type: ignore[arg-type]
    assert saved != envelope({}, KEY)


def test_torch_state_refuses_a_pickle_that_runs_code() -> None:
    """``torch.load(weights_only=True)``: a header and checksum that fit do not make a code-running pickle load."""
    buffer = io.BytesIO()
    torch.save({"options": RunsCode()}, buffer)
    payload = buffer.getvalue()
    header = {"kind": "torch.mlp", "format": torch_models.SNAPSHOT_FORMAT, "torch": torch.__version__,
              "length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    with pytest.raises(SnapshotError):
        restore_learner("torch.mlp", json.dumps(header).encode() + b"\n" + payload)
    assert MARKER == []
