"""The fast validated path builds exactly the event full validation builds, and never accepts what it rejects."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from shared.contract import Event, event_fast
from shared.settings import LimitSettings
from shared.steps.decode import InvalidMessage, decode_event
from tests.unit.test_decode import BAD_INPUTS, LIMITS

VALID: list[dict[str, Any]] = [
    {"id": "a", "features": {}},
    {"id": "a", "features": {"n": 3, "f": 0.5, "s": "red", "b": True, "m": None}, "label": False},
    {"id": "a", "key": "k", "ts": 12, "features": {"x": -1}, "label": 3},
    {"id": "a", "key": None, "ts": None, "features": {"x": 1.0}, "label": None},
    {"id": "a", "ts": 1.5, "features": {"x": 2**62}, "label": "class-b"},
    {"id": "x" * 256, "key": "y" * 256, "features": {"": 0}, "label": 0.25},
]
#: shapes the fast path leaves to full validation (valid or not), and invalid ones it must not accept
EDGE: list[dict[str, Any]] = [
    {"id": "a", "ts": "2026-01-02T03:04:05Z", "features": {}},
    {"id": "a", "features": {}, "extra": 1},
    {"id": "a", "ts": 2**60, "features": {}},
    {"id": "a", "ts": True, "features": {}},
    {"id": "", "features": {}},
    {"id": "  ", "features": {}},
    {"id": "x" * 257, "features": {}},
    {"id": 5, "features": {}},
    {"id": "a", "key": "", "features": {}},
    {"id": "a", "key": "k" * 257, "features": {}},
    {"id": "a", "key": 3, "features": {}},
    {"id": "a", "features": {"x": [1]}},
    {"id": "a", "features": {"x": {"y": 1}}},
    {"id": "a", "features": {"x": float("nan")}},
    {"id": "a", "features": {"x": float("inf")}},
    {"id": "a", "features": []},
    {"id": "a"},
    {"id": "a", "features": {}, "label": float("nan")},
    {"id": "a", "features": {}, "label": [1]},
    {"id": "a", "features": {}, "ts": float("inf")},
]


def _full(data: dict[str, Any]) -> Event | None:
    try:
        return Event.model_validate(data)
    except ValidationError:
        return None


@pytest.mark.parametrize("data", VALID)
def test_valid_events_are_built_exactly_as_full_validation_builds_them(data: dict[str, Any]) -> None:
    fast = event_fast(data)
    assert fast is not None, "a common shape takes the fast path"
    full = Event.model_validate(data)
    assert fast == full
    assert fast.model_dump() == full.model_dump()
    assert fast.model_fields_set == full.model_fields_set
    assert [type(v) for v in fast.features.values()] == [type(v) for v in full.features.values()]
    assert type(fast.ts) is type(full.ts) and type(fast.label) is type(full.label)


@pytest.mark.parametrize("data", EDGE)
def test_edge_shapes_fall_back_to_full_validation(data: dict[str, Any]) -> None:
    assert event_fast(data) is None


def test_random_events_agree_with_full_validation() -> None:
    rng = random.Random(3)
    scalars: list[Any] = [0, 1, -7, 2.5, float("nan"), True, False, None, "s", "", [1], {"a": 1}, 2**70]
    for _ in range(3000):
        data: dict[str, Any] = {"features": {f"f{i}": rng.choice(scalars) for i in range(rng.randint(0, 4))}}
        for name, choices in (("id", ["a", "", " ", 1, None, "b" * 300]), ("ts", [None, 1, 1.5, "2026-01-01", True]),
                              ("key", [None, "k", "", 2]), ("label", [None, True, 1, 0.5, "c", float("inf"), [1]])):
            if rng.random() < 0.7:
                data[name] = rng.choice(choices)
        fast, full = event_fast(data), _full(data)
        if fast is not None:
            assert full is not None and fast == full and fast.model_dump() == full.model_dump(), data


@pytest.mark.parametrize(("code", "value"), BAD_INPUTS)
def test_decode_still_rejects_with_the_same_reason(code: str, value: bytes | None) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_event(value, LIMITS)
    assert info.value.rejection.code == code


def test_decode_takes_the_fast_path_for_a_plain_event(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Event:
        raise AssertionError("full validation called for a plain event")

    monkeypatch.setattr(Event, "model_validate", fail)
    event = decode_event(orjson.dumps(VALID[1]), LimitSettings())
    assert event.features["s"] == "red" and event.label is False
