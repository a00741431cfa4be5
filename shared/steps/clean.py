"""Clean valid events: mask PII, fill configured defaults for missing values, copy the features out."""

from __future__ import annotations

import re
from typing import Any

from shared.learners.base import Features
from shared.pii import keyed_hash, pii_hash_key
from shared.settings import CleaningSettings
from shared.steps.batch import Batch

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_DIGIT_RUN = re.compile(r"\d(?:[ -]?\d){8,}")
#: value types the cleaning leaves as they are when no name has a rule or a default
_UNCHANGED_TYPES = frozenset({float, int, bool, type(None)})


def scrub_text(value: str) -> str:
    """Mask e-mail addresses and runs of 9 or more digits (card, phone, account numbers)."""
    value = _EMAIL.sub("<email>", value)
    return _DIGIT_RUN.sub("<number>", value)


class CleanStep:
    """Builds ``record.features`` from the event: PII dropped, hashed (keyed) or scrubbed; defaults applied.

    Raises :class:`~shared.startup.StartupError` when ``pii.hash`` names features but ``pii.hash_key`` is unusable.
    """

    def __init__(self, settings: CleaningSettings) -> None:
        self._drop = frozenset(settings.pii.drop)
        self._hash = frozenset(settings.pii.hash)
        self._hash_key = pii_hash_key(settings.pii)
        self._scrub = settings.pii.scrub_strings
        self._defaults = dict(settings.defaults)
        #: no PII rule or default applies to any name: only strings can change (scrubbed)
        self._copy_only = not (self._drop or self._hash or self._defaults)

    def process(self, batch: Batch) -> None:
        clean = self.clean
        for record in batch.records:
            event = record.event
            if event is not None and record.rejection is None and not record.duplicate:
                record.features = clean(event.features)

    def clean(self, raw: Features) -> Features:
        """A cleaned copy of one event's features."""
        if self._copy_only and _UNCHANGED_TYPES.issuperset(map(type, raw.values())):
            return dict(raw)  # nothing to drop, hash, scrub or fill in: a plain copy
        cleaned: Features = {}
        for name, value in raw.items():
            if name in self._drop:
                continue
            if value is None and name in self._defaults:
                value = self._defaults[name]
            elif name in self._hash and value is not None:
                assert self._hash_key is not None
                value = keyed_hash(self._hash_key, value)
            elif self._scrub and isinstance(value, str):
                value = scrub_text(value)
            cleaned[name] = value
        for name, default in self._defaults.items():
            if name not in cleaned and name not in self._drop:
                cleaned[name] = default
        return cleaned

    def mask(self, raw: dict[str, Any]) -> dict[str, Any]:
        """``raw`` with the PII rules applied (dropped, hashed, scrubbed) but no defaults: for copies kept elsewhere."""
        masked: dict[str, Any] = {}
        for name, value in raw.items():
            if name in self._drop:
                continue
            if name in self._hash and value is not None:
                assert self._hash_key is not None
                value = keyed_hash(self._hash_key, value)
            elif self._scrub and isinstance(value, str):
                value = scrub_text(value)
            masked[name] = value
        return masked
