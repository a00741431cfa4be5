"""Settings: YAML plus environment, frozen, secrets masked, errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import SettingsError, load_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(text)
    return path


def test_yaml_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "kafka:\n  bootstrap_servers: 10.0.0.1:9092\n  group_id: from-file\n")
    monkeypatch.setenv("STREAMLEARN_KAFKA__GROUP_ID", "from-env")
    settings = load_settings(path)
    assert settings.kafka.bootstrap_servers == "10.0.0.1:9092"
    assert settings.kafka.group_id == "from-env"


def test_static_membership_is_off_unless_an_instance_id_is_given(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(_write(tmp_path, "{}")).kafka.group_instance_id is None
    monkeypatch.setenv("STREAMLEARN_KAFKA__GROUP_INSTANCE_ID", "streamlearn-worker-0")
    assert load_settings(_write(tmp_path, "{}")).kafka.group_instance_id == "streamlearn-worker-0"


def test_frozen(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, "{}"))
    with pytest.raises(ValidationError):
        settings.kafka.group_id = "x"  # type: ignore[misc]


def test_secrets_are_masked_everywhere(tmp_path: Path) -> None:
    path = _write(tmp_path, "kafka:\n  sasl_password: hunter2\nredis:\n  url: redis://:pw-secret@h:6379/0\n"
                            "hmac_key: k3y-material\n")
    settings = load_settings(path)
    dumped = json.dumps(settings.masked_dump())
    for secret in ("hunter2", "pw-secret", "k3y-material"):
        assert secret not in dumped
        assert secret not in repr(settings) and secret not in str(settings)
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2"


@pytest.mark.parametrize(("text", "field"), [
    ("metrics:\n  port: eighty\n", "metrics.port"),
    ("kafka:\n  max_poll_records: 0\n", "kafka.max_poll_records"),
    ("models:\n  - name: a\n  - name: a\n", "models"),
    ("models:\n  - {name: 'bad name!'}\n", "models.0.name"),
    ("kafka:\n  unknown_option: 1\n", "kafka.unknown_option"),
    ("kafka:\n  group_instance_id: 'worker 0'\n", "kafka.group_instance_id"),
    ("kafka:\n  group_instance_id: '..'\n", "group_instance_id cannot be"),
])
def test_invalid_file_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(_write(tmp_path, text))
    assert field in str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(_write(tmp_path, "kafka: [unclosed"))
