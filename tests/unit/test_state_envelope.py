"""Checkpoint envelopes without Redis: signing, every rejection reason, and the pure helpers of shared/state."""

from __future__ import annotations

import hashlib
import hmac
import pickle
import struct

import pytest

from shared.state.checkpoints import (
    FORMAT_VERSION,
    MAGIC,
    PartitionCheckpoint,
    SnapshotRejected,
    library_versions,
    seal,
    unseal,
)
from shared.state.entities import EntityFeatureSpec
from shared.state.keys import KeySpace, split_positions

KEY = b"unit-test-key"
VERSIONS = {"python": "3.11.7", "river": "0.26.1", "torch": "2.5.1+cpu", "streamlearn": "0.1.0"}
WHERE = {"group": "g", "topic": "events", "partition": 3}


def _checkpoint() -> PartitionCheckpoint:
    return PartitionCheckpoint(
        models={"logreg": ("river", b"\x80\x04model-a"), "mlp": ("torch.mlp", bytes(range(256)) * 4)},
        next_offset=1234,
        extra={"learned": {"logreg": 10, "mlp": 9}, "champion": "logreg"},
        blobs={"scoreboard": b"\x80\x05scores", "empty": b""},
    )


def _sealed(**overrides: object) -> bytes:
    arguments: dict = {"hmac_key": KEY, **WHERE, "created_at": 1700000000.25, "versions": VERSIONS}
    arguments.update(overrides)
    return seal(_checkpoint(), **arguments)


def _open(blob: bytes, key: bytes = KEY, versions: dict[str, str] = VERSIONS, **where: object) -> PartitionCheckpoint:
    return unseal(blob, hmac_key=key, versions=versions, **{**WHERE, **where})  # type: ignore[arg-type]


def _resign(signed: bytes, key: bytes = KEY) -> bytes:
    """An envelope around arbitrary signed bytes, with a valid signature."""
    return MAGIC + bytes([1, 32]) + hmac.new(key, MAGIC + signed, hashlib.sha256).digest() + signed


def _reason(blob: bytes, **kwargs: object) -> str:
    with pytest.raises(SnapshotRejected) as caught:
        _open(blob, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


def test_round_trip_keeps_every_section_and_field() -> None:
    restored = _open(_sealed())
    original = _checkpoint()
    assert restored.models == original.models
    assert restored.blobs == original.blobs
    assert restored.extra == original.extra
    assert restored.next_offset == 1234
    assert restored.created_at == 1700000000.25
    assert restored.versions == VERSIONS


def test_payload_bytes_are_stored_raw_not_pickled() -> None:
    blob = _sealed()
    assert bytes(range(256)) * 4 in blob
    assert not blob.startswith(b"\x80"), "the envelope itself is not a pickle"


def test_a_flipped_payload_byte_is_tampered() -> None:
    blob = bytearray(_sealed())
    blob[-10] ^= 0x01
    assert _reason(bytes(blob)) == "tampered"


def test_an_edited_header_is_tampered() -> None:
    blob = _sealed()
    edited = blob.replace(b'"next_offset":1234', b'"next_offset":9999')
    assert edited != blob
    assert _reason(edited) == "tampered"


def test_a_different_key_is_tampered() -> None:
    assert _reason(_sealed(), key=b"another-key") == "tampered"


def test_an_envelope_moved_to_another_partition_is_tampered() -> None:
    assert _reason(_sealed(), partition=4) == "tampered"
    assert _reason(_sealed(), group="other-group") == "tampered"


def test_a_raw_pickle_is_unsigned() -> None:
    assert _reason(pickle.dumps({"models": {}})) == "unsigned"


def test_an_envelope_without_signature_is_unsigned() -> None:
    blob = _sealed()
    stripped = MAGIC + bytes([1, 0]) + blob[len(MAGIC) + 2 + 32:]
    assert _reason(stripped) == "unsigned"


def test_other_format_or_framing_is_incompatible() -> None:
    assert _reason(_sealed(format_version=FORMAT_VERSION + 1)) == "incompatible"
    blob = bytearray(_sealed())
    blob[len(MAGIC)] = 2
    assert _reason(bytes(blob)) == "incompatible"


@pytest.mark.parametrize(("library", "running"), [("river", "0.27.0"), ("torch", "2.6.0"), ("torch", "3.5.1")])
def test_another_major_minor_of_a_pinned_library_is_incompatible(library: str, running: str) -> None:
    assert _reason(_sealed(), versions={**VERSIONS, library: running}) == "incompatible"


def test_patch_releases_and_unpinned_libraries_may_differ() -> None:
    versions = {**VERSIONS, "river": "0.26.9", "torch": "2.5.0", "python": "3.12.1", "streamlearn": "9.0"}
    assert _open(_sealed(), versions=versions).next_offset == 1234


def test_truncated_or_malformed_content_is_corrupt() -> None:
    assert _reason(MAGIC + bytes([1])) == "corrupt"
    assert _reason(MAGIC + bytes([1, 32]) + b"\x00" * 10) == "corrupt"
    not_json = b"{nope"
    assert _reason(_resign(struct.pack(">I", len(not_json)) + not_json)) == "corrupt"
    assert _reason(_resign(struct.pack(">I", 1000) + b"{}")) == "corrupt"


def test_signed_header_with_sections_past_the_payload_is_corrupt() -> None:
    blob = _sealed()
    header_start = len(MAGIC) + 2 + 32
    (length,) = struct.unpack_from(">I", blob, header_start)
    header = blob[header_start + 4:header_start + 4 + length]
    body = blob[header_start + 4 + length:]
    assert _reason(_resign(struct.pack(">I", length) + header + body[:-1])) == "corrupt"


def test_extra_state_must_be_json_ready() -> None:
    bad = PartitionCheckpoint(models={}, next_offset=0, extra={"when": object()})
    with pytest.raises(ValueError, match="not JSON-ready"):
        seal(bad, hmac_key=KEY, **WHERE, created_at=0.0, versions=VERSIONS)  # type: ignore[arg-type]


def test_library_versions_records_python_and_the_pinned_libraries() -> None:
    versions = library_versions()
    assert {"python", "river", "torch", "streamlearn"} <= set(versions)
    assert versions["python"].count(".") == 2


def test_key_space_and_positions() -> None:
    keys = KeySpace("streamlearn", "group-1", "join")
    assert keys.key("pending") == "streamlearn:group-1:join:pending"
    assert keys.key("events", 3) == "streamlearn:group-1:join:events:3"
    with pytest.raises(ValueError):
        KeySpace("has space", "g", "s")
    assert split_positions([("t", 1, 5)], 1) == [("t:1", 5)]
    assert split_positions(None, 3) is None
    with pytest.raises(ValueError):
        split_positions([("t", 1, 5)], 2)


def test_entity_spec_validation_and_names() -> None:
    spec = EntityFeatureSpec(fields=["amount"], last_n=5)  # type: ignore[arg-type]
    assert spec.fields == ("amount",)
    assert spec.history_limit == 10
    assert EntityFeatureSpec(fields=(), last_seconds=60).history_limit == 1000
    assert spec.feature_names() == [
        "entity_count", "entity_count_total", "entity_seconds_since_last",
        "entity_amount_mean", "entity_amount_min", "entity_amount_max",
    ]
    with pytest.raises(ValueError):
        EntityFeatureSpec(fields=())
    with pytest.raises(ValueError):
        EntityFeatureSpec(fields=("a", "a"), last_n=3)
    with pytest.raises(ValueError):
        EntityFeatureSpec(fields=("a",), last_n=3, max_history=2)
