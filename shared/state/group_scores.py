"""Group-wide scores and the group's champion, kept in Redis so every worker of a consumer group agrees.

Each worker adds the sufficient statistics of the predictions it scored (:class:`ScoreSums`: counts and sums,
so they add across workers exactly) to a rolling window of count buckets, and reads the window back in the
same round trip, with the champion the group agreed on. The rolling window is counted in labels, group-wide:
a label counter ``total`` numbers the group's labels; each added batch goes to the bucket of its last label,
``floor((total - 1) / bucket_size)`` once the batch is counted, and the window is that bucket and the
``buckets - 1`` before it (older ones are deleted as the counter moves on, and every key expires after
:data:`STATE_TTL_S` in case a group disappears). So the window holds between ``(buckets - 1) * bucket_size``
and ``buckets * bucket_size`` labels, plus at most one batch per worker, whichever worker scored them.
Layout and rationale: docs/architecture.md ("One champion for the group") and docs/state.md.

The champion itself is one field of a small hash, changed only by a compare-and-set on its ``epoch``: two
workers that decide the same switch at once make one switch. Metrics that are not sums of counts
(``roc_auc``, macro ``f1`` of a multiclass task) are ranked by the label-weighted mean of the workers' own
rolling values (an approximation, documented).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Final, Protocol

import redis

from shared.learners.base import Target, Task
from shared.state.keys import KeySpace

STORE: Final = "champion"
#: every key of the store expires this long after its last write (a group that stops leaves nothing behind)
STATE_TTL_S: Final = 7 * 24 * 3600
#: how many buckets make the rolling window
DEFAULT_BUCKETS: Final = 10
_PROBA_EPSILON: Final = 1e-15
#: metrics computed exactly from the sums (``f1`` only for binary tasks)
EXACT_METRICS: Final = frozenset({"accuracy", "log_loss", "mae", "rmse", "r2", "f1"})


@dataclass(slots=True)
class ScoreSums:
    """Sufficient statistics of one model's scored predictions: each field is a sum, so they add exactly."""

    n: float = 0.0
    correct: float = 0.0
    loss_sum: float = 0.0
    loss_n: float = 0.0
    abs_error: float = 0.0
    sq_error: float = 0.0
    y_sum: float = 0.0
    y_sq_sum: float = 0.0
    #: binary tasks: true positives, false positives, false negatives of the positive class
    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    #: label-weighted local values of a metric that is not a sum (value * labels, and the labels)
    weighted_sum: float = 0.0
    weighted_n: float = 0.0

    def add(self, other: ScoreSums) -> None:
        """Add ``other``'s sums to these."""
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def items(self) -> list[tuple[str, float]]:
        """The non-zero fields, as ``(name, value)``."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name)]

    @classmethod
    def of_predictions(
        cls,
        task: Task,
        y_true: Sequence[Target],
        y_pred: Sequence[Target | None],
        probas: Sequence[Mapping[Target, float] | None] | None = None,
        *,
        positive: Target = True,
    ) -> ScoreSums:
        """The sums of a batch of predictions and their labels; ``None`` predictions are not scored."""
        sums = cls()
        if task is Task.ANOMALY:
            return sums
        probas = probas if probas is not None else (None,) * len(y_true)
        if task.is_classification:  # local counts: attribute updates per item would cost twice as much
            binary = task is Task.BINARY
            n = correct = loss_n = tp = fp = fn = 0
            loss_sum = 0.0
            low, high, log = _PROBA_EPSILON, 1.0 - _PROBA_EPSILON, math.log
            for t, p, proba in zip(y_true, y_pred, probas, strict=True):
                if p is None:
                    continue
                n += 1
                if t == p:
                    correct += 1
                if proba:
                    loss_sum -= log(min(max(proba.get(t, 0.0), low), high))
                    loss_n += 1
                if binary:
                    if p == positive:
                        if t == positive:
                            tp += 1
                        else:
                            fp += 1
                    elif t == positive:
                        fn += 1
            sums.n, sums.correct, sums.loss_sum, sums.loss_n = n, correct, loss_sum, loss_n
            sums.tp, sums.fp, sums.fn = tp, fp, fn
            return sums
        for t, p, _ in zip(y_true, y_pred, probas, strict=True):
            if p is None:
                continue
            try:
                y, error = float(t), float(p) - float(t)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(error):
                continue
            sums.n += 1
            sums.abs_error += abs(error)
            sums.sq_error += error * error
            sums.y_sum += y
            sums.y_sq_sum += y * y
        return sums

    def value(self, metric: str, task: Task) -> float | None:
        """``metric`` over these sums, or ``None`` when it is undefined (no labels yet, one class only...)."""
        if self.n <= 0:
            return None
        if metric == "accuracy":
            return self.correct / self.n
        if metric == "log_loss":
            return self.loss_sum / self.loss_n if self.loss_n > 0 else None
        if metric == "mae":
            return self.abs_error / self.n
        if metric == "rmse":
            return math.sqrt(self.sq_error / self.n)
        if metric == "r2":
            total = self.y_sq_sum - self.y_sum * self.y_sum / self.n
            return 1.0 - self.sq_error / total if self.n >= 2 and total > 0 else None
        if metric == "f1" and task is Task.BINARY:
            denominator = 2 * self.tp + self.fp + self.fn
            return 2 * self.tp / denominator if denominator > 0 else 0.0
        return self.weighted_sum / self.weighted_n if self.weighted_n > 0 else None


def is_exact(metric: str, task: Task) -> bool:
    """Whether the group value of ``metric`` is exact (a ratio of sums) rather than a weighted mean."""
    return metric in EXACT_METRICS and (metric != "f1" or task is Task.BINARY)


@dataclass(frozen=True, slots=True)
class GroupView:
    """What a worker reads back: the agreed champion and the group's rolling sums per model."""

    #: ``None`` until some worker has written one
    champion: str | None
    #: changes on every switch; a compare-and-set names the epoch it decided on
    epoch: int
    #: labels scored group-wide since the last switch (for the hysteresis's ``min_labels``)
    labels_since_switch: int
    switches: int
    #: labels scored group-wide since the store was created
    total_labels: int
    rolling: dict[str, ScoreSums]


