"""Champion selection: the best model by a rolling metric, with hysteresis, or a pinned one."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shared.settings import ChampionSettings

log = logging.getLogger("streamlearn.champion")

LOWER_IS_BETTER = frozenset({"log_loss", "mae", "rmse"})


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
        sign = -1.0 if self._settings.metric in LOWER_IS_BETTER else 1.0
        champion_score = rolling.get(self.current)
        if champion_score is None:
            return None
        best, best_score = self.current, sign * champion_score
        for name in self._models:
            score = rolling.get(name)
            if name != self.current and score is not None and sign * score > best_score:
                best, best_score = name, sign * score
        if best == self.current or best_score - sign * champion_score < self._settings.margin:
            return None
        log.info(
            "champion switch: %s (%s %.4f) -> %s (%s %.4f)", self.current, self._settings.metric,
            champion_score, best, self._settings.metric, rolling[best],
        )
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
