"""Keyed hashing of PII features, and the masked copy of a dead-lettered event (docs/security.md).

A hashed feature is the HMAC-SHA256 of its value under ``cleaning.pii.hash_key``, in full (64 hex digits): the same
value always gives the same token (so a model can still learn from it), and without the key nobody can recover an
e-mail address or a phone number by hashing candidates, as they could from a plain SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import orjson

from shared.settings import PiiSettings, Settings
from shared.signing_keys import HOW_TO_MAKE_ONE, key_problem
from shared.startup import StartupError


def keyed_hash(key: bytes, value: Any) -> str:
    """The token of one value: HMAC-SHA256 of its text (a string as it is, anything else as JSON), in hex."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def pii_hash_key(pii: PiiSettings) -> bytes | None:
    """The key of the ``hash`` rules (``None`` when there are none); :class:`StartupError` when it is unusable."""
    if not pii.hash:
        return None
    value = pii.hash_key.get_secret_value() if pii.hash_key is not None else None
    problem = key_problem(value, "cleaning.pii.hash_key", "STREAMLEARN_CLEANING__PII__HASH_KEY")
    if problem is not None:
        raise StartupError(f"refusing to start: cleaning.pii.hash names {', '.join(pii.hash)}, but {problem}")
    assert value is not None
    return value.encode("utf-8")


def check_pii_key_apart(settings: Settings) -> None:
    """:class:`StartupError` when the PII hash key is one of the checkpoint keys (each secret has one use)."""
    pii = settings.cleaning.pii
    if pii.hash_key is None:
        return
    checkpoint = [k.get_secret_value() for k in (settings.hmac_key, *settings.hmac_verify_keys) if k is not None]
    if pii.hash_key.get_secret_value() in checkpoint:
        raise StartupError("refusing to start: cleaning.pii.hash_key must differ from hmac_key (one secret, one "
                           f"use); {HOW_TO_MAKE_ONE}")


def dead_letter_copy(pii: PiiSettings, mask: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[bytes | None],
                                                                                                     bytes]:
    """What a dead letter carries for ``cleaning.pii.dead_letters``: the original bytes, or a masked copy."""
    if pii.dead_letters == "keep":
        return lambda value: value or b""

    def masked(value: bytes | None) -> bytes:
        try:
            data = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(data, dict) or not isinstance(data.get("features"), dict):
            return b""
        data["features"] = mask(data["features"])
        return orjson.dumps(data)

    return masked
