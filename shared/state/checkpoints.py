"""Signed model checkpoints per input partition, saved to Redis in one transaction.

A checkpoint is one envelope per ``(topic, partition)``: a JSON header (format version, library versions,
creation time, the partition it belongs to, the next offset, small extra state, the section table) and the raw
payload sections (model snapshots, small blobs), signed with HMAC-SHA256. The signature is checked before
anything is decoded, and nothing is ever unpickled here. Layout and rules: docs/state.md.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import platform
import re
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal, get_args

import orjson
import redis

from shared.state.keys import KeySpace, source_of

#: version of the header schema and section layout; a different one is refused as "incompatible"
FORMAT_VERSION = 1
#: the first bytes of every envelope, then one byte of framing version
MAGIC = b"SLCKPT"
FRAMING_VERSION = 1
SIGNATURE_BYTES = hashlib.sha256().digest_size
#: libraries whose major.minor version must match for a snapshot to be loaded
PINNED_LIBRARIES = ("river", "torch")
#: libraries recorded in every envelope
RECORDED_LIBRARIES = ("river", "torch", "streamlearn")

RejectReason = Literal["unsigned", "tampered", "incompatible", "corrupt"]
REJECT_REASONS: tuple[str, ...] = get_args(RejectReason)

_HEADER_LENGTH = struct.Struct(">I")


class SnapshotRejected(Exception):
    """A stored checkpoint was refused; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RejectReason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PartitionCheckpoint:
    """What one input partition needs to resume: its models, the next offset, and small extra state.

    ``models`` maps a model name to ``(learner kind, snapshot bytes)``. ``extra`` must be JSON-ready (numbers,
    strings, lists, dicts); ``blobs`` holds small opaque payloads (a pickled scoreboard, say), verified with the
    rest. ``created_at`` and ``versions`` are filled in by :meth:`CheckpointStore.load`.
    """

    models: Mapping[str, tuple[str, bytes]]
    next_offset: int
    extra: Mapping[str, Any] = field(default_factory=dict)
    blobs: Mapping[str, bytes] = field(default_factory=dict)
    created_at: float | None = None
    versions: Mapping[str, str] = field(default_factory=dict)


@functools.cache
def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries recorded in an envelope (``"absent"`` when not installed)."""
    versions = {"python": platform.python_version()}
    for name in RECORDED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _major_minor(version: str) -> str:
    match = re.match(r"(\d+)\.(\d+)", version)
    return f"{match.group(1)}.{match.group(2)}" if match else version


def _mac(key: bytes, *signed: bytes | memoryview) -> bytes:
    """HMAC-SHA256 of the magic and the signed parts, fed one by one (no concatenated copy of a large payload)."""
    mac = hmac.new(key, MAGIC, hashlib.sha256)
    for part in signed:
        mac.update(part)
    return mac.digest()


def seal(
    checkpoint: PartitionCheckpoint,
    *,
    hmac_key: bytes,
    group: str,
    topic: str,
    partition: int,
    created_at: float,
    versions: Mapping[str, str],
    format_version: int = FORMAT_VERSION,
) -> bytes:
    """Encode and sign one partition's checkpoint. Raises ``ValueError`` if ``extra`` is not JSON-ready."""
    sections = [data for _, data in checkpoint.models.values()] + list(checkpoint.blobs.values())
    header = {
        "format": format_version,
        "created_at": created_at,
        "group": group,
        "topic": topic,
        "partition": partition,
        "next_offset": checkpoint.next_offset,
        "versions": dict(versions),
        "extra": dict(checkpoint.extra),
        "models": [[name, kind, len(data)] for name, (kind, data) in checkpoint.models.items()],
        "blobs": [[name, len(data)] for name, data in checkpoint.blobs.items()],
    }
    try:
        header_bytes = orjson.dumps(header)
    except TypeError as exc:
        raise ValueError(f"checkpoint of {source_of(topic, partition)}: extra state is not JSON-ready: {exc}") from exc
    # the sections (megabytes for a forest) are hashed in place and copied once, into the envelope
    signed = [_HEADER_LENGTH.pack(len(header_bytes)) + header_bytes, *sections]
    return b"".join([MAGIC, bytes([FRAMING_VERSION, SIGNATURE_BYTES]), _mac(hmac_key, *signed), *signed])


