"""JSON Schema files of the four record kinds, generated from the contract's pydantic models.

``python -m shared.schemas`` writes ``schemas/<kind>.schema.json``; ``--check`` exits 1 when a committed file
differs from what the models generate (a unit test runs the same check). The schemas describe what the worker
accepts so that producers in other languages can validate before sending. Two rules that pydantic's generator
cannot see from the models are added here: ``ts`` may also be an ISO-8601 string (a ``before`` validator parses
it), and an ``id`` must hold a character that is not white space. The limits (``limits.*`` in the settings) are
configurable and are not part of the schemas; docs/contract.md lists them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shared.contract import DeadLetter, Event, Label, Prediction

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: record kind -> (model, title)
KINDS: dict[str, tuple[type[BaseModel], str]] = {
    "event": (Event, "streamlearn event (topic events)"),
    "label": (Label, "streamlearn delayed label (topic labels)"),
    "prediction": (Prediction, "streamlearn prediction (topics predictions and predictions.shadow)"),
    "dead_letter": (DeadLetter, "streamlearn dead letter (topic events.dlq: headers, original key and value)"),
}
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "schemas"

#: record kind -> field -> description (from docs/contract.md)
FIELD_DOCS: dict[str, dict[str, str]] = {
    "event": {
        "id": "unique per event (dedup and the label join); not blank",
        "ts": "event time: epoch seconds or an ISO-8601 string (a time without zone is UTC)",
        "key": "entity key (customer, device, ...); the Kafka key is the key, else the id",
        "features": "name -> number, string, boolean or null (missing); NaN and infinity are refused; at most "
                    "limits.max_features entries (512), strings at most limits.max_string_length (1024)",
        "label": "when present the models learn from it right after predicting",
    },
    "label": {
        "id": "the id of the event it labels; produce it with the event's Kafka key",
        "label": "the same type as inline labels",
        "ts": "when the truth became known: epoch seconds or an ISO-8601 string",
    },
    "prediction": {
        "id": "copied from the event", "key": "copied from the event",
        "model": "the model's name from the settings",
        "model_version": "<hash of the model's configuration>.<examples it has learned>",
        "prediction": "the predicted class or value; null when a classifier has not seen any class yet",
        "proba": "classifiers: class -> probability; class names are JSON-encoded (true, 1; the string red is red)",
        "score": "anomaly detectors: the anomaly score; otherwise null",
        "ts": "when the prediction was made (epoch seconds)",
        "latency_ms": "from the worker polling the event to the prediction being made",
    },
    "dead_letter": {
        "error": "header error: a reason a person can act on",
        "error_code": "header error_code: a stable code (a metric label), each listed in docs/contract.md",
        "source_topic": "header source_topic", "source_partition": "header source_partition",
        "source_offset": "header source_offset",
        "key": "the original Kafka key (UTF-8, invalid bytes replaced)",
        "value": "the original value (UTF-8, invalid bytes replaced)",
    },
}

_TS_STRING = {"type": "string", "description": "ISO-8601; a time without zone is UTC"}
_NOT_BLANK = r"\S"


def _adjust(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    properties = schema["properties"]
    if kind in ("event", "label"):
        properties["ts"]["anyOf"].insert(1, dict(_TS_STRING))
        properties["id"]["pattern"] = _NOT_BLANK
    return schema


def generate(kind: str) -> dict[str, Any]:
    """The JSON Schema of one record kind."""
    model, title = KINDS[kind]
    schema = _adjust(kind, model.model_json_schema(mode="validation"))
    for name, text in FIELD_DOCS.get(kind, {}).items():
        schema["properties"][name]["description"] = text
    return {"$schema": SCHEMA_DIALECT, **schema, "title": title}


def render(kind: str) -> str:
    """The file text of one schema (stable: sorted keys are not used, so fields keep the models' order)."""
    return json.dumps(generate(kind), indent=2, ensure_ascii=False) + "\n"


def path_of(kind: str, directory: Path = DEFAULT_DIR) -> Path:
    return directory / f"{kind}.schema.json"


def stale(directory: Path = DEFAULT_DIR) -> list[str]:
    """The kinds whose file is missing or differs from what the models generate."""
    return [kind for kind in KINDS
            if not path_of(kind, directory).is_file()
            or path_of(kind, directory).read_text(encoding="utf-8") != render(kind)]


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    """Write every schema file; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in KINDS:
        path = path_of(kind, directory)
        path.write_text(render(kind), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.schemas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the files go (default: schemas/)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is missing or out of date")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.dir)
        for kind in out_of_date:
            print(f"{path_of(kind, args.dir)} is out of date: run python -m shared.schemas", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in write(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
