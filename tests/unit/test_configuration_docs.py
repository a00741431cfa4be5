"""docs/configuration.md carries the settings reference generated from shared/settings.py: it must be current."""

from __future__ import annotations

from services.config_docs import DOC, reference, render
from shared.settings import Settings


def test_configuration_reference_is_current() -> None:
    current = DOC.read_text(encoding="utf-8")
    assert render(current) == current, "docs/configuration.md is stale: run `python -m services.config_docs`"


def test_reference_names_every_setting_section() -> None:
    text = reference()
    for name in Settings.model_fields:
        assert f"`{name}" in text, name
    assert "`models[].estimator`" in text
    assert "change-me" not in text, "secrets are masked in the reference"
