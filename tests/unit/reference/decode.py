# Reference copy of shared/steps/decode.py before the fast path (commit a1093f2), for equality tests.
"""Decode and validate: bytes -> JSON -> :class:`~shared.contract.Event`, or a rejection with its reason."""

from __future__ import annotations

import json

import orjson
from pydantic import ValidationError

from shared.contract import Event
from shared.settings import LimitSettings
from shared.steps.batch import Batch, InvalidMessage, Record


def _describe_validation(exc: ValidationError) -> tuple[str, str]:
    errors = exc.errors()
    parts = []
    code = "schema"
    for err in errors[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "event"
        message = err["msg"]
        if "NaN" in message or "finite" in message:
            code = "non_finite"
        parts.append(f"{where}: {message}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return code, "invalid event: " + "; ".join(parts) + more


def decode_event(value: bytes | None, limits: LimitSettings) -> Event:
    """Parse one record value; raise :class:`InvalidMessage` with a clear reason when it cannot be used."""
    if value is None or len(value) == 0:
        raise InvalidMessage("empty", "empty record value: expected a JSON object")
    if len(value) > limits.max_payload_bytes:
        raise InvalidMessage(
            "oversize",
            f"payload of {len(value)} bytes exceeds limits.max_payload_bytes={limits.max_payload_bytes}",
        )
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as utf_exc:
            raise InvalidMessage(
                "invalid_utf8", f"payload is not valid UTF-8 (byte {utf_exc.start}): {utf_exc.reason}"
            ) from None
        try:
            # The standard parser accepts NaN, Infinity and 1e999, which the schema then names precisely.
            data = json.loads(value)
        except ValueError:
            raise InvalidMessage("invalid_json", f"payload is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidMessage("not_an_object", f"payload is a JSON {type(data).__name__}, expected an object")
    features = data.get("features")
    if isinstance(features, dict) and len(features) > limits.max_features:
        raise InvalidMessage(
            "too_many_features",
            f"event has {len(features)} features, more than limits.max_features={limits.max_features}",
        )
    try:
        event = Event.model_validate(data)
    except ValidationError as exc:
        raise InvalidMessage(*_describe_validation(exc)) from None
    if len(value) <= limits.max_string_length:
        return event  # no string in the payload can be longer than the payload
    long_strings = [
        name for name, v in event.features.items() if isinstance(v, str) and len(v) > limits.max_string_length
    ]
    if long_strings:
        raise InvalidMessage(
            "oversize",
            f"string features longer than limits.max_string_length={limits.max_string_length}: "
            + ", ".join(sorted(long_strings)[:5]),
        )
    return event


class DecodeStep:
    """Sets ``record.event``, or ``record.rejection`` for input that cannot be used."""

    def __init__(self, limits: LimitSettings) -> None:
        self._limits = limits

    def process(self, batch: Batch) -> None:
        for record in batch.records:
            self.decode(record)

    def decode(self, record: Record) -> None:
        """Decode one record in place."""
        try:
            record.event = decode_event(record.value, self._limits)
        except InvalidMessage as exc:
            record.rejection = exc.rejection
