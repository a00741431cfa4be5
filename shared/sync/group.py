"""One logical model per consumer group: the sync between the workers' model sets (``sync.scope: group``).

Design (docs/architecture.md, "One model per group"): each worker keeps one model set for all its partitions. A
*sync* is always a checkpoint: the worker

1. measures what each model learned since its last sync (its *delta*, :meth:`Learner.sync_delta`) and how many
   examples that is,
2. reads the deltas the other members published since its cursor in the group's Redis stream, and merges them
   (:meth:`Learner.merge`: exact sums for sufficient statistics, a weighted mean for parameters),
3. writes its checkpoint (every partition it holds, each with its offset, and this module's record: lineage,
   cursor, examples learned per source partition) **and**, in the same Redis transaction, appends its own delta
   to the stream and its view-mode models (forests) to the group's views.

A delta therefore reaches the group exactly when the checkpoint that reflects its examples is stored: a crash
before it replays those examples from the previous checkpoint and publishes them with the next sync; a crash after
it replays nothing of them. A checkpointed state holds exactly every delta in the stream up to its cursor plus its
own lineage's deltas; a restore picks, among the checkpoints of the partitions it gets, the one with the furthest
cursor, then reads the stream from there, skipping that state's own lineage, so every delta counts once.

Which design a model uses is :func:`apply_merge_choice`'s decision (``sync.merge``). In *replay* mode (the default
for the kinds :func:`apply_merge_choice` names) a delta is the examples the model learned since the last sync,
and merging learns the other members' examples (:mod:`shared.learners.replay`). Models that cannot merge and do not
replay (``sync.merge: native``: trees and forests, :attr:`MergeMode.VIEW`) learn only their own partitions; at
every sync each member publishes its model, and every member's predictions are the vote of its own model and the
other members' latest models (:meth:`Learner.set_views`), those that synced within ``sync.view_ttl_s``.

Each published delta names its mode; a member merges only deltas of its own model's mode (a group whose members
disagree, during a change of ``sync.merge``, skips the others' deltas with a warning rather than misread them).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from shared.learners.base import Learner, MergeMode
from shared.learners.registry import restore_learner
from shared.monitoring.metrics import Metrics
from shared.settings import SyncSettings
from shared.state.keys import KeySpace
from shared.steps.models import ModelSet

log = logging.getLogger("streamlearn.sync")

#: ``sync.merge: auto``: the native merge modes whose models replay examples instead (the choice is measured in
#: docs/models.md, "Group scope"): every model that can only vote (trees, forests) ...
REPLAY_BY_DEFAULT = frozenset({MergeMode.VIEW})
#: ... and the averaged models of these kinds (torch: FedAvg lost 1.0-9.2 points and 16 % MAE where replay lost
#: 0.8-3.8 points and 4.5 %). River's averaged linear models (classifiers and regressors) keep FedAvg: within the
#: quality target of 1 partition (linear regression on Friedman +2.6 % MAE at a sync every 100 events, replay
#: -0.2 %), at 1.8x the model's memory where replay's buffer took 3.1x, and without learning every example on every
#: worker (replay made the busiest of 2 workers do 1.33x the work of one worker alone: no throughput from a group)
REPLAY_BY_DEFAULT_KINDS = ("torch.",)


def _replays_by_default(learner: Learner, mode: MergeMode) -> bool:
    return mode in REPLAY_BY_DEFAULT or (mode is MergeMode.AVERAGE and learner.kind.startswith(REPLAY_BY_DEFAULT_KINDS))


def apply_merge_choice(learner: Learner, settings: SyncSettings) -> MergeMode:
    """Put ``learner`` in the merge mode ``sync.merge`` chooses for it; the mode it is in."""
    mode = learner.merge_mode()
    if mode is MergeMode.REPLAY or settings.merge == "native":
        return mode
    if (settings.merge == "replay" or _replays_by_default(learner, mode)) and \
            learner.replay(settings.replay_max_examples):
        return MergeMode.REPLAY
    return mode

#: a member's published delta as a merge reads it: its lineage, the delta, its examples, and whether it carries
#: the member's whole parameters (a later one of the same lineage supersedes it)
_Delta = tuple[str, bytes, int, bool]

#: the stream id before every entry
START = "0-0"
#: how many lineages a state remembers as contained in it (their views are not voted again); bounded
MAX_CONTAINED = 32
#: stream entries read per XRANGE round trip
READ_CHUNK = 500
#: during the warm-up (:meth:`GroupSync.warmup_due`), the fewest examples a member learns between two syncs
MIN_WARMUP_SYNC = 50


def stream_id(value: str | bytes) -> tuple[int, int]:
    """A Redis stream id as a comparable pair."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class SyncRecord:
    """What a group-scope checkpoint records about the sync it is (``extra["sync"]``)."""

    #: this state's lineage: the id its deltas are published under (new at every restore)
    lineage: str
    #: the last stream entry merged into this state
    cursor: str = START
    #: lineages whose deltas and views this state already holds (the restored state's, and what it held)
    contained: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"lineage": self.lineage, "cursor": self.cursor, "contained": list(self.contained)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SyncRecord:
        return cls(str(data["lineage"]), str(data.get("cursor", START)), [str(x) for x in data.get("contained", [])])


