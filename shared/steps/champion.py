"""Champion selection: the best model by a rolling metric, with hysteresis, or a pinned one."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from shared.settings import ChampionSettings
from shared.state.group_scores import ScoreSums

log = logging.getLogger("streamlearn.champion")

LOWER_IS_BETTER = frozenset({"log_loss", "mae", "rmse"})


class Champion(Protocol):
    """What the worker and the drift step use of a champion: this worker's one (:class:`ChampionSelector`) or the
    group's (:class:`shared.steps.group_champion.GroupChampion`)."""

    @property
    def current(self) -> str:
        """The model whose predictions go to the predictions topic."""
        ...

    @property
    def switches(self) -> int:
        """Switches this worker made."""
        ...

    def update(
        self, labels: int, rolling: dict[str, float], sums: Mapping[str, ScoreSums], *, force: bool = False
    ) -> str | None:
        """Account ``labels`` newly scored (with this worker's ``rolling`` values and each model's ``sums``);
        the new champion if it changed, else ``None``."""
        ...

    def promote(self, name: str) -> bool:
        """Make ``name`` champion now (a drift reaction)."""
        ...


def challenger(
    current: str, scores: Mapping[str, float], models: Sequence[str], settings: ChampionSettings
) -> str | None:
    """The model that should replace ``current``: the best by ``settings.metric``, if it beats ``current`` by at
    least ``settings.margin``; else ``None`` (also when ``current`` has no score). Hysteresis on labels is the
    caller's."""
    sign = -1.0 if settings.metric in LOWER_IS_BETTER else 1.0
    champion_score = scores.get(current)
    if champion_score is None:
        return None
    best, best_score = current, sign * champion_score
    for name in models:
        score = scores.get(name)
        if name != current and score is not None and sign * score > best_score:
            best, best_score = name, sign * score
    if best == current or best_score - sign * champion_score < settings.margin:
        return None
    log.info("champion switch: %s (%s %.4f) -> %s (%s %.4f)", current, settings.metric, champion_score, best,
             settings.metric, scores[best])
    return best


class ChampionSelector:
    """Keeps the current champion; a challenger takes over only when clearly and durably better."""

    def __init__(self, models: Sequence[str], settings: ChampionSettings) -> None:
        self._models = list(models)
        self._settings = settings
        self.current = settings.pinned or self._models[0]
        self._labels_since_switch = 0
        self.switches = 0

    def observe(self, labels: int, rolling: dict[str, float]) -> str | None:
        """Account ``labels`` newly scored; return the new champion if it changed, else ``None``."""
        self._labels_since_switch += labels
        if self._settings.pinned or len(self._models) < 2 or self._labels_since_switch < self._settings.min_labels:
            return None
        best = challenger(self.current, rolling, self._models, self._settings)
        if best is None:
            return None
        self.current = best
        self._labels_since_switch = 0
        self.switches += 1
        return best

    def promote(self, name: str) -> bool:
        """Make ``name`` champion now (a drift reaction); ``False`` if pinned, unknown or already champion."""
        if self._settings.pinned or name not in self._models or name == self.current:
            return False
        log.info("champion promoted after drift: %s -> %s", self.current, name)
        self.current = name
        self._labels_since_switch = 0
        self.switches += 1
        return True

    def update(
        self, labels: int, rolling: dict[str, float], sums: Mapping[str, ScoreSums], *, force: bool = False
    ) -> str | None:
        """:meth:`observe` (``worker`` scope: this worker's own rolling scores; ``sums`` are not needed)."""
        return self.observe(labels, rolling) if labels else None
