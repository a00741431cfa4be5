"""Concept drift on a model's error stream, with River's detectors.

By default only a rise in error is a drift: a model that gets better is not an alarm. How each detector
is made one-sided is listed in :data:`DETECTORS` and explained in ``docs/drift.md``.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from river import drift
from river.base import BinaryDriftDetector, DriftDetector

DEFAULT_DETECTOR: Final = "adwin"


class RiseCheck(enum.Enum):
    """How a detection is confirmed to be a rise in error."""

    #: the detector only tests for an increase (given the ``one_sided`` parameters)
    NATIVE = "native"
    #: ADWIN: the mean of the window it kept is above the mean of the window before the cut
    ESTIMATION = "estimation"
    #: the mean of the last ``recent`` errors is above the mean of the errors before them
    MEANS = "means"


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """A selectable detector: its River class, default parameters, and how it is made rise-only."""

    factory: type[DriftDetector] | type[BinaryDriftDetector]
    defaults: dict[str, Any]
    rise_check: RiseCheck
    binary_only: bool = False
    #: parameters that make it test increases only (applied when ``rise_only``)
    one_sided: dict[str, Any] = field(default_factory=dict)


#: detector name -> spec. Defaults are tuned with ``bench/drift_offline.py`` (see ``docs/drift.md``).
DETECTORS: Final[dict[str, DetectorSpec]] = {
    "adwin": DetectorSpec(drift.ADWIN, {"delta": 0.02}, RiseCheck.ESTIMATION),
    "page_hinkley": DetectorSpec(drift.PageHinkley, {}, RiseCheck.NATIVE, one_sided={"mode": "up"}),
    "kswin": DetectorSpec(drift.KSWIN, {"alpha": 0.001, "window_size": 500, "stat_size": 200, "seed": 0},
                          RiseCheck.MEANS),
    "ddm": DetectorSpec(drift.binary.DDM, {}, RiseCheck.NATIVE, binary_only=True),
    "hddm_a": DetectorSpec(drift.binary.HDDMA, {}, RiseCheck.NATIVE, binary_only=True,
                           one_sided={"two_sided_test": False}),
}


def detector_names() -> list[str]:
    """The names accepted by :class:`ConceptDriftMonitor`."""
    return sorted(DETECTORS)


class ConceptDriftMonitor:
    """A drift detector fed with one model's prequential errors (0/1 for classifiers).

    ``update`` returns ``True`` when a drift is detected at this error; with ``rise_only`` (the default),
    detections where the error went down are dropped (and counted in ``ignored_drops``).
    """

    def __init__(self, detector: str = DEFAULT_DETECTOR, params: dict[str, Any] | None = None,
                 rise_only: bool = True, recent: int | None = None) -> None:
        spec = DETECTORS.get(detector)
        if spec is None:
            raise ValueError(f"unknown drift detector {detector!r}; choose one of {detector_names()}")
        merged = {**spec.defaults, **(params or {})}
        if rise_only:
            for key, value in spec.one_sided.items():
                if key in merged and merged[key] != value:
                    raise ValueError(f"{detector}: {key}={merged[key]!r} contradicts rise_only")
                merged[key] = value
        self.name = detector
        self.params = merged
        self.rise_only = rise_only
        self.binary_only = spec.binary_only
        self._spec = spec
        self._recent_size = recent or int(merged.get("stat_size", 30))
        self.detections = 0
        self.ignored_drops = 0
        self.n = 0
        self.reset()

    def reset(self) -> None:
        """Start again from an empty detector (after the model is reset or replaced)."""
        self._detector: Any = self._spec.factory(**self.params)
        self._recent: deque[float] = deque(maxlen=self._recent_size)
        self._recent_sum = 0.0
        self._since_sum = 0.0
        self._since_n = 0

    def update(self, error: float) -> bool:
        """Feed one error; ``True`` when a (rising, if ``rise_only``) drift is detected now."""
        if self.binary_only and error not in (0, 1):
            raise ValueError(f"{self.name} takes 0/1 errors, got {error!r}")
        if not math.isfinite(error):
            return False
        self.n += 1
        if self.n % self._recent_size == 0:
            self._recent_sum = math.fsum(self._recent)
        check = self._spec.rise_check if self.rise_only else None
        before = self._detector.estimation if check is RiseCheck.ESTIMATION else 0.0
        rose = self._track_means(error) if check is RiseCheck.MEANS else True
        self._detector.update(error)
        if not self._detector.drift_detected:
            return False
        if check is RiseCheck.ESTIMATION:
            rose = self._detector.estimation > before
        self._restart_means()
        if not rose:
            self.ignored_drops += 1
            return False
        self.detections += 1
        return True

    def _track_means(self, error: float) -> bool:
        """Add ``error``; whether the recent mean is above the mean of the errors before the recent ones."""
        if len(self._recent) == self._recent.maxlen:
            self._recent_sum -= self._recent[0]
        self._recent.append(error)
        self._recent_sum += error
        self._since_sum += error
        self._since_n += 1
        older_n = self._since_n - len(self._recent)
        if older_n <= 0:
            return False
        older_mean = (self._since_sum - self._recent_sum) / older_n
        return self._recent_sum / len(self._recent) > older_mean

    def _restart_means(self) -> None:
        self._since_sum = self._recent_sum
        self._since_n = len(self._recent)

    def describe(self) -> dict[str, Any]:
        """The detector and its parameters, for logs and docs."""
        return {"detector": self.name, "params": dict(self.params), "rise_only": self.rise_only}
