"""One champion for the consumer group, chosen from group-wide scores (docs/architecture.md).

Every worker adds the sums of the predictions it scored to a :class:`~shared.state.group_scores.GroupScoreStore`
every ``champion.refresh_s`` seconds (or every bucket of the window's labels, when the stream is fast), reads
back the group's rolling sums and the agreed champion, and, when the group has scored ``champion.min_labels``
labels since the last switch and a challenger beats the champion by ``champion.margin`` on the group's rolling
metric, switches it by a compare-and-set. Every worker then serves the stored champion, so all of them agree
within one refresh interval. A pinned champion never changes and needs no store traffic. When the store cannot be
reached the worker keeps its champion and its pending sums (one :class:`ScoreSums` per model) and tries again at
the next refresh.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence

import redis

from shared.learners.base import Task
from shared.settings import ChampionSettings, Settings
from shared.state.group_scores import GroupScoreStore, GroupView, RedisGroupScores, ScoreSums, is_exact, weighted
from shared.steps.champion import Champion, ChampionSelector, challenger

log = logging.getLogger("streamlearn.champion")


class GroupChampion:
    """The group's champion as this worker sees it (same interface as :class:`ChampionSelector` for the worker)."""

    def __init__(
        self,
        models: Sequence[str],
        tasks: Mapping[str, Task],
        settings: ChampionSettings,
        store: GroupScoreStore,
        *,
        refresh_labels: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._models = list(models)
        self._tasks = dict(tasks)
        self._settings = settings
        self._store = store
        #: also sync once this many labels are pending (the store's bucket: a finer sync adds nothing to the window,
        #: a coarser one delays a switch by more than a bucket when the stream is fast)
        self._refresh_labels = refresh_labels
        self._monotonic = monotonic
        self.default = settings.pinned or self._models[0]
        self.current = self.default
        #: switches this worker made (the sum over the group's workers is the group's switches)
        self.switches = 0
        #: the last view read from the store (``None`` before the first sync)
        self.view: GroupView | None = None
        self._pending: dict[str, ScoreSums] = {}
        self._pending_labels = 0
        self._last_sync = -math.inf
        #: the store's epoch of :attr:`current`, for a compare-and-set
        self._epoch = 0
        self.available = True

    @property
    def active(self) -> bool:
        """Whether the champion can change at all (more than one model and none pinned)."""
        return not self._settings.pinned and len(self._models) > 1

    def record(self, labels: int, sums: Mapping[str, ScoreSums], rolling: Mapping[str, float]) -> None:
        """Remember what this worker scored since the last sync: ``labels`` labels, each model's ``sums``, and its
        local ``rolling`` values (used only for metrics that are not ratios of sums)."""
        if not self.active:
            return
        self._pending_labels += labels
        metric = self._settings.metric
        for name, model_sums in sums.items():
            if name not in self._tasks:
                continue
            pending = self._pending.get(name)
            if pending is None:
                pending = self._pending[name] = ScoreSums()
            pending.add(model_sums)
            if not is_exact(metric, self._tasks[name]):
                weighted(pending, rolling.get(name), int(model_sums.n))

    def update(
        self, labels: int, rolling: dict[str, float], sums: Mapping[str, ScoreSums], *, force: bool = False
    ) -> str | None:
        """:meth:`record`, then :meth:`refresh`; the new champion if it changed on this worker, else ``None``."""
        self.record(labels, sums, rolling)
        return self.refresh(force=force)

    def refresh(self, *, force: bool = False) -> str | None:
        """Sync with the store when ``champion.refresh_s`` has passed, or ``refresh_labels`` labels are pending (or
        ``force``); the new champion if this worker's champion changed, else ``None``."""
        if not self.active:
            return None
        now = self._monotonic()
        enough = self._refresh_labels is not None and self._pending_labels >= self._refresh_labels
        if not force and not enough and now - self._last_sync < self._settings.refresh_s:
            return None
        self._last_sync = now
        try:
            view = self._store.sync(self._pending_labels, self._pending, self.default)
            self._pending, self._pending_labels = {}, 0
            target = self._decide(view)
        except redis.RedisError as exc:
            if self.available:
                log.warning("group scores unavailable (%s): keeping champion %s", exc, self.current)
            self.available = False
            return None
        self.available = True
        if target == self.current:
            return None
        self.current = target
        return target

    def _decide(self, view: GroupView) -> str:
        """The champion to serve after reading ``view`` (switching it in the store when the rule says so)."""
        self.view = view
        self._epoch = view.epoch
        stored = view.champion
        if stored is None or stored not in self._models:  # none yet, or a model no longer configured
            if stored is not None and self._store.switch(stored, view.epoch, self.default):
                log.info("stored champion %s is not configured: reset to %s", stored, self.default)
            return self.default
        if view.labels_since_switch < self._settings.min_labels:
            return stored
        metric = self._settings.metric
        scores: dict[str, float] = {}
        for name, sums in view.rolling.items():
            task = self._tasks.get(name)
            value = sums.value(metric, task) if task is not None else None
            if value is not None:
                scores[name] = value
        best = challenger(stored, scores, self._models, self._settings)
        if best is not None and self._store.switch(stored, view.epoch, best):
            self.switches += 1
            self._epoch = view.epoch + 1
            return best
        return stored  # no better model, or another worker switched first: read at the next refresh

    def promote(self, name: str) -> bool:
        """Make ``name`` the group's champion now (a drift reaction); ``False`` if pinned, unknown, already
        champion, or the store moved on or could not be reached."""
        if not self.active or name not in self._models or name == self.current:
            return False
        try:
            switched = self._store.switch(self.current, self._epoch, name)
        except redis.RedisError as exc:
            log.warning("group scores unavailable (%s): champion %s not promoted", exc, name)
            return False
        if switched:
            log.info("champion promoted after drift: %s -> %s", self.current, name)
            self.current = name
            self.switches += 1
            self._epoch += 1
        return switched


def build_champion(settings: Settings, models: Sequence[str], tasks: Mapping[str, Task]) -> Champion:
    """The champion the worker serves: the group's (``champion.scope: group``, scores in Redis) or its own."""
    champion = settings.champion
    if champion.scope == "worker" or champion.pinned or len(models) < 2:
        return ChampionSelector(models, champion)
    client = redis.Redis.from_url(settings.redis.url.get_secret_value(), socket_timeout=5, socket_connect_timeout=5)
    store = RedisGroupScores(client, settings.redis.namespace, settings.kafka.group_id, settings.metrics.rolling_window)
    return GroupChampion(models, tasks, champion, store, refresh_labels=store.bucket_size)
