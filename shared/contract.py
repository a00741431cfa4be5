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


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
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

    key: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = None
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

    @property
    def kafka_key(self) -> str:
        """The Kafka key: the entity key when given, else the id."""
        return self.key if self.key is not None else self.id


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
