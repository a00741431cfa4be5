"""``streamlearn produce`` without a broker: rows to events, validation with line numbers, the client's encoders."""

from __future__ import annotations

import io
import time
from typing import Any

import orjson
import pytest

from services.produce import (
    ByteCounter,
    Columns,
    Progress,
    UsageError,
    csv_rows,
    csv_value,
    detect_format,
    jsonl_rows,
    produce_rows,
)
from shared.client import MAX_LABEL_BYTES, InvalidRecord, encode_event, encode_label
from shared.contract import Event
from shared.settings import LimitSettings
from shared.steps import labels as worker_labels
from shared.steps.batch import Rejection


def _lines(text: str) -> ByteCounter:
    return ByteCounter(io.BytesIO(text.encode("utf-8")))


@pytest.mark.parametrize(("text", "value"), [
    ("", None), ("true", True), ("FALSE", False), ("12", 12), ("-3", -3), ("1.5", 1.5), ("1e3", 1000.0),
    (".5", 0.5), ("red", "red"), ("1_000", "1_000"), ("0x10", "0x10"), (" 7", " 7"),
])
def test_csv_values_become_json_values(text: str, value: Any) -> None:
    assert csv_value(text) == value and type(csv_value(text)) is type(value)


def test_csv_rows_map_columns_and_name_the_line_of_each_bad_row() -> None:
    text = ('\ufeffid,cust,when,x,note,y\n'
            'a,c1,2026-11-24T12:00:00Z,1.5,"two\nlines",true\n'  # lines 2-3
            'b,,1767323045,,plain,\n'                             # line 4: no key, x missing, no label
            'c,c2,1,2\n'                                          # line 5: too few fields
            '\n'
            'd,c3,1,nan,x,0\n')                                   # line 7
    columns = Columns(key="cust", ts="when", label="y", explicit=frozenset({"cust", "when", "y"}))
    rows = list(csv_rows(_lines(text), columns))
    assert [r.line for r in rows] == [3, 4, 5, 7]
    assert rows[0].event == {"id": "a", "ts": "2026-11-24T12:00:00Z", "key": "c1",
                             "features": {"x": 1.5, "note": "two\nlines"}, "label": True}
    assert rows[1].event == {"id": "b", "ts": 1767323045, "features": {"x": None, "note": "plain"}}
    assert rows[2].error == "expected 6 fields as in the header, got 4"
    assert rows[3].event is not None  # NaN is refused by the contract, when the row is encoded


def test_csv_without_an_id_column_numbers_the_rows_and_a_missing_named_column_is_a_usage_error() -> None:
    rows = list(csv_rows(_lines("x,y\n1,2\n3,4\n"), Columns(label="y", id_prefix="data")))
    assert [r.event["id"] for r in rows if r.event] == ["data-2", "data-3"]
    with pytest.raises(UsageError, match="no column 'target'"):
        list(csv_rows(_lines("x,y\n1,2\n"), Columns(label="target", explicit=frozenset({"target"}))))
    with pytest.raises(UsageError, match="empty"):
        list(csv_rows(_lines(""), Columns()))


def test_jsonl_rows_flat_or_nested_and_bad_lines() -> None:
    text = ('{"id": "a", "features": {"x": 1}, "label": true}\n'
            '\n'
            '{"order": 7, "x": 2, "paid": false}\n'
            'not json\n'
            '[1, 2]\n'
            '{"id": "b", "x": NaN}\n'
            '{"x": 1}\n')
    rows = list(jsonl_rows(_lines(text), Columns()))
    assert [r.line for r in rows] == [1, 3, 4, 5, 6, 7]
    assert rows[0].event == {"id": "a", "features": {"x": 1}, "label": True}
    assert rows[1].event == {"id": "row-3", "features": {"order": 7, "x": 2, "paid": False}}
    assert rows[2].error is not None and rows[2].error.startswith("not valid JSON")
    assert rows[3].error == "a JSON list, expected an object"
    assert rows[4].event is not None and rows[4].event["features"]["x"] != rows[4].event["features"]["x"]  # NaN
    named = list(jsonl_rows(_lines(text), Columns(id="order", label="paid", explicit=frozenset({"order"}))))
    assert named[1].event == {"id": "7", "features": {"x": 2}, "label": False}
    assert named[0].error == "no field 'order' (the id)"


def test_produce_rows_reports_each_invalid_row_with_its_line_and_keeps_the_others() -> None:
    text = "id,x,y\na,1,true\nb,inf,false\n,2,true\nc,3,\nd,,false\n"
    errors = io.StringIO()
    stats = produce_rows(csv_rows(_lines(text), Columns(label="y")), None, limits=LimitSettings(),
                         source_name="data.csv", errors=errors)
    assert (stats.sent, stats.invalid, stats.invalid_lines) == (3, 2, [3, 4])
    messages = errors.getvalue().splitlines()
    assert messages[0].startswith("streamlearn produce: data.csv, line 3: invalid event: features")
    assert "'x' is inf" in messages[0] and messages[0].endswith("row skipped")
    assert "line 4: invalid event: id:" in messages[1]