class GroupScoreStore(Protocol):
    """Where a group's scores and champion live (Redis in production, a fake in unit tests)."""

    def sync(self, labels: int, sums: Mapping[str, ScoreSums], default_champion: str) -> GroupView:
        """Add ``labels`` scored labels and each model's ``sums``, then read the window and the champion back.

        ``default_champion`` is written when no champion is stored yet.
        """
        ...

    def switch(self, expected: str, epoch: int, new: str) -> bool:
        """Make ``new`` champion if the stored one is still ``expected`` at ``epoch``; ``False`` if it moved."""
        ...


_SYNC_SCRIPT = """
local state, bucket_prefix = KEYS[1], ARGV[1]
local labels, size, buckets, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('HSETNX', state, 'champion', ARGV[6])
redis.call('HSETNX', state, 'epoch', 0)
local total = tonumber(redis.call('HGET', state, 'total') or '0')
-- the newest bucket holds label number total - 1; the window is the buckets (newest - buckets, newest]
local old_id = math.floor(math.max(total - 1, 0) / size)
local new_total = total + labels
local id = math.floor(math.max(new_total - 1, 0) / size)
if #ARGV > 6 then
  local key = bucket_prefix .. id
  for i = 7, #ARGV, 2 do redis.call('HINCRBYFLOAT', key, ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', key, ttl)
end
if labels > 0 then
  redis.call('HSET', state, 'total', new_total)
  redis.call('HINCRBY', state, 'since_switch', labels)
  -- drop the buckets that left the window (only ids up to old_id can exist)
  for gone = math.max(old_id - buckets + 1, 0), math.min(id - buckets, old_id) do
    redis.call('DEL', bucket_prefix .. gone)
  end
end
redis.call('EXPIRE', state, ttl)
local result = {redis.call('HMGET', state, 'champion', 'epoch', 'since_switch', 'switches', 'total')}
for b = math.max(id - buckets + 1, 0), id do
  result[#result + 1] = redis.call('HGETALL', bucket_prefix .. b)
end
return result
"""

