"""``streamlearn tail`` output without a broker: filters, table and JSON Lines, records that are not predictions."""

from __future__ import annotations

import io

import orjson

from services.tail import PREDICTION_HEADER, render
from shared.client import RawRecord
from shared.contract import DeadLetter


def _prediction(i: int, model: str, key: str | None = None) -> RawRecord:
    value = orjson.dumps({"id": f"e-{i}", "key": key, "model": model, "model_version": "abc.1",
                          "prediction": True, "proba": {"true": 0.8, "false": 0.2}, "score": None,
                          "ts": 1767323045.25, "latency_ms": 2.5})
    return RawRecord("predictions", 0, i, 0, (key or f"e-{i}").encode(), value, ())


def test_json_lines_are_the_records_as_published_filtered_by_model_key_and_limit() -> None:
    records = [_prediction(0, "a", "k1"), _prediction(1, "b", "k1"), _prediction(2, "a", "k2"),
               _prediction(3, "a", "k1"), _prediction(4, "a", "k1")]
    out, errors = io.StringIO(), io.StringIO()
    written = render(iter(records), "predictions", json_lines=True, model="a", key="k1", limit=2, out=out,
                     errors=errors)
    assert written == 2
    assert out.getvalue().splitlines() == [records[0].value.decode(), records[3].value.decode()]


def test_the_table_has_a_header_and_one_readable_line_per_prediction() -> None:
    out = io.StringIO()
    render(iter([_prediction(7, "logreg", "customer-17")]), "predictions", json_lines=False, model=None, key=None,
           limit=None, out=out, errors=io.StringIO())
    header, row = out.getvalue().splitlines()
    assert header == PREDICTION_HEADER
    assert row.split()[1:6] == ["logreg", "customer-17", "e-7", "true", "p"]
    assert "0.800" in row and "2.5ms" in row and row.endswith("abc.1")


def test_a_record_that_is_not_a_prediction_is_reported_and_skipped() -> None:
    bad = RawRecord("predictions", 0, 9, 0, b"k", b'{"id": "x"}', ())
    out, errors = io.StringIO(), io.StringIO()
    assert render(iter([bad, _prediction(1, "a")]), "predictions", json_lines=True, model=None, key=None,
                  limit=None, out=out, errors=errors) == 1
    assert errors.getvalue().startswith("streamlearn tail: predictions[0]@9 skipped:")


def test_dead_letters_carry_their_reason_headers() -> None:
    headers = (("error", b"payload is not valid JSON"), ("error_code", b"invalid_json"), ("source_topic", b"events"),
               ("source_partition", b"1"), ("source_offset", b"42"))
    record = RawRecord("events.dlq", 0, 0, 1767323045000, b"k", b"{oops \xff", headers)
    out = io.StringIO()
    render(iter([record]), "dead-letters", json_lines=True, model=None, key=None, limit=None, out=out,
           errors=io.StringIO())
    letter = DeadLetter.model_validate_json(out.getvalue())
    assert (letter.error_code, letter.source_partition, letter.source_offset) == ("invalid_json", 1, 42)
    assert letter.value == "{oops \ufffd"
    table = io.StringIO()
    render(iter([record]), "dead-letters", json_lines=False, model=None, key=None, limit=None, out=table,
           errors=io.StringIO())
    row = table.getvalue().splitlines()[1]
    assert "invalid_json" in row and "events[1]@42" in row and row.endswith("payload is not valid JSON")
