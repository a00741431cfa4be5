"""Semantic validation: what the schema lets through but no model should learn gets its own dead-letter code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared.contract import DEAD_LETTER_CODES, Event
from shared.learners.base import Task
from shared.settings import LimitSettings
from shared.steps.batch import Batch, Record
from shared.steps.decode import DecodeStep
from shared.steps.semantics import SemanticCheckStep, SemanticRules

NOW = 1_767_000_000.0
REPO = Path(__file__).resolve().parents[2]


def rules(*tasks: Task, **limits: Any) -> SemanticRules:
    return SemanticRules(LimitSettings(**limits), tasks, clock=lambda: NOW)


def event(**fields: Any) -> Event:
    return Event.model_validate({"id": "e1", "features": {"x": 1.0}, **fields})


@pytest.mark.parametrize(("fields", "code"), [
    # the four records of the corpus that were accepted and learned
    ({"label": 3.5}, "label_task"),
    ({"ts": 1e30}, "ts_out_of_window"),
    ({"features": {"x": 1.2e29}}, "value_out_of_range"),
    ({"features": {}}, "no_features"),
    ({"label": "yes"}, "label_task"),
    ({"label": 2}, "label_task"),
    ({"features": {"a": "text", "b": None, "c": -2e15}}, "value_out_of_range"),
])
def test_binary_classifier_refusals(fields: dict[str, Any], code: str) -> None:
    rejection = rules(Task.BINARY).check_event(event(**fields))
    assert rejection is not None and rejection.code == code, rejection


@pytest.mark.parametrize("label", [True, False, 0, 1, 0.0, 1.0])
def test_binary_labels_that_fit(label: Any) -> None:
    assert rules(Task.BINARY).check_event(event(label=label, ts=NOW)) is None


def test_regressor_takes_numbers_within_the_bound() -> None:
    check = rules(Task.REGRESSION).check_event
    assert check(event(label=36.4)) is None and check(event(label=-3)) is None
    assert check(event(label="36.4")).code == "label_task"  # type: ignore[union-attr]
    assert check(event(label=True)).code == "label_task"  # type: ignore[union-attr]
    assert check(event(label=1e16)).code == "value_out_of_range"  # type: ignore[union-attr]


def test_multiclass_takes_a_new_class_but_a_mixed_group_must_fit_every_model() -> None:
    assert rules(Task.MULTICLASS).check_label("a class never seen") is None
    assert rules(Task.MULTICLASS, Task.BINARY).check_label("a class never seen").code == "label_task"  # type: ignore[union-attr]


def test_the_time_window_and_the_switches() -> None:
    assert rules(Task.BINARY).check_ts(NOW + 3600) is None
    assert rules(Task.BINARY).check_ts(0.0) is None  # no age bound by default: historical streams replay
    assert rules(Task.BINARY, ts_max_age_s=60).check_ts(NOW - 61).code == "ts_out_of_window"  # type: ignore[union-attr]
    assert rules(Task.BINARY, ts_max_future_s=None).check_ts(1e30) is None
    assert rules(Task.BINARY, allow_empty_features=True).check_event(event(features={})) is None
    assert rules(Task.BINARY, max_abs_value=10).check_event(event(features={"x": 11})).code == "value_out_of_range"  # type: ignore[union-attr]


def test_the_step_rejects_after_decoding_and_leaves_the_rest() -> None:
    values = [{"id": "ok", "features": {"x": 1}, "label": 1}, {"id": "bad", "features": {"x": 1}, "label": 3.5},
              {"id": "none", "features": {}}]
    batch = Batch([Record("events", 0, i, None, orjson.dumps(v), 0) for i, v in enumerate(values)], 0.0)
    batch.records.append(Record("events", 0, 3, None, b"not json", 0))
    DecodeStep(LimitSettings()).process(batch)
    SemanticCheckStep(rules(Task.BINARY)).process(batch)
    assert [r.rejection.code if r.rejection else None for r in batch.records] == \
        [None, "label_task", "no_features", "invalid_json"]
    assert [r.event.id for r in batch.valid() if r.event] == ["ok"]


def test_docs_contract_lists_every_dead_letter_code() -> None:
    doc = (REPO / "docs" / "contract.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", doc, flags=re.MULTILINE))
    assert set(DEAD_LETTER_CODES) <= listed, set(DEAD_LETTER_CODES) - listed
    decode_source = (REPO / "shared" / "steps" / "decode.py").read_text(encoding="utf-8")
    raised = set(re.findall(r'InvalidMessage\(\s*"([a-z0-9_]+)"', decode_source))
    raised |= {"schema", "non_finite"}  # named in _describe_validation
    assert raised <= set(DEAD_LETTER_CODES), raised - set(DEAD_LETTER_CODES)