@dataclass(slots=True)
class SyncOutcome:
    """One sync: the record to checkpoint, and the Redis commands that publish it (run in the checkpoint's MULTI)."""

    record: SyncRecord
    publish: Callable[[Any], None]
    published_bytes: int
    read_bytes: int
    seconds: float
    merged: int


class GroupSync:
    """The worker's side of the group's shared learning (one instance per worker)."""

    def __init__(
        self, client: redis.Redis, namespace: str, group: str, hmac_keys: bytes | Sequence[bytes],
        settings: SyncSettings,
        metrics: Metrics | None = None, *, clock: Callable[[], float] = time.time,
    ) -> None:
        keys = KeySpace(namespace, group, "sync")
        self._client = client
        self._stream = keys.key("deltas")
        self._views_index = keys.key("views")
        self._view_key = keys.key
        #: the first key signs, every key verifies (a key rotation, docs/security.md)
        self._hmac_keys = (bytes(hmac_keys),) if isinstance(hmac_keys, bytes) else tuple(bytes(k) for k in hmac_keys)
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self.record = SyncRecord(uuid.uuid4().hex)
        #: per model name, the examples learned at the last sync; per source, the examples learned at the last sync
        self._learned_at_sync: dict[str, int] = {}
        self._sources_at_sync: dict[str, int] = {}
        #: own deltas a failed checkpoint could not publish; they go with the next one (bounded by the failures)
        self._unpublished: list[bytes] = []
        #: other members' view-mode models: lineage -> (published seq, {model name: learner})
        self._views: dict[str, tuple[int, dict[str, Learner]]] = {}
        self._seq = 0
        #: per model name, the replay buffer's dropped examples already counted in the metric
        self._dropped_counted: dict[str, int] = {}
        #: per model name, the other members' native deltas a :meth:`pull` read: merged at the next sync
        self._deferred: dict[str, list[_Delta]] = {}
        #: pulls that found the other members' deltas (a running total)
        self.pulls = 0
        #: the labelled examples the state held at the last sync (every member's, as counted by its sources)
        self._state_examples = 0
        #: this member holds every partition of the group's events topic (set by the worker before each restore;
        #: constant within a lineage, since any rebalance restores under a new one): no other member learns, so
        #: it syncs at the checkpoint cadence only and records no replay examples (docs/architecture.md)
        self.alone = False

    @property
    def every_events(self) -> int:
        return self._settings.every_events

    @property
    def every_s(self) -> float:
        return self._settings.every_s

    def warmup_due(self, model_set: ModelSet) -> bool:
        """While the state is young (it held fewer than ``sync.warmup_examples`` labelled examples at the last sync):
        whether this member has learned since as many examples as the state held then (at least
        :data:`MIN_WARMUP_SYNC`), so the first syncs come at about 50, 100, 200, 400 ... examples, while one
        member's examples are worth most to the others. Counts learned examples, not events: without labels
        nothing is due early."""
        if self._state_examples >= self._settings.warmup_examples:
            return False
        own = max((count - self._learned_at_sync.get(name, 0) for name, count in model_set.learned.items()),
                  default=0)
        return own >= max(MIN_WARMUP_SYNC, self._state_examples)

    # --- signing ------------------------------------------------------------------------------------------
    def _sign(self, payload: bytes, key: bytes | None = None) -> bytes:
        return hmac.new(self._hmac_keys[0] if key is None else key, payload, hashlib.sha256).digest()

    def _verified(self, payload: bytes, signature: bytes) -> bool:
        return any(hmac.compare_digest(self._sign(payload, key), signature) for key in self._hmac_keys)

    # --- adopting a state ---------------------------------------------------------------------------------
    def adopt(self, model_set: ModelSet, record: SyncRecord | None, *, skip_history: bool = False) -> int:
        """Start a new lineage from a restored state (``record``: its checkpointed sync record) or a fresh one,
        and merge the deltas published since its cursor. Returns how many were merged.

        ``skip_history``: merge nothing published so far (a partition whose state was lost is being learned again
        from its earliest offset: the deltas that hold its earlier learning must not count a second time).
        """
        contained = [] if record is None else [record.lineage, *record.contained][:MAX_CONTAINED]
        cursor = record.cursor if record is not None else START
        if skip_history:
            last: list[Any] = self._client.xrevrange(self._stream, count=1)  # type: ignore[assignment]
            if last:
                cursor = last[0][0].decode() if isinstance(last[0][0], bytes) else str(last[0][0])
        self.record = SyncRecord(uuid.uuid4().hex, cursor, contained)
        self._views = {}
        self._unpublished = []
        self._deferred = {}
        for learner in model_set.learners.values():
            apply_merge_choice(learner, self._settings)
            learner.mute_replay(self.alone)
            learner.mark_synced()
        self._dropped_counted = {name: learner.replay_dropped() for name, learner in model_set.learners.items()}
        self._learned_at_sync = dict(model_set.learned)
        self._sources_at_sync = dict(model_set.sources)
        merged, _ = self._merge_stream(model_set, own={}, weights={})
        for learner in model_set.learners.values():
            learner.mark_synced()
        self._sources_at_sync = dict(model_set.sources)
        self._state_examples = sum(model_set.sources.values())
        return merged

    # --- one sync -----------------------------------------------------------------------------------------
    def sync(self, model_set: ModelSet) -> SyncOutcome:
        """Measure this member's deltas, merge the others', and prepare the publication (see the module doc)."""
        started = time.perf_counter()
        own: dict[str, bytes] = {}
        weights: dict[str, int] = {}
        modes: dict[str, str] = {}
        for name, learner in model_set.learners.items():
            modes[name] = str(apply_merge_choice(learner, self._settings))
            delta = learner.sync_delta()
            weights[name] = model_set.learned.get(name, 0) - self._learned_at_sync.get(name, 0)
            if delta is not None:
                own[name] = delta
        sources = {source: count - self._sources_at_sync.get(source, 0) for source, count in model_set.sources.items()
                   if count != self._sources_at_sync.get(source, 0)}
        merged, read_bytes = self._merge_stream(model_set, own, weights)
        for learner in model_set.learners.values():
            learner.mark_synced()
        self._learned_at_sync = dict(model_set.learned)
        self._sources_at_sync = dict(model_set.sources)
        self._state_examples = sum(model_set.sources.values())
        entries = list(self._unpublished)
        self._seq += 1
        if own or sources:
            entries.append(orjson.dumps({
                "lineage": self.record.lineage, "seq": self._seq,
                "models": {name: {"delta": own[name].decode(), "weight": weights[name], "mode": modes[name],
                                  **({"supersedes": True} if modes[name] == str(MergeMode.AVERAGE) else {})}
                           for name in own},
                "sources": sources,
            }))
        self._unpublished = entries
        views = {name: learner.snapshot() for name, learner in model_set.learners.items()
                 if learner.merge_mode() is MergeMode.VIEW}
        view_blob = self._view_blob(views) if views else None
        read_bytes += self._refresh_views(model_set)
        self._count_dropped(model_set)
        published = sum(len(e) for e in entries) + (len(view_blob) if view_blob else 0)
        lineage, max_deltas, ttl = self.record.lineage, self._settings.max_deltas, self._settings.view_ttl_s
        now = self._clock()

        def publish(pipe: Any) -> None:
            for entry in entries:
                pipe.xadd(self._stream, {b"d": entry, b"s": self._sign(entry)}, maxlen=max_deltas, approximate=True)
            if view_blob is not None:
                pipe.set(self._view_key("view", lineage), view_blob, ex=max(1, int(ttl)))
                pipe.hset(self._views_index, lineage, orjson.dumps({"at": now, "seq": self._seq}))

        return SyncOutcome(SyncRecord(lineage, self.record.cursor, list(self.record.contained)), publish,
                           published, read_bytes, time.perf_counter() - started, merged)

    def pull(self, model_set: ModelSet) -> int:
        """Between syncs: learn the examples the other members published since the cursor (replay-mode models);
        the other models' deltas wait for the next sync. Returns how many entries were read.

        Nothing is published and nothing is stored: the next checkpoint records the advanced cursor with the
        state that learned them, and a restore from the checkpoint before merges them again from its own cursor.
        A pull therefore only shortens the time another member's examples take to reach this member's model.
        """
        if any(len(deferred) >= self._settings.max_deltas for deferred in self._deferred.values()):
            return 0  # bounded: the sync that merges them comes first
        started = time.perf_counter()
        before = dict(model_set.sources)
        merged, read_bytes = self._merge_stream(model_set, own={}, weights={}, defer=True)
        for source, count in model_set.sources.items():  # the others' examples: not this member's to publish
            if count != before.get(source, 0):
                self._sources_at_sync[source] = self._sources_at_sync.get(source, 0) + count - before.get(source, 0)
        if merged:
            self.pulls += 1
        if self._metrics is not None and merged:
            self._metrics.sync_pulls.inc()
            self._metrics.sync_bytes.labels("read").inc(read_bytes)
            self._metrics.sync_pull_seconds.observe(time.perf_counter() - started)
        return merged

    def _count_dropped(self, model_set: ModelSet) -> None:
        """Add the replay examples dropped since the last sync (full buffers) to the metric, and log them."""
        for name, learner in model_set.learners.items():
            dropped = learner.replay_dropped()
            new = dropped - self._dropped_counted.get(name, 0)
            self._dropped_counted[name] = dropped
            if new > 0:
                log.warning("model %s: %d examples not recorded for the group since the last sync (replay buffer "
                            "full: sync.replay_max_examples=%d)", name, new, self._settings.replay_max_examples)
                if self._metrics is not None:
                    self._metrics.sync_replay_dropped.inc(new)

    def published(self, outcome: SyncOutcome) -> None:
        """The checkpoint carrying ``outcome`` was stored: its deltas are in the stream."""
        self._unpublished = []
        if self._metrics is not None:
            self._metrics.syncs.labels("ok").inc()
            self._metrics.sync_seconds.observe(outcome.seconds)
            self._metrics.sync_bytes.labels("published").inc(outcome.published_bytes)
            self._metrics.sync_bytes.labels("read").inc(outcome.read_bytes)

    def failed(self) -> None:
        """The checkpoint was not stored: the deltas stay queued for the next sync (bounded by ``max_deltas``)."""
        del self._unpublished[:-self._settings.max_deltas]
        if self._metrics is not None:
            self._metrics.syncs.labels("failed").inc()

    # --- reading the stream -------------------------------------------------------------------------------
    def _merge_stream(
        self, model_set: ModelSet, own: Mapping[str, bytes], weights: Mapping[str, int], *, defer: bool = False,
    ) -> tuple[int, int]:
        """Merge every delta after the cursor that is not this state's own; advance the cursor. ``defer`` (a
        :meth:`pull`): merge only the replay deltas, keep the others for the next sync."""
        skip = {self.record.lineage, *self.record.contained}
        others: dict[str, list[_Delta]] = {name: [] for name in model_set.learners}
        if not defer:
            for name, deferred in self._deferred.items():
                if name in others:
                    others[name].extend(deferred)
            self._deferred = {}
        modes = {name: learner.merge_mode() for name, learner in model_set.learners.items()}
        merged = read_bytes = 0
        cursor = self.record.cursor
        first = True
        while True:
            entries: list[Any] = self._client.xrange(  # type: ignore[assignment]
                self._stream, min=f"({cursor}" if cursor != START else "-", count=READ_CHUNK)
            if first and cursor != START and entries:
                self._check_trimmed(cursor)
            first = False
            if not entries:
                break
            for entry_id, fields in entries:
                cursor = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                payload, signature = bytes(fields.get(b"d", b"")), bytes(fields.get(b"s", b""))
                read_bytes += len(payload)
                if not self._verified(payload, signature):
                    log.error("sync delta %s fails signature verification: ignored", cursor)
                    continue
                data = orjson.loads(payload)
                if data.get("lineage") in skip:
                    continue
                merged += 1
                for name, item in data.get("models", {}).items():
                    if name not in others:
                        continue
                    if _is_replay_delta(item) != (modes[name] is MergeMode.REPLAY):
                        log.warning("model %s: a member's delta in another merge mode (%s) is not merged", name,
                                    item.get("mode", "native"))
                        continue
                    others[name].append((str(data.get("lineage")), item["delta"].encode(), int(item["weight"]),
                                         bool(item.get("supersedes"))))
                for source, count in data.get("sources", {}).items():
                    model_set.sources[source] = model_set.sources.get(source, 0) + int(count)
            if len(entries) < READ_CHUNK:
                break
        self.record.cursor = cursor
        for name, learner in model_set.learners.items():
            if others[name] and defer and modes[name] is not MergeMode.REPLAY:
                self._deferred.setdefault(name, []).extend(others[name])
                continue
            if others[name]:
                own_delta = own.get(name)
                if own_delta is None:
                    own_delta = learner.sync_delta()
                learner.merge(own_delta, weights.get(name, 0), _latest_per_member(others[name]))
        return merged, read_bytes

    def _check_trimmed(self, cursor: str) -> None:
        """Count a restore whose cursor lies before the oldest kept entry (the entries in between are gone)."""
        info: dict[Any, Any] = self._client.xinfo_stream(self._stream)
        first = info.get("first-entry") or info.get(b"first-entry")
        if first and stream_id(first[0]) > stream_id(cursor) and self._client.xlen(self._stream) >= \
                self._settings.max_deltas:
            log.error("the group's delta stream was trimmed past this state's cursor %s: deltas lost", cursor)
            if self._metrics is not None:
                self._metrics.sync_deltas_lost.inc()

    # --- views --------------------------------------------------------------------------------------------
    def _view_blob(self, views: Mapping[str, bytes]) -> bytes:
        header = orjson.dumps({"lineage": self.record.lineage, "models": [[n, len(b)] for n, b in views.items()]})
        body = b"".join([len(header).to_bytes(4, "big"), header, *views.values()])
        return self._sign(body) + body

    def _read_view(self, blob: bytes) -> dict[str, Learner] | None:
        signature, body = blob[:32], blob[32:]
        if not self._verified(body, signature):
            log.error("a member's published model fails signature verification: ignored")
            return None
        length = int.from_bytes(body[:4], "big")
        header = orjson.loads(body[4:4 + length])
        cursor = 4 + length
        learners: dict[str, Learner] = {}
        for name, size in header["models"]:
            data = body[cursor:cursor + size]
            cursor += size
            try:
                learners[name] = restore_learner("river", data)
            except Exception as exc:  # a view that does not restore votes with nobody
                log.warning("a member's model %s does not restore (%s): ignored", name, exc)
        return learners

    def _refresh_views(self, model_set: ModelSet) -> int:
        """Fetch the other members' view-mode models that changed, and give them to this member's learners."""
        viewers = {name: learner for name, learner in model_set.learners.items()
                   if learner.merge_mode() is MergeMode.VIEW}
        if not viewers or self._settings.max_views == 0:
            return 0
        skip = {self.record.lineage, *self.record.contained}
        now = self._clock()
        index = self._client.hgetall(self._views_index)
        fresh: list[tuple[float, str, int]] = []
        for raw_lineage, raw_meta in index.items():
            lineage = raw_lineage.decode() if isinstance(raw_lineage, bytes) else str(raw_lineage)
            meta = orjson.loads(raw_meta)
            if now - float(meta["at"]) > self._settings.view_ttl_s:
                self._client.hdel(self._views_index, lineage)
                continue
            if lineage not in skip:
                fresh.append((float(meta["at"]), lineage, int(meta["seq"])))
        fresh.sort(reverse=True)
        chosen = fresh[:self._settings.max_views]
        read_bytes = 0
        views: dict[str, tuple[int, dict[str, Learner]]] = {}
        for _, lineage, seq in chosen:
            held = self._views.get(lineage)
            if held is not None and held[0] == seq:
                views[lineage] = held
                continue
            blob = self._client.get(self._view_key("view", lineage))
            if blob is None:
                continue
            read_bytes += len(blob)
            learners = self._read_view(bytes(blob))  # type: ignore[arg-type]
            if learners is not None:
                views[lineage] = (seq, learners)
        self._views = views
        for name, learner in viewers.items():
            learner.set_views([held[1][name] for held in views.values() if name in held[1]])
        return read_bytes