def unseal(
    blob: bytes,
    *,
    hmac_key: bytes | Sequence[bytes],
    group: str,
    topic: str,
    partition: int,
    versions: Mapping[str, str],
) -> PartitionCheckpoint:
    """Verify and decode an envelope made by :func:`seal`; raise :class:`SnapshotRejected` on any doubt.

    ``hmac_key`` may be several keys (a rotation): the envelope is accepted when any of them signed it.
    """
    where = source_of(topic, partition)
    if not blob.startswith(MAGIC):
        raise SnapshotRejected("unsigned", f"checkpoint of {where} is not a signed envelope")
    fixed = len(MAGIC) + 2
    if len(blob) < fixed:
        raise SnapshotRejected("corrupt", f"checkpoint of {where} is truncated")
    framing, signature_length = blob[len(MAGIC)], blob[len(MAGIC) + 1]
    if framing != FRAMING_VERSION:
        raise SnapshotRejected("incompatible", f"checkpoint of {where} has framing {framing}, expected "
                                               f"{FRAMING_VERSION}")
    if signature_length == 0:
        raise SnapshotRejected("unsigned", f"checkpoint of {where} carries no signature")
    if signature_length != SIGNATURE_BYTES or len(blob) < fixed + SIGNATURE_BYTES + _HEADER_LENGTH.size:
        raise SnapshotRejected("corrupt", f"checkpoint of {where} is truncated or malformed")
    signature = blob[fixed:fixed + SIGNATURE_BYTES]
    signed = memoryview(blob)[fixed + SIGNATURE_BYTES:]
    if not any(hmac.compare_digest(signature, _mac(key, signed)) for key in _key_list(hmac_key)):
        raise SnapshotRejected("tampered", f"checkpoint of {where} fails signature verification")
    header, body = _split_header(signed, where)
    return _decode(header, body, where, group=group, topic=topic, partition=partition, versions=versions)


def _key_list(keys: bytes | Sequence[bytes]) -> list[bytes]:
    listed = [keys] if isinstance(keys, bytes | bytearray) else list(keys)
    if not listed or not all(listed):
        raise ValueError("checkpoint HMAC keys must not be empty")
    return [bytes(key) for key in listed]


