"""Property-based tests (hypothesis) of the decoder, the semantic checks and the cleaning step.

Any byte string gives either a valid event or a dead letter with a known code, never an exception; a valid event
survives a round trip through its JSON bytes unchanged (types included: ``true`` stays a boolean, ``1`` an int);
cleaning and the dead-letter copy never raise. Pure functions, no I/O: 2,000 examples each, in seconds.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.contract import DECODE_ERROR_CODES, LABEL_ERROR_CODES, SEMANTIC_ERROR_CODES, Event
from shared.learners.base import Task
from shared.pii import dead_letter_copy
from shared.settings import CleaningSettings, LimitSettings, PiiSettings
from shared.steps.batch import InvalidMessage
from shared.steps.clean import CleanStep
from shared.steps.decode import decode_event
from shared.steps.labels import decode_label
from shared.steps.semantics import SemanticRules

EXAMPLES = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = LimitSettings(max_payload_bytes=4096, max_features=16, max_string_length=64)
RULES = [SemanticRules(LIMITS, [task], clock=lambda: 1.7e9) for task in Task]
PII = PiiSettings(drop=("ssn",), hash=("email",), hash_key="k" * 40, dead_letters="drop_fields")
CLEAN = CleanStep(CleaningSettings(defaults={"age": 30}, pii=PII))
PLAIN = CleanStep(CleaningSettings(pii=PiiSettings(scrub_strings=False)))
DEAD_LETTER_COPY = dead_letter_copy(PII, CLEAN.mask)
NAMES = st.sampled_from(["x", "y", "ssn", "email", "age", "note", "", "é"]) | st.text(max_size=8)

# any JSON value, NaN, infinities and integers beyond 64 bits included
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)
# objects shaped like an event, each field anything
event_like = st.fixed_dictionaries({}, optional={
    "id": json_values | st.text(max_size=300), "ts": json_values, "key": json_values,
    "features": st.dictionaries(NAMES, json_values, max_size=18) | json_values, "label": json_values,
})


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


any_bytes = st.one_of(
    st.binary(max_size=200),
    json_values.map(_dumps),
    event_like.map(_dumps),
    event_like.map(_dumps).flatmap(lambda b: st.integers(0, len(b)).map(lambda i: b[:i])),  # truncated
    event_like.map(_dumps).map(lambda b: b.replace(b'"', b"\xff", 1)),  # not UTF-8
)

finite = st.floats(allow_nan=False, allow_infinity=False)
int64 = st.integers(-(2**63), 2**63 - 1)
strings = st.text(max_size=30) | st.just("s" * 64)
identifiers = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "") | st.just("i" * 256)
feature_values: st.SearchStrategy[Any] = st.none() | st.booleans() | int64 | finite | strings
valid_events: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {"id": identifiers, "features": st.dictionaries(NAMES, feature_values, max_size=8)},
    optional={"ts": finite | st.none(), "key": identifiers | st.none(),
              "label": st.booleans() | int64 | finite | strings},
)


@EXAMPLES
@given(any_bytes)
def test_any_bytes_give_a_valid_event_or_a_known_code(value: bytes) -> None:
    try:
        event = decode_event(value, LIMITS)
    except InvalidMessage as exc:
        assert exc.rejection.code in DECODE_ERROR_CODES and exc.rejection.reason
        assert DEAD_LETTER_COPY(value) is not None  # the masked dead-letter copy never raises either
        return
    assert isinstance(event, Event)
    for rules in RULES:
        rejection = rules.check_event(event)
        assert rejection is None or rejection.code in SEMANTIC_ERROR_CODES
    cleaned = CLEAN.clean(event.features)
    assert "ssn" not in cleaned and cleaned.get("age") is not None
    assert isinstance(DEAD_LETTER_COPY(value), bytes)


@EXAMPLES
@given(any_bytes)
def test_any_bytes_on_the_labels_topic_give_a_label_or_a_reason(value: bytes) -> None:
    try:
        label = decode_label(value)
    except ValueError as exc:
        assert str(exc) and LABEL_ERROR_CODES == ("invalid_label",)
        return
    for rules in RULES:
        rejection = rules.check_label(label.label) or rules.check_ts(label.ts)
        assert rejection is None or rejection.code in SEMANTIC_ERROR_CODES


@EXAMPLES
@given(valid_events)
def test_a_valid_event_survives_a_round_trip_unchanged(data: dict[str, Any]) -> None:
    expected = Event.model_validate(data)
    decoded = decode_event(orjson.dumps(data), LIMITS)
    assert orjson.dumps(decoded.model_dump()) == orjson.dumps(expected.model_dump())  # types compared too
    assert decoded.model_fields_set == expected.model_fields_set
    again = decode_event(orjson.dumps(decoded.model_dump(exclude_unset=True)), LIMITS)
    assert orjson.dumps(again.model_dump()) == orjson.dumps(decoded.model_dump())
    copy = PLAIN.clean(decoded.features)
    assert orjson.dumps(copy) == orjson.dumps(data["features"]), "cleaning without rules changes nothing"
