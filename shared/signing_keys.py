"""The HMAC keys that sign and verify model checkpoints, and the rules a key must meet.

``hmac_key`` signs; it and every key of ``hmac_verify_keys`` verify, so a key is rotated in two rolling
restarts without losing a model (docs/security.md). A worker refuses to start with a missing, short or
placeholder key: the old default ``change-me`` let anyone who can write to Redis hand every worker a pickle.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from shared.startup import StartupError

#: the shortest key accepted, in bytes of its UTF-8 encoding
MIN_KEY_BYTES = 32
#: values shipped as examples or defaults somewhere, refused whatever their length
PLACEHOLDER_KEYS = frozenset({
    "change-me", "changeme", "replace-with-a-random-key", "replace-me", "secret", "hmac-key", "streamlearn",
    "your-key-here", "please-change-me",
})
#: the one-line recipe printed with every refusal
HOW_TO_MAKE_ONE = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
#: where the demo, the local stack and the tests keep the key they generate, inside their state directory
KEY_FILE_NAME = "hmac.key"
ENV_VAR = "STREAMLEARN_HMAC_KEY"


def generate_key() -> str:
    """A fresh random key (64 URL-safe characters, 384 bits)."""
    return secrets.token_urlsafe(48)


def key_problem(key: str | None, name: str = "hmac_key", variable: str = ENV_VAR) -> str | None:
    """Why ``key`` may not be used as a secret key (one line, with the recipe), or ``None`` when it may."""
    if key is None or not key.strip():
        return f"{name} is not set ({variable}); {HOW_TO_MAKE_ONE}"
    if key.strip().lower() in PLACEHOLDER_KEYS or key.strip().upper().startswith("REPLACE-"):
        return f"{name} is a placeholder, not a secret; {HOW_TO_MAKE_ONE}"
    if len(key.encode("utf-8")) < MIN_KEY_BYTES:
        return f"{name} is shorter than {MIN_KEY_BYTES} bytes; {HOW_TO_MAKE_ONE}"
    return None


def checkpoint_keys(signing: SecretStr | None, verifying: tuple[SecretStr, ...] = ()) -> tuple[bytes, ...]:
    """The signing key first, then the other verifying keys (duplicates dropped); :class:`StartupError` if bad."""
    keys: list[bytes] = []
    for index, secret in enumerate([signing, *verifying]):
        name = "hmac_key" if index == 0 else f"hmac_verify_keys[{index - 1}]"
        value = None if secret is None else secret.get_secret_value()
        problem = key_problem(value, name)
        if problem is not None:
            raise StartupError(f"refusing to start: {problem}")
        assert value is not None
        encoded = value.encode("utf-8")
        if encoded not in keys:
            keys.append(encoded)
    return tuple(keys)


def key_in(state_dir: Path) -> str:
    """The key kept in ``state_dir`` (created, readable by its owner only, on first use)."""
    path = Path(state_dir) / KEY_FILE_NAME
    if path.exists():
        key = path.read_text(encoding="utf-8").strip()
        if key_problem(key) is None:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return key


def ensure_key_in_environment(state_dir: Path | None = None) -> str:
    """Keep ``STREAMLEARN_HMAC_KEY`` if set, or set one (from ``state_dir``'s key file, or fresh); return it.

    For the programs that run their own throw-away workers: the demo, the benchmarks and the tests.
    """
    current = os.environ.get(ENV_VAR)
    if current:  # a key of the caller's own, good or bad: the worker judges it
        return current
    key = key_in(state_dir) if state_dir is not None else generate_key()
    os.environ[ENV_VAR] = key
    return key