_SWITCH_SCRIPT = """
local state = KEYS[1]
local champion, epoch = redis.call('HGET', state, 'champion'), redis.call('HGET', state, 'epoch')
if champion ~= ARGV[1] or tonumber(epoch or '0') ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', state, 'champion', ARGV[3], 'since_switch', 0)
redis.call('HINCRBY', state, 'epoch', 1)
redis.call('HINCRBY', state, 'switches', 1)
redis.call('EXPIRE', state, tonumber(ARGV[4]))
return 1
"""

#: separates the model name from the field name in a bucket's hash (model names may not contain it)
_SEPARATOR: Final = "|"


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisGroupScores:
    """The group's scores and champion in Redis: one Lua script per sync (one round trip, atomic).

    Keys (see :mod:`shared.state.keys`): ``<ns>:<group>:champion:state`` (a hash: champion, epoch,
    since_switch, switches, total) and ``<ns>:<group>:champion:bucket:<id>`` (a hash of ``model|field`` sums),
    at most ``buckets`` of them at a time.
    """

    def __init__(
        self, client: redis.Redis, namespace: str, group: str, window: int, *, buckets: int = DEFAULT_BUCKETS
    ) -> None:
        if window < 1 or buckets < 1:
            raise ValueError("window and buckets must be at least 1")
        self.keys = KeySpace(namespace, group, STORE)
        self.state_key = self.keys.key("state")
        self.bucket_prefix = self.keys.key("bucket", "")
        self.buckets = buckets
        self.bucket_size = max(1, math.ceil(window / buckets))
        self._client = client
        self._sync = client.register_script(_SYNC_SCRIPT)
        self._switch = client.register_script(_SWITCH_SCRIPT)

    def sync(self, labels: int, sums: Mapping[str, ScoreSums], default_champion: str) -> GroupView:
        arguments: list[str | int | float] = [
            self.bucket_prefix, labels, self.bucket_size, self.buckets, STATE_TTL_S, default_champion,
        ]
        for model, model_sums in sums.items():
            if _SEPARATOR in model:
                raise ValueError(f"model name {model!r} must not contain {_SEPARATOR!r}")
            for field, value in model_sums.items():
                arguments += [f"{model}{_SEPARATOR}{field}", repr(float(value))]
        reply = self._sync(keys=[self.state_key], args=arguments)
        champion, epoch, since, switches, total = (_text(v) for v in reply[0])
        rolling: dict[str, ScoreSums] = {}
        for bucket in reply[1:]:
            for i in range(0, len(bucket), 2):
                name = _text(bucket[i]) or ""
                model, _, field = name.rpartition(_SEPARATOR)
                target = rolling.get(model)
                if target is None:
                    target = rolling[model] = ScoreSums()
                setattr(target, field, getattr(target, field) + float(_text(bucket[i + 1]) or 0.0))
        return GroupView(champion=champion, epoch=int(epoch or 0), labels_since_switch=int(since or 0),
                         switches=int(switches or 0), total_labels=int(total or 0), rolling=rolling)

    def switch(self, expected: str, epoch: int, new: str) -> bool:
        return bool(self._switch(keys=[self.state_key], args=[expected, epoch, new, STATE_TTL_S]))

    def clear(self) -> None:
        """Delete every key of the store (tests, and an operator resetting a group)."""
        keys = list(self._client.scan_iter(match=self.keys.prefix + "*", count=1000))
        if keys:
            self._client.delete(*keys)


def weighted(sums: ScoreSums, value: float | None, labels: int) -> ScoreSums:
    """``sums`` with ``value`` (a local rolling metric) weighted by ``labels`` added to its weighted fields."""
    if value is not None and labels > 0 and math.isfinite(value):
        sums.weighted_sum += value * labels
        sums.weighted_n += labels
    return sums

