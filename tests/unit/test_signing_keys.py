"""No default secret: a worker refuses a missing, short or placeholder checkpoint key, in one line, non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from shared.settings import load_settings
from shared.signing_keys import (
    HOW_TO_MAKE_ONE,
    MIN_KEY_BYTES,
    checkpoint_keys,
    ensure_key_in_environment,
    generate_key,
    key_in,
    key_problem,
)
from shared.startup import STARTUP_EXIT_CODE, StartupError

REPO = Path(__file__).resolve().parents[2]
K8S_PLACEHOLDER = yaml.safe_load((REPO / "deploy" / "k8s" / "secret.yaml").read_text())["stringData"]["hmac-key"]


@pytest.mark.parametrize("key", [None, "", "   ", "0123456789", "change-me", K8S_PLACEHOLDER,
                                 "x" * (MIN_KEY_BYTES - 1)])
def test_bad_keys_are_refused_with_the_recipe(key: str | None) -> None:
    problem = key_problem(key)
    assert problem is not None and HOW_TO_MAKE_ONE in problem and "\n" not in problem
    with pytest.raises(StartupError, match="token_urlsafe"):
        checkpoint_keys(None if key is None else SecretStr(key))


def test_a_generated_key_is_accepted_and_the_signing_key_comes_first() -> None:
    new, old = generate_key(), generate_key()
    assert key_problem(new) is None and len(new.encode()) >= MIN_KEY_BYTES
    keys = checkpoint_keys(SecretStr(new), (SecretStr(old), SecretStr(new)))
    assert keys == (new.encode(), old.encode())
    with pytest.raises(StartupError, match=r"hmac_verify_keys\[0\]"):
        checkpoint_keys(SecretStr(new), (SecretStr("change-me"),))


def test_verify_keys_from_the_environment_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = generate_key(), generate_key()
    monkeypatch.setenv("STREAMLEARN_HMAC_VERIFY_KEYS", f"{first}, {second}")
    settings = load_settings(None)
    assert [k.get_secret_value() for k in settings.hmac_verify_keys] == [first, second]
    assert first not in str(settings.masked_dump())


def test_the_state_dir_key_is_kept_and_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = key_in(tmp_path)
    assert key_in(tmp_path) == key and key_problem(key) is None
    assert (tmp_path / "hmac.key").stat().st_mode & 0o077 == 0
    monkeypatch.delenv("STREAMLEARN_HMAC_KEY", raising=False)
    assert ensure_key_in_environment(tmp_path) == key == os.environ["STREAMLEARN_HMAC_KEY"]


@pytest.mark.parametrize("key", [None, "0123456789", K8S_PLACEHOLDER])
def test_the_worker_command_exits_non_zero_with_one_line(tmp_path: Path, key: str | None) -> None:
    """The real CLI: it stops before touching Kafka or Redis (both point at nothing here)."""
    config = tmp_path / "worker.yaml"
    config.write_text("kafka:\n  bootstrap_servers: 127.0.0.1:9\nredis:\n  url: redis://127.0.0.1:9/0\n"
                      "metrics:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    if key is not None:
        env["STREAMLEARN_HMAC_KEY"] = key
    done = subprocess.run([sys.executable, "-m", "services.cli", "worker", "--config", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == STARTUP_EXIT_CODE, done.stderr
    message = [line for line in done.stderr.splitlines() if "refusing to start" in line]
    assert len(message) == 1 and HOW_TO_MAKE_ONE in message[0]
    assert "Traceback" not in done.stderr
