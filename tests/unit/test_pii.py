"""Keyed PII hashing, and where the masked values go: features, the label-join store, entity state, dead letters."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from shared.contract import Event
from shared.monitoring.metrics import Metrics
from shared.pii import check_pii_key_apart, dead_letter_copy, keyed_hash
from shared.settings import CleaningSettings, PiiSettings, load_settings
from shared.startup import StartupError
from shared.steps.batch import Batch, Record
from shared.steps.clean import CleanStep
from shared.steps.entities import EntityFeaturesStep
from shared.steps.labels import DelayedLabels

KEY = "p" * 40
EMAIL = "alice@example.com"
PHONE = 33612345678
PII = PiiSettings(drop=("ssn",), hash=("email", "phone"), hash_key=SecretStr(KEY), scrub_strings=True)


def test_the_hash_is_keyed_full_length_and_not_a_plain_digest() -> None:
    token = keyed_hash(KEY.encode(), EMAIL)
    assert token == hmac.new(KEY.encode(), EMAIL.encode(), hashlib.sha256).hexdigest() and len(token) == 64
    assert token != hashlib.sha256(EMAIL.encode()).hexdigest(), "no dictionary attack without the key"
    assert keyed_hash(b"q" * 40, EMAIL) != token
    assert keyed_hash(KEY.encode(), PHONE) == keyed_hash(KEY.encode(), str(PHONE)), "numbers hashed as their text"


def test_hash_rules_need_a_good_key_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (None, "short", "change-me"):
        with pytest.raises(StartupError, match=r"cleaning\.pii\.hash_key"):
            CleanStep(CleaningSettings(pii=PiiSettings(hash=("email",), hash_key=key)))
    CleanStep(CleaningSettings(pii=PiiSettings(hash=())))  # no rule, no key needed
    shared_key = "s" * 40
    monkeypatch.delenv("STREAMLEARN_HMAC_KEY", raising=False)
    settings = load_settings(None, hmac_key=shared_key, cleaning={"pii": {"hash": ["email"], "hash_key": shared_key}})
    with pytest.raises(StartupError, match="must differ from hmac_key"):
        check_pii_key_apart(settings)


def _record(features: dict[str, Any], key: str | None = "customer-1") -> Record:
    event = Event.model_validate({"id": "e1", "key": key, "features": features, "ts": 1.0})
    return Record("events", 0, 5, None, orjson.dumps(event.model_dump()), 1000, event=event)


RAW = {"ssn": "123-45-6789", "email": EMAIL, "phone": PHONE, "amount": 12.5, "note": f"mail {EMAIL}"}


def _assert_masked(features: dict[str, Any]) -> None:
    text = orjson.dumps(features).decode()
    assert "ssn" not in features and "123-45-6789" not in text
    assert EMAIL not in text and str(PHONE) not in text
    assert features["email"] == keyed_hash(KEY.encode(), EMAIL) and features["amount"] == 12.5


def test_the_label_join_store_and_the_entity_state_get_the_cleaned_features() -> None:
    clean = CleanStep(CleaningSettings(pii=PII))
    record = _record(dict(RAW))
    clean.process(Batch([record], 0.0))
    assert record.features is not None
    _assert_masked(record.features)
    _assert_masked(DelayedLabels._pending(record).features)  # what the label join writes to Redis

    class Capture:
        evicted_total = 0

        def __init__(self) -> None:
            self.events: list[Any] = []

        def update_and_get(self, events: list[Any], positions: list[Any]) -> list[dict[str, float]]:
            self.events.extend(events)
            return [{} for _ in events]

        def size(self) -> int:
            return 0

    store = Capture()
    EntityFeaturesStep(store, Metrics(CollectorRegistry())).process(Batch([record], 0.0))  # type: ignore[arg-type]
    _assert_masked(store.events[0][2])

    everything_dropped = _record({"ssn": "123-45-6789"})
    clean.process(Batch([everything_dropped], 0.0))
    EntityFeaturesStep(store, Metrics(CollectorRegistry())).process(Batch([everything_dropped], 0.0))  # type: ignore[arg-type]
    assert store.events[-1][2] == {}, "an event cleaned of every feature must not fall back to the raw ones"


def test_the_dead_letter_copy_follows_the_setting() -> None:
    clean = CleanStep(CleaningSettings(pii=PII))
    original = orjson.dumps({"id": "e1", "features": RAW, "label": 3.5})
    assert dead_letter_copy(PII, clean.mask)(original) == original  # keep: the default
    masked = dead_letter_copy(PII.model_copy(update={"dead_letters": "drop_fields"}), clean.mask)
    copy = orjson.loads(masked(original))
    _assert_masked(copy["features"])
    assert copy["label"] == 3.5 and copy["id"] == "e1"
    assert masked(b"\xff not json " + EMAIL.encode()) == b"", "what cannot be masked is not copied"
    assert masked(orjson.dumps({"id": "x", "features": "ssn 123-45-6789"})) == b""
