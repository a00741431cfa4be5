"""The Grafana dashboard and the alert rules use only series that the metrics catalogue exports.

A small PromQL tokenizer pulls metric names out of each expression; it is tested on its own first, so a
bogus name is known to be caught.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.monitoring.metrics import catalogue, exported_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamlearn.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "streamlearn.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

#: series Prometheus makes itself, allowed next to the catalogue
PROMETHEUS_SERIES = frozenset({"up"})
SEVERITIES = frozenset({"info", "warning", "critical"})

_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER_OR_DURATION = re.compile(r"[0-9.][0-9A-Za-z_.]*")
_GRAFANA_VARIABLE = re.compile(r"\$(\{[^}]*\}|[A-Za-z0-9_]+)")
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = _LABEL_LIST_KEYWORDS | {"and", "or", "unless", "offset", "bool", "inf", "nan"}
_CLOSING = {"(": ")", "[": "]", "{": "}"}


def _skip_string(text: str, start: int) -> int:
    """Index just past the string literal that opens at ``start``."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        if text[i] == "\\" and quote != "`":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    raise ValueError(f"unterminated string in {text!r}")


def _skip_group(text: str, start: int) -> int:
    """Index just past the bracket group (``()``, ``[]`` or ``{}``) that opens at ``start``."""
    closing = _CLOSING[text[start]]
    i = start + 1
    while i < len(text):
        char = text[i]
        if char in "\"'`":
            i = _skip_string(text, i)
            continue
        if char in _CLOSING:
            i = _skip_group(text, i)
            continue
        if char == closing:
            return i + 1
        i += 1
    raise ValueError(f"unbalanced {text[start]!r} in {text!r}")


def _next_non_space(text: str, start: int) -> int:
    while start < len(text) and text[start].isspace():
        start += 1
    return start