def _latest_per_member(deltas: Sequence[_Delta]) -> list[tuple[bytes, int]]:
    """What a learner merges: every delta in order, except that a member's parameters that a later delta of the
    same member supersedes (``supersedes``: averaged models publish their whole parameters) count once, as the
    latest, with the examples of both."""
    merged: list[tuple[bytes, int]] = []
    latest: dict[str, int] = {}
    for lineage, delta, weight, supersedes in deltas:
        index = latest.get(lineage) if supersedes else None
        if index is None:
            if supersedes:
                latest[lineage] = len(merged)
            merged.append((delta, weight))
        else:
            merged[index] = (delta, merged[index][1] + weight)
    return merged


def _is_replay_delta(item: Mapping[str, Any]) -> bool:
    """Whether a published delta is a replay delta (entries written before replay existed carry no mode)."""
    return item.get("mode") == str(MergeMode.REPLAY)


def choose_state(records: Mapping[Any, SyncRecord]) -> Any:
    """Among restored states, the key of the one with the furthest cursor (it lacks the fewest deltas)."""
    return max(records, key=lambda key: stream_id(records[key].cursor))


def open_group_sync(
    client: redis.Redis, settings: Any, metrics: Metrics | None, hmac_keys: Sequence[bytes],
) -> GroupSync | None:
    """The worker's :class:`GroupSync` in group scope (``None`` in partition scope); the first key signs."""
    if settings.sync.scope != "group":
        return None
    return GroupSync(client, settings.redis.namespace, settings.kafka.group_id, hmac_keys, settings.sync, metrics)
