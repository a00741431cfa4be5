"""The committed JSON Schemas (schemas/*.json) are what the contract's models generate, and agree with them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from shared import schemas
from shared.contract import DeadLetter, Event, Label, Prediction

ROOT = Path(__file__).resolve().parents[2]


def _validator(kind: str) -> Any:
    schema = json.loads(schemas.path_of(kind).read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_committed_schema_files_are_up_to_date() -> None:
    assert schemas.stale() == [], "schemas/ is out of date: run python -m shared.schemas"


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 0
    path = schemas.path_of("prediction", tmp_path)
    path.write_text(path.read_text().replace('"latency_ms"', '"latency"'))
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 1
    assert schemas.stale(tmp_path) == ["prediction"]


def test_the_examples_of_docs_contract_validate() -> None:
    text = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]
    event, label, prediction = blocks[:3]
    assert _validator("event").is_valid(event) and Event.model_validate(event)
    assert _validator("label").is_valid(label) and Label.model_validate(label)
    assert _validator("prediction").is_valid(prediction) and Prediction.model_validate(prediction)


MODELS = {"event": Event, "label": Label, "prediction": Prediction, "dead_letter": DeadLetter}
CASES: list[tuple[str, dict[str, Any]]] = [
    ("event", {"id": "a", "features": {}}),
    ("event", {"id": "a", "ts": "2026-11-24T12:00:00", "key": "k", "features": {"x": None, "c": "r", "b": True},
               "label": 1}),
    ("event", {"id": "a", "features": {"x": 1}, "extra": "ignored"}),
    ("event", {"features": {"x": 1}}),
    ("event", {"id": "   ", "features": {}}),
    ("event", {"id": "a" * 257, "features": {}}),
    ("event", {"id": "a", "features": {"x": [1]}}),
    ("event", {"id": "a", "features": {"x": {"y": 1}}}),
    ("event", {"id": 7, "features": {}}),
    ("event", {"id": "a", "ts": True, "features": {}}),
    ("event", {"id": "a", "key": "", "features": {}}),
    ("event", {"id": "a", "features": {}, "label": [1]}),
    ("label", {"id": "a", "label": "red"}),
    ("label", {"id": "a"}),
    ("label", {"id": "a", "label": None}),
    ("prediction", {"id": "a", "key": None, "model": "m", "model_version": "v", "prediction": None,
                    "ts": 1.0, "latency_ms": 2}),
    ("prediction", {"id": "a", "key": None, "model": "m", "model_version": "v", "prediction": 1,
                    "proba": {"1": "high"}, "ts": 1.0, "latency_ms": 2}),
    ("dead_letter", {"error": "e", "error_code": "schema", "source_topic": "events", "source_partition": 0,
                     "source_offset": 5}),
    ("dead_letter", {"error": "e", "error_code": "schema", "source_topic": "events", "source_partition": -1,
                     "source_offset": 5}),
]


@pytest.mark.parametrize(("kind", "document"), CASES)
def test_the_schema_accepts_what_the_model_accepts(kind: str, document: dict[str, Any]) -> None:
    try:
        MODELS[kind].model_validate(document)
        accepted = True
    except ValidationError:
        accepted = False
    assert _validator(kind).is_valid(document) == accepted
