"""The clean step masks PII and applies defaults without touching the event's own dict."""

from __future__ import annotations

from shared.settings import CleaningSettings, PiiSettings
from shared.steps.clean import CleanStep, scrub_text


def test_scrub_masks_emails_and_long_digit_runs() -> None:
    assert scrub_text("mail bob@example.com now") == "mail <email> now"
    assert scrub_text("card 4111 1111 1111 1111!") == "card <number>!"
    assert scrub_text("order 12345") == "order 12345"


def test_drop_hash_defaults() -> None:
    step = CleanStep(CleaningSettings(
        defaults={"age": 30.0, "country": "unknown"},
        pii=PiiSettings(drop=("ssn",), hash=("email",), hash_key="h" * 40),
    ))
    raw = {"ssn": "123-45-6789", "email": "a@b.co", "age": None, "note": "call 0612345678"}
    cleaned = step.clean(raw)
    assert "ssn" not in cleaned
    assert cleaned["email"] != "a@b.co" and len(str(cleaned["email"])) == 64
    assert cleaned["email"] == step.clean({"email": "a@b.co"})["email"]
    assert cleaned["age"] == 30.0
    assert cleaned["country"] == "unknown"
    assert cleaned["note"] == "call <number>"
    assert raw["age"] is None and "country" not in raw
