"""Decode's fast path (``Event.from_plain_json``) against pydantic's validation, which it skips when it can.

``tests/unit/reference/decode.py`` is the decoder before the fast path (pydantic for every record). Over a seeded
mix of several thousand payloads, common and odd, both must give equal events (the same values of the same types,
the same set fields) or the same rejection (code and reason).
"""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest

from shared.contract import Event
from shared.settings import LimitSettings
from shared.steps.batch import Batch, InvalidMessage, Record
from shared.steps.decode import DecodeStep, decode_event
from tests.unit.reference import decode as reference

ODD_VALUES: list[Any] = [
    0.0, -0.0, 1e308, -1e308, 5e-324, 1, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, True, False, None, "", "x", "é" * 3,
    [], {}, [1.0], {"a": 1.0},
]


def _odd(rng: random.Random) -> Any:
    return rng.choice(ODD_VALUES)


def _payload(rng: random.Random) -> bytes:
    event: dict[str, Any] = {"id": f"e{rng.randrange(10**6)}", "ts": 1.7e9 + rng.random(),
                             "features": {f"f{j}": rng.gauss(0, 1) for j in range(rng.randint(0, 8))}}
    roll = rng.random()
    if roll < 0.3:
        event["label"] = rng.choice([True, False, 1, 0, 2.5, "cat", None, 2**63 - 1])
    if rng.random() < 0.3:
        event["key"] = rng.choice(["k", "", " ", "k" * 256, "k" * 257, None, 1, True])
    if rng.random() < 0.5:  # break one thing, or make it unusual
        what = rng.choice(["id", "ts", "features", "feature", "label", "extra", "drop", "name"])
        if what == "id":
            event["id"] = rng.choice(["", " ", "\t\n", "x" * 256, "x" * 257, 1, None, True, "é" * 256, "é" * 257])
        elif what == "ts":
            event["ts"] = rng.choice([None, 0, 1, 2**63 - 1, True, "2024-01-01T00:00:00Z", "2024-01-01", "bad",
                                      [], 1e308, -1.5])
        elif what == "features":
            event["features"] = rng.choice([[], None, "x", 1.0, {}])
        elif what == "feature":
            event["features"][f"f{rng.randrange(4)}"] = _odd(rng)
        elif what == "label":
            event["label"] = _odd(rng)
        elif what == "extra":
            event[rng.choice(["x", "score", "version"])] = _odd(rng)
        elif what == "drop":
            del event[rng.choice(["id", "ts", "features"])]
        else:
            event["features"] = {rng.choice(["", "a b", "ü"]): 1.0, **event["features"]}
    value = orjson.dumps(event)
    if rng.random() < 0.05:  # what orjson cannot read: NaN and infinity, or broken JSON
        value = rng.choice([value.replace(b"}", b', "nan": NaN}', 1), value.replace(b"}", b', "i": Infinity}', 1),
                            value[:-1], b"[1.0]", b"", b'"s"', b"\xff\xfe", value.replace(b"1", b"1e999", 1)])
    return value


def _outcome(decode: Any, value: bytes, limits: LimitSettings) -> Any:
    try:
        event = decode(value, limits)
    except InvalidMessage as exc:
        return ("rejected", exc.rejection)
    dumped = event.model_dump()
    return ("event", dumped, {k: type(v) for k, v in dumped.items()},
            {k: type(v) for k, v in dumped["features"].items()}, event.model_fields_set, event)


@pytest.mark.parametrize("seed", [1, 2])
def test_fast_path_equals_pydantic(seed: int) -> None:
    rng = random.Random(seed)
    limits = LimitSettings()
    fast = 0
    for _ in range(5000):
        value = _payload(rng)
        new, old = _outcome(decode_event, value, limits), _outcome(reference.decode_event, value, limits)
        assert new == old, value
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict) and Event.from_plain_json(data) is not None:
            fast += 1
    assert fast > 1000  # the fast path is taken for the common events


def test_fast_path_takes_only_what_it_is_sure_of() -> None:
    assert Event.from_plain_json({"id": "a", "features": {"x": 1.0}}) is not None
    for data in ({"id": "a", "features": {"x": True}}, {"id": "a", "features": {"x": math.nan}},
                 {"id": "a", "features": {"x": 1e308, "y": 1e308}}, {"id": " ", "features": {}},
                 {"id": "a", "features": {}, "ts": "2024-01-01"}, {"id": "a", "features": {}, "label": math.inf},
                 {"id": "a", "features": {}, "key": ""}, {"features": {}}):
        assert Event.from_plain_json(data) is None, data


def test_step_decodes_a_batch_like_one_at_a_time() -> None:
    rng = random.Random(3)
    limits = LimitSettings()
    records = [Record("events", 0, i, None, _payload(rng), 0) for i in range(2000)]
    DecodeStep(limits).process(Batch(records, 0.0))
    for record in records:
        assert record.value is not None
        expected = _outcome(reference.decode_event, record.value, limits)
        if record.rejection is not None:
            assert expected == ("rejected", record.rejection)
        else:
            assert record.event is not None and expected[0] == "event" and expected[-1] == record.event