def _split_header(signed: memoryview, where: str) -> tuple[dict[str, Any], memoryview]:
    (header_length,) = _HEADER_LENGTH.unpack_from(signed)
    end = _HEADER_LENGTH.size + header_length
    if end > len(signed):
        raise SnapshotRejected("corrupt", f"checkpoint of {where}: header runs past the end")
    try:
        header = orjson.loads(signed[_HEADER_LENGTH.size:end])
    except orjson.JSONDecodeError as exc:
        raise SnapshotRejected("corrupt", f"checkpoint of {where}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise SnapshotRejected("corrupt", f"checkpoint of {where}: header is not an object")
    return header, signed[end:]


def _decode(
    header: dict[str, Any], body: memoryview, where: str, *, group: str, topic: str, partition: int,
    versions: Mapping[str, str],
) -> PartitionCheckpoint:
    if header.get("format") != FORMAT_VERSION:
        raise SnapshotRejected("incompatible", f"checkpoint of {where} has format {header.get('format')!r}, "
                                               f"this build reads {FORMAT_VERSION}")
    try:
        stored_versions = {str(k): str(v) for k, v in header["versions"].items()}
        for library in PINNED_LIBRARIES:
            saved, running = stored_versions.get(library, "absent"), versions.get(library, "absent")
            if _major_minor(saved) != _major_minor(running):
                raise SnapshotRejected("incompatible", f"checkpoint of {where} was written with {library} {saved}, "
                                                       f"this process runs {running}")
        if (header["group"], header["topic"], header["partition"]) != (group, topic, partition):
            raise SnapshotRejected("tampered", f"checkpoint stored for {where} (group {group}) belongs to "
                                               f"{header['topic']}:{header['partition']} (group {header['group']})")
        models: dict[str, tuple[str, bytes]] = {}
        blobs: dict[str, bytes] = {}
        cursor = 0
        for name, kind, length in header["models"]:
            models[str(name)] = (str(kind), _section(body, cursor, length, where))
            cursor += int(length)
        for name, length in header["blobs"]:
            blobs[str(name)] = _section(body, cursor, length, where)
            cursor += int(length)
        if cursor != len(body):
            raise SnapshotRejected("corrupt", f"checkpoint of {where}: sections do not add up to the payload")
        extra = header["extra"]
        if not isinstance(extra, dict):
            raise SnapshotRejected("corrupt", f"checkpoint of {where}: extra state is not an object")
        return PartitionCheckpoint(
            models=models, next_offset=int(header["next_offset"]), extra=extra, blobs=blobs,
            created_at=float(header["created_at"]), versions=stored_versions,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SnapshotRejected("corrupt", f"checkpoint of {where}: malformed header ({exc!r})") from exc


def _section(body: memoryview, start: int, length: Any, where: str) -> bytes:
    if not isinstance(length, int) or length < 0 or start + length > len(body):
        raise SnapshotRejected("corrupt", f"checkpoint of {where}: a section runs past the payload")
    return bytes(body[start:start + length])


class CheckpointStore:
    """Per-partition checkpoints of one consumer group under ``<namespace>:<group>:ckpt:``."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        group: str,
        hmac_key: bytes | Sequence[bytes],
        *,
        versions: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``hmac_key``: one key, or several: the first signs, every one verifies (a key rotation)."""
        self._client = client
        self._keys = KeySpace(namespace, group, "ckpt")
        self._group = group
        self._hmac_keys = _key_list(hmac_key)
        self._hmac_key = self._hmac_keys[0]
        self._versions = dict(versions) if versions is not None else library_versions()
        self._clock = clock

    def key_for(self, topic: str, partition: int) -> str:
        """The Redis key that holds the checkpoint of one partition."""
        return self._keys.key(topic, partition)

    def save(
        self, partition_states: Mapping[tuple[str, int], PartitionCheckpoint],
        also: Callable[[Any], None] | None = None,
    ) -> float:
        """Write the checkpoints of several partitions in one MULTI/EXEC; return the save time.

        Every envelope is built before the transaction starts, so an unencodable state writes nothing. ``also``
        adds commands to the same transaction (a group-scope sync publishes its deltas with its checkpoint).
        """
        now = self._clock()
        sealed = {
            (topic, partition): seal(
                state, hmac_key=self._hmac_key, group=self._group, topic=topic, partition=partition,
                created_at=now, versions=self._versions,
            )
            for (topic, partition), state in partition_states.items()
        }
        if not sealed:
            return now
        pipe = self._client.pipeline(transaction=True)
        for (topic, partition), blob in sealed.items():
            pipe.set(self.key_for(topic, partition), blob)
            pipe.hset(self._keys.key("index"), source_of(topic, partition), repr(now))
        pipe.set(self._keys.key("saved_at"), repr(now))
        if also is not None:
            also(pipe)
        pipe.execute()
        return now

    def load(self, topic: str, partition: int) -> PartitionCheckpoint | None:
        """The verified checkpoint of one partition, ``None`` if there is none; :class:`SnapshotRejected` if bad."""
        blob = self._client.get(self.key_for(topic, partition))
        if blob is None:
            return None
        if not isinstance(blob, bytes):
            raise TypeError("CheckpointStore needs a Redis client with decode_responses=False")
        return unseal(
            blob, hmac_key=self._hmac_keys, group=self._group, topic=topic, partition=partition,
            versions=self._versions,
        )

    def ping(self) -> bool:
        """Whether Redis answers (``False`` rather than an exception when it does not)."""
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def delete(self, topic: str, partition: int) -> None:
        """Remove one partition's checkpoint."""
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self.key_for(topic, partition))
        pipe.hdel(self._keys.key("index"), source_of(topic, partition))
        pipe.execute()

    def last_saved_at(self) -> float | None:
        """Unix time of the last successful :meth:`save` by any worker of this group, ``None`` if never."""
        value = self._client.get(self._keys.key("saved_at"))
        return None if value is None else float(value)

    def saved_partitions(self) -> dict[tuple[str, int], float]:
        """Every partition with a checkpoint, and when it was saved."""
        index = self._client.hgetall(self._keys.key("index"))
        saved: dict[tuple[str, int], float] = {}
        for source, saved_at in index.items():
            text = source.decode() if isinstance(source, bytes) else str(source)
            topic, _, partition = text.rpartition(":")
            saved[(topic, int(partition))] = float(saved_at)
        return saved
