"""The public wire format: events, labels, predictions, and dead-letter records (see docs/contract.md)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

FeatureValue = StrictBool | StrictInt | StrictFloat | StrictStr | None
LabelValue = StrictBool | StrictInt | StrictFloat | StrictStr

#: dead-letter headers
HEADER_ERROR = "error"
HEADER_REASON_CODE = "error_code"
HEADER_SOURCE_TOPIC = "source_topic"
HEADER_SOURCE_PARTITION = "source_partition"
HEADER_SOURCE_OFFSET = "source_offset"

#: every ``error_code`` a dead letter can carry, each listed in docs/contract.md: what the decoder refuses ...
DECODE_ERROR_CODES = ("empty", "oversize", "invalid_utf8", "invalid_json", "not_an_object", "schema", "non_finite",
                      "too_many_features")
#: ... what fits the schema but makes no sense (shared/steps/semantics.py) ...
SEMANTIC_ERROR_CODES = ("label_task", "ts_out_of_window", "value_out_of_range", "no_features")
#: ... and a record of the labels topic that is not a label
LABEL_ERROR_CODES = ("invalid_label",)
DEAD_LETTER_CODES = DECODE_ERROR_CODES + SEMANTIC_ERROR_CODES + LABEL_ERROR_CODES


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from a number or an ISO-8601 string (naive times are taken as UTC)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("ts must be epoch seconds or an ISO-8601 string, not a boolean")
    if isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"ts {value!r} is not ISO-8601") from exc
        if parsed.tzinfo is None:
            from datetime import UTC

            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    else:
        raise ValueError("ts must be epoch seconds or an ISO-8601 string")
    if not math.isfinite(ts):
        raise ValueError("ts must be finite")
    return ts


_MAX_ID_LENGTH = 256
#: feature types taken as they are: floats, and ints (orjson's fit in 64 bits; ``bool`` is a type of its own)
_NUMBER_TYPES = frozenset({float, int})
#: label types taken as they are (ints parsed by orjson fit in 64 bits; strings are valid UTF-8)
_PLAIN_LABEL_TYPES = frozenset({bool, int, str})


_new_object = object.__new__
_set_attribute = object.__setattr__


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: Annotated[StrictStr, Field(min_length=1, max_length=_MAX_ID_LENGTH)]
    ts: float | None = None

    @field_validator("id")
    @classmethod
    def _id_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("id must not be blank")
        return value

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, value: Any) -> float | None:
        return parse_timestamp(value)


def _check_label(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("label must be a finite number")
    return value


class Event(_Message):
    """An input event on the ``events`` topic."""

    key: Annotated[StrictStr, Field(min_length=1, max_length=_MAX_ID_LENGTH)] | None = None
    features: dict[StrictStr, FeatureValue]
    label: LabelValue | None = None

    @field_validator("features")
    @classmethod
    def _finite_features(cls, features: dict[str, Any]) -> dict[str, Any]:
        for name, value in features.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"feature {name!r} is {value}: NaN and infinity are not allowed")
        return features

    _label_finite = field_validator("label")(_check_label)

    @classmethod
    def from_plain_json(cls, data: dict[str, Any]) -> Event | None:
        """The event for ``data`` (an object parsed by orjson) in the common case, without pydantic's validation.

        Only input that the model certainly accepts, unchanged, is taken: every feature an int or a finite float, a
        non-blank ``id`` and a ``key`` within their lengths, ``ts`` a finite number, ``label`` a bool, int, str
        or finite float (or absent, or null). Anything else gives ``None``: validate it with
        :meth:`model_validate`, which then names what is wrong. The result equals ``model_validate(data)``,
        set fields included (``tests/unit/test_batched_decode.py`` compares the two).
        """
        features = data.get("features")
        if type(features) is not dict:
            return None
        values = features.values()
        if values and (not _NUMBER_TYPES.issuperset(map(type, values)) or not math.isfinite(sum(values))):
            return None
        event_id = data.get("id")
        if type(event_id) is not str or not 0 < len(event_id) <= _MAX_ID_LENGTH or not event_id.strip():
            return None
        ts = key = label = None
        if "ts" in data:
            ts = data["ts"]
            kind = type(ts)
            if kind is int:
                ts = float(ts)
            elif not (ts is None or (kind is float and math.isfinite(ts))):
                return None
        if "key" in data:
            key = data["key"]
            if key is not None and (type(key) is not str or not 0 < len(key) <= _MAX_ID_LENGTH):
                return None
        if "label" in data:
            label = data["label"]
            kind = type(label)
            if not (label is None or kind in _PLAIN_LABEL_TYPES or (kind is float and math.isfinite(label))):
                return None
        # what ``model_construct`` does, without its per-field loop: the values in field order, the fields given
        event = _new_object(cls)
        _set_attribute(event, "__dict__", {"id": event_id, "ts": ts, "key": key, "features": features, "label": label})
        _set_attribute(event, "__pydantic_fields_set__", set(_EVENT_FIELDS.intersection(data)))
        _set_attribute(event, "__pydantic_extra__", None)
        _set_attribute(event, "__pydantic_private__", None)
        return event

    @property
    def kafka_key(self) -> str:
        """The Kafka key: the entity key when given, else the id."""
        return self.key if self.key is not None else self.id


#: the fields of :class:`Event`, in order
_EVENT_FIELDS = frozenset(Event.model_fields)
assert list(Event.model_fields) == ["id", "ts", "key", "features", "label"], "update Event.from_plain_json"


class Label(_Message):
    """A delayed label on the ``labels`` topic, produced with the event's Kafka key."""

    label: LabelValue

    _label_finite = field_validator("label")(_check_label)


class Prediction(BaseModel):
    """One record on ``predictions`` (the champion) or ``predictions.shadow`` (the others)."""

    model_config = ConfigDict(frozen=True)

    id: str
    key: str | None
    model: str
    model_version: str
    prediction: LabelValue | None
    proba: dict[str, float] | None = None
    score: float | None = None
    ts: float
    latency_ms: float

    def to_json(self) -> bytes:
        """Serialize compactly (orjson)."""
        return orjson.dumps(self.model_dump(exclude_none=False))


class DeadLetter(BaseModel):
    """A record of ``events.dlq`` as a reader sees it: the dead-letter headers and the original key and value.

    On Kafka the value is the original bytes and the fields other than ``key`` and ``value`` are headers; this
    model is that record in JSON (``streamlearn tail dead-letters --json`` prints it). ``key`` and ``value`` are
    the original bytes decoded as UTF-8, invalid bytes replaced by U+FFFD.
    """

    model_config = ConfigDict(frozen=True)

    error: str
    #: a stable code, each listed in docs/contract.md
    error_code: str
    source_topic: str
    source_partition: Annotated[int, Field(ge=0)]
    source_offset: Annotated[int, Field(ge=0)]
    key: str | None = None
    value: str | None = None