def promql_metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Skipped: function and aggregation names (an identifier followed by ``(``, ``by (`` or ``without (``),
    keywords and the label lists after ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``,
    everything inside ``{...}`` (label matchers) and ``[...]`` (ranges, subqueries), string literals,
    numbers, durations, Grafana variables (``$model``, ``${x}``) and comments.
    """
    names: set[str] = set()
    i = 0
    while i < len(expression):
        char = expression[i]
        if char in "\"'`":
            i = _skip_string(expression, i)
        elif char in "{[":
            i = _skip_group(expression, i)
        elif char == "#":
            newline = expression.find("\n", i)
            i = len(expression) if newline < 0 else newline
        elif char == "$":
            variable = _GRAFANA_VARIABLE.match(expression, i)
            i = variable.end() if variable else i + 1
        elif (number := _NUMBER_OR_DURATION.match(expression, i)) and (char.isdigit() or char == "."):
            i = number.end()
        elif identifier := _IDENTIFIER.match(expression, i):
            word = identifier.group()
            i = identifier.end()
            following = _next_non_space(expression, i)
            opens_call = following < len(expression) and expression[following] == "("
            grouped_aggregation = bool(re.match(r"(by|without)\s*\(", expression[following:], re.IGNORECASE))
            if word.lower() in _LABEL_LIST_KEYWORDS and opens_call:
                i = _skip_group(expression, following)
            elif word.lower() not in _KEYWORDS and not opens_call and not grouped_aggregation:
                names.add(word)
        else:
            i += 1
    return names


def _split_top_level_commas(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current = ""
    i = 0
    while i < len(text):
        char = text[i]
        if char in "\"'`":
            end = _skip_string(text, i)
            current += text[i:end]
            i = end
            continue
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
        i += 1
    parts.append(current)
    return [part.strip() for part in parts]


def grafana_variable_query_expressions(query: str) -> list[str]:
    """The PromQL inside a Grafana Prometheus variable query (``label_values(selector, label)`` and friends)."""
    match = re.fullmatch(r"\s*(label_values|label_names|query_result|metrics)\s*\((.*)\)\s*", query, re.DOTALL)
    if match is None:
        return [query]
    function, arguments = match.groups()
    if function == "query_result":
        return [arguments]
    if function == "label_values":
        parts = _split_top_level_commas(arguments)
        return parts[:-1]
    if function == "label_names":
        return [arguments] if arguments.strip() else []
    return []


def unknown_metric_names(expressions: list[str], known: set[str]) -> dict[str, set[str]]:
    """Expression -> the names it uses that are not in ``known`` (empty when all are known)."""
    unknown: dict[str, set[str]] = {}
    for expression in expressions:
        missing = promql_metric_names(expression) - known
        if missing:
            unknown[expression] = missing
    return unknown


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets, annotations and variable queries."""
    expressions: list[str] = []
    for panel in _panels(dashboard.get("panels", [])):
        expressions += [target["expr"] for target in panel.get("targets", []) if target.get("expr")]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            expressions.append(annotation["expr"])
        if annotation.get("target", {}).get("expr"):
            expressions.append(annotation["target"]["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else query
        if text:
            expressions += grafana_variable_query_expressions(text)
    return expressions


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of deploy/prometheus/alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="module")
def known_names() -> set[str]:
    return exported_names() | PROMETHEUS_SERIES


# --- the tokenizer ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("expression", "expected"), [
    ('sum by (model) (rate(streamlearn_bogus_total{model=~"$model"}[5m]))', {"streamlearn_bogus_total"}),
    ("histogram_quantile(0.99, sum by (le) (rate(a_bucket[$__rate_interval])))", {"a_bucket"}),
    ('a{metric="accuracy"} < on (job, instance) group_left (model) b{baseline="majority"}', {"a", "b"}),
    ("a < ignoring(model, baseline) group_left b", {"a", "b"}),
    ("sum(rate(x_total[5m] offset 1h)) without (instance) / count(y) by (job) > bool 0.5", {"x_total", "y"}),
    ('deriv(lag[5m]) > 0 and lag > 1e4 or unless_this{l="} by (fake)"}', {"lag", "unless_this"}),
    ("max_over_time(c[10m:1m]) # a comment naming not_a_metric", {"c"}),
    ("time() - last_seen @ end()", {"last_seen"}),
    ("count without (instance) (y) + sum(z) by (job)", {"y", "z"}),
    ('absent(up{job="streamlearn"} == 1)', {"up"}),
    ("topk(10, ${aggregate}(m))", {"m"}),
    ("vector(1) + -Inf * NaN", set()),
])
def test_the_extractor_finds_exactly_the_metric_names(expression: str, expected: set[str]) -> None:
    assert promql_metric_names(expression) == expected


def test_unbalanced_expressions_are_rejected_not_misread() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        promql_metric_names('rate(x{job="a"[5m])')
    with pytest.raises(ValueError, match="unterminated"):
        promql_metric_names('x{job="a}')


def test_grafana_variable_queries_yield_their_selector() -> None:
    assert grafana_variable_query_expressions('label_values(m{job="a,b"}, model)') == ['m{job="a,b"}']
    assert grafana_variable_query_expressions("label_values(model)") == []
    assert grafana_variable_query_expressions("query_result(topk(3, m))") == ["topk(3, m)"]


def test_the_check_reports_a_name_missing_from_the_catalogue(known_names: set[str]) -> None:
    good = 'sum by (model) (rate(streamlearn_predictions_total{model=~"$model"}[5m]))'
    bogus = "sum(rate(streamlearn_predictions_totl[5m])) / sum(rate(streamlearn_events_total[5m]))"
    assert unknown_metric_names([good, bogus], known_names) == {bogus: {"streamlearn_predictions_totl"}}


# --- the dashboard ---------------------------------------------------------------------------------------------

def test_every_dashboard_expression_uses_only_exported_series(
    dashboard: dict[str, Any], known_names: set[str]
) -> None:
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) > 30
    assert unknown_metric_names(expressions, known_names) == {}
    assert all(promql_metric_names(expression) for expression in expressions)


def test_every_catalogue_metric_is_shown_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    used = set().union(*(promql_metric_names(e) for e in dashboard_expressions(dashboard)))
    series_of = {
        spec.name: ({f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"}
                    if spec.kind == "histogram" else {spec.name})
        for spec in catalogue()
    }
    assert sorted(name for name, series in series_of.items() if not series & used) == []


def test_drift_detections_are_annotations_and_model_is_a_variable(dashboard: dict[str, Any]) -> None:
    annotation_names = {
        name for annotation in dashboard["annotations"]["list"] if annotation.get("expr")
        for name in promql_metric_names(annotation["expr"])
    }
    assert "streamlearn_drift_detections_total" in annotation_names
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["model"]["type"] == "query"
    model_queries = [e for e in dashboard_expressions(dashboard) if "streamlearn_model_metric" in e and "{" in e]
    assert model_queries
    assert all('model=~"$model"' in expression for expression in model_queries)


def test_panels_use_the_provisioned_datasource_and_fit_the_grid(dashboard: dict[str, Any]) -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uids = {source["uid"] for source in provisioned if source["type"] == "prometheus"}
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        position = panel["gridPos"]
        assert position["x"] >= 0 and position["x"] + position["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] in uids, panel["title"]
        ref_ids = [target["refId"] for target in panel.get("targets", [])]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_the_dashboard_provider_loads_the_folder_compose_mounts() -> None:
    providers = yaml.safe_load(DASHBOARD_PROVIDER.read_text())["providers"]
    assert [provider["options"]["path"] for provider in providers] == ["/var/lib/grafana/dashboards"]


# --- the alert rules -------------------------------------------------------------------------------------------

def test_every_alert_expression_uses_only_exported_series(known_names: set[str]) -> None:
    expressions = [rule["expr"] for rule in alert_rules()]
    assert unknown_metric_names(expressions, known_names) == {}
    assert all(promql_metric_names(expression) for expression in expressions)


def test_every_alert_has_a_severity_and_a_summary_and_description() -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        assert rule["alert"].startswith("Streamlearn"), rule
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
