"""Decode and validate: every kind of bad input gets its own reason code; valid events parse exactly."""

from __future__ import annotations

import orjson
import pytest

from shared.settings import LimitSettings
from shared.steps.batch import Batch, Record
from shared.steps.decode import DecodeStep, InvalidMessage, decode_event

LIMITS = LimitSettings(max_payload_bytes=2048, max_features=5, max_string_length=50)

BAD_INPUTS: list[tuple[str, bytes | None]] = [
    ("empty", b""),
    ("empty", None),
    ("invalid_utf8", b'{"id": "a\xff\xfe", "features": {}}'),
    ("invalid_json", b'{"id": "a", "features": {'),
    ("non_finite", b'{"id": "a", "features": {"x": NaN}}'),
    ("invalid_json", b'{"id": "a", "features": {"x": nan}}'),
    ("not_an_object", b'[1, 2, 3]'),
    ("schema", b'{"features": {"x": 1}}'),
    ("schema", b'{"id": "", "features": {"x": 1}}'),
    ("schema", b'{"id": "   ", "features": {"x": 1}}'),
    ("schema", b'{"id": 12, "features": {"x": 1}}'),
    ("schema", b'{"id": "a", "features": {"x": [1, 2]}}'),
    ("schema", b'{"id": "a", "features": "x=1"}'),
    ("schema", b'{"id": "a", "features": {"x": 1}, "ts": "yesterday"}'),
    ("schema", b'{"id": "a", "features": {"x": 1}, "label": {"a": 1}}'),
    ("non_finite", b'{"id": "a", "features": {"x": 1e999}}'),
    ("oversize", b'{"id": "a", "features": {"x": "' + b"y" * 4000 + b'"}}'),
    ("oversize", b'{"id": "a", "features": {"x": "' + b"y" * 60 + b'"}}'),
    ("too_many_features", orjson.dumps({"id": "a", "features": {f"f{i}": i for i in range(6)}})),
]


@pytest.mark.parametrize(("code", "value"), BAD_INPUTS)
def test_bad_input_is_rejected_with_its_reason(code: str, value: bytes | None) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_event(value, LIMITS)
    assert info.value.rejection.code == code
    assert len(info.value.rejection.reason) > 10


def test_valid_event_keeps_types_and_parses_iso_timestamp() -> None:
    value = orjson.dumps({
        "id": "e1", "key": "user-7", "ts": "2026-01-02T03:04:05Z",
        "features": {"n": 3, "f": 0.5, "s": "red", "b": True, "m": None}, "label": False,
    })
    event = decode_event(value, LIMITS)
    assert event.features == {"n": 3, "f": 0.5, "s": "red", "b": True, "m": None}
    assert isinstance(event.features["n"], int) and isinstance(event.features["b"], bool)
    assert event.ts == 1767323045.0
    assert event.label is False
    assert event.kafka_key == "user-7"


def test_kafka_key_defaults_to_id() -> None:
    event = decode_event(b'{"id": "e2", "features": {}}', LIMITS)
    assert event.kafka_key == "e2"
    assert event.ts is None and event.label is None


def test_step_marks_each_record_and_never_raises() -> None:
    values = [b'{"id": "ok", "features": {"x": 1}}', b"garbage", None]
    batch = Batch([Record("events", 0, i, None, v, 0) for i, v in enumerate(values)], polled_at=0.0)
    DecodeStep(LIMITS).process(batch)
    assert [r.is_valid for r in batch.records] == [True, False, False]
    assert [r.rejection.code if r.rejection else None for r in batch.records] == [None, "invalid_json", "empty"]
    assert batch.next_offsets() == {("events", 0): 3}