def test_rows_over_the_worker_limits_are_refused() -> None:
    limits = LimitSettings(max_features=2, max_string_length=5)
    with pytest.raises(InvalidRecord) as too_many:
        encode_event({"id": "a", "features": {"a": 1, "b": 2, "c": 3}}, limits)
    assert too_many.value.code == "too_many_features"
    with pytest.raises(InvalidRecord) as long_string:
        encode_event({"id": "a", "features": {"a": "x" * 100}}, limits)
    assert long_string.value.code == "oversize"
    with pytest.raises(InvalidRecord) as nan:
        encode_event({"id": "a", "features": {"a": float("nan")}})
    assert nan.value.code == "non_finite"


def test_encoders_key_by_key_else_id_and_labels_follow_the_worker() -> None:
    assert encode_event({"id": "a", "key": "k", "features": {}})[0] == b"k"
    key, value = encode_event({"id": "a", "features": {"x": 1.5}, "label": True})
    assert key == b"a" and orjson.loads(value) == {"id": "a", "features": {"x": 1.5}, "label": True}
    label = encode_label({"id": "a", "label": "red", "ts": "2026-11-24T12:00:00Z"})
    assert worker_labels.decode_label(label).label == "red"
    with pytest.raises(InvalidRecord, match="label:"):
        encode_label({"id": "a"})
    with pytest.raises(InvalidRecord, match="exceeds"):
        encode_label({"id": "a", "label": "x" * MAX_LABEL_BYTES})
    assert MAX_LABEL_BYTES == worker_labels.MAX_LABEL_BYTES


def test_format_from_the_extension() -> None:
    assert detect_format("a.CSV", None) == "csv" and detect_format("a.ndjson", None) == "jsonl"
    assert detect_format("-", None) == "jsonl" and detect_format("a.txt", "csv") == "csv"
    with pytest.raises(UsageError, match="--format"):
        detect_format("a.txt", None)


def test_the_rate_limit_spaces_the_events_and_the_bar_shows_the_share_of_the_file_read() -> None:
    text = "x\n" + "1\n" * 20
    counter = _lines(text)
    bar = io.StringIO()
    progress = Progress(bar, len(text.encode()), enabled=True)
    started = time.monotonic()
    stats = produce_rows(csv_rows(counter, Columns()), None, limits=LimitSettings(), rate=100.0,
                         errors=io.StringIO(), progress=progress, bytes_read=lambda: counter.bytes_read)
    assert stats.sent == 20 and time.monotonic() - started >= 0.19
    assert bar.getvalue().endswith("\n") and "100%  20 events" in bar.getvalue()
    quiet = io.StringIO()
    produce_rows(csv_rows(_lines(text), Columns()), None, limits=LimitSettings(), errors=io.StringIO(),
                 progress=Progress(quiet, None, enabled=False))
    assert quiet.getvalue() == ""


def test_a_further_check_refuses_after_decoding_with_its_own_code() -> None:
    def no_empty(event: Event) -> Rejection | None:
        return Rejection("no_features", "event has no features") if not event.features else None

    assert encode_event({"id": "a", "features": {"x": 1}}, check=no_empty)[0] == b"a"
    with pytest.raises(InvalidRecord) as refused:
        encode_event({"id": "a", "features": {}}, check=no_empty)
    assert (refused.value.code, refused.value.reason) == ("no_features", "event has no features")
    errors = io.StringIO()
    stats = produce_rows(jsonl_rows(_lines('{"id": "a"}\n{"id": "b", "x": 1}\n'), Columns()), None,
                         limits=LimitSettings(), check=no_empty, errors=errors)
    assert (stats.sent, stats.invalid_lines) == (1, [1]) and "line 1: event has no features" in errors.getvalue()


def test_the_rules_of_a_workers_settings_refuse_what_its_semantic_step_would() -> None:
    """``produce --config``: a row the worker would dead-letter (label_task, no_features, ...) is refused here."""
    from shared.settings import Settings
    from shared.steps.semantics import rules_for

    settings = Settings(hmac_key="k" * 40)  # the default model: a binary logistic regression
    text = "id,x,y\na,1,1\nb,2,3.5\nc,,\nd,1e300,0\n"  # c: a missing value, which the worker imputes
    errors = io.StringIO()
    stats = produce_rows(csv_rows(_lines(text), Columns(label="y")), None, limits=settings.limits,
                         check=rules_for(settings).check_event, errors=errors)
    assert stats.sent == 2 and stats.invalid_lines == [3, 5]
    report = errors.getvalue()
    assert "line 3: label 3.5 does not fit a binary classifier" in report
    assert "line 5: feature 'x' is beyond limits.max_abs_value" in report
