"""The built-in dashboard's query catalogue and server, without Prometheus (the browser test has a real one).

The queries use only exported series; the server serves the page and every file it references from the
package (and the package data ships them); the proxy passes only the two query endpoints and answers a clear
JSON error when Prometheus is unreachable.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.dashboard import DashboardServer, build_spec
from services.stack import free_ports
from shared.monitoring.metrics import exported_names
from tests.unit.test_dashboard import promql_metric_names, unknown_metric_names

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "services" / "dashboard" / "static"


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


@pytest.fixture
def dashboard() -> Iterator[DashboardServer]:
    """A dashboard whose Prometheus address has nothing listening."""
    (closed_port,) = free_ports(1)
    with DashboardServer(f"http://127.0.0.1:{closed_port}", port=0, timeout_s=2.0) as server:
        yield server


def test_every_query_reads_only_exported_series() -> None:
    known = exported_names() | {"up"}
    expressions = [query.expr for query in build_spec().queries()]
    assert all(promql_metric_names(e) for e in expressions)
    assert unknown_metric_names(expressions, known) == {}


def test_query_ids_are_unique_and_the_metric_is_substituted() -> None:
    spec = build_spec(metric="f1", rate_window="1m")
    ids = [query.id for query in spec.queries()]
    assert len(ids) == len(set(ids))
    rolling = next(q for q in spec.queries() if q.id == "rolling")
    assert 'metric="f1"' in rolling.expr
    assert all("[1m]" in q.expr for q in spec.queries() if "rate(" in q.expr or "increase(" in q.expr)
    assert spec.as_json()["metric"] == "f1"


def test_accuracy_mae_and_rmse_are_summed_over_workers_before_they_are_divided() -> None:
    scored = "streamlearn_predictions_scored_total"
    expected = {
        "accuracy": ("", "streamlearn_predictions_correct_total"),
        "mae": ("", "streamlearn_prediction_absolute_error_total"),
        "rmse": ("sqrt", "streamlearn_prediction_squared_error_total"),
    }
    for metric, (root, counter) in expected.items():
        queries = {q.id: q.expr for q in build_spec(metric=metric, quality_window="2m").queries()}
        ratio = f"sum by (model) (increase({counter}[2m])) / sum by (model) (increase({scored}[2m]))"
        assert queries["rolling"] == (f"{root}({ratio})" if root else ratio)
        ratio = f"sum by (model) ({counter}) / sum by (model) ({scored})"
        assert queries["cumulative"] == (f"{root}({ratio})" if root else ratio)
        ratio = (f'sum(increase({counter}{{role="champion"}}[2m])) / '
                 f'sum(increase({scored}{{role="champion"}}[2m]))')
        assert queries["champion_metric"] == (f"{root}({ratio})" if root else ratio)
        assert "streamlearn_model_metric" not in queries["rolling"] + queries["cumulative"]


def test_metrics_without_counters_average_the_workers_gauges() -> None:
    for metric in ("f1", "roc_auc", "log_loss", "r2"):
        queries = {q.id: q.expr for q in build_spec(metric=metric).queries()}
        assert queries["rolling"] == f'avg by (model) (streamlearn_model_metric{{metric="{metric}",window="rolling"}})'
        assert "streamlearn_champion == 1" in queries["champion_metric"]
        assert build_spec(metric=metric).as_json()["group_wide"] is False
    assert build_spec().as_json()["group_wide"] is True


def test_an_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric 'acuracy'"):
        build_spec(metric="acuracy")


def test_the_page_and_every_file_it_references_are_served(dashboard: DashboardServer) -> None:
    status, page, kind = _get(dashboard.url)
    assert status == 200 and kind.startswith("text/html")
    referenced = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.decode())
    assert "/static/vendor/uPlot.iife.min.js" in referenced and "/static/app.js" in referenced
    for path in referenced:
        status, body, kind = _get(dashboard.url.rstrip("/") + path)
        assert status == 200 and body == (STATIC / path.removeprefix("/static/")).read_bytes(), path
        assert kind.split(";")[0] in {"text/javascript", "text/css", "image/svg+xml"}, (path, kind)


def test_the_query_catalogue_is_served_as_json(dashboard: DashboardServer) -> None:
    status, body, kind = _get(dashboard.url + "api/queries")
    assert status == 200 and kind == "application/json"
    answer = json.loads(body)
    assert [q["id"] for p in answer["panels"] for q in p["queries"]] == [q.id for q in build_spec().queries()]
    assert answer["prometheus"] == dashboard.prometheus_url


def test_paths_outside_the_static_folder_and_other_prometheus_endpoints_are_not_found(
    dashboard: DashboardServer,
) -> None:
    for path in ("static/../server.py", "static/%2e%2e/server.py", "static/nothing.js", "api/v1/admin/tsdb/snapshot",
                 "api/v1/series", "metrics"):
        assert _get(dashboard.url + path)[0] == 404, path


def test_an_unreachable_prometheus_is_a_json_error_naming_it(dashboard: DashboardServer) -> None:
    status, body, kind = _get(dashboard.url + "api/v1/query?query=up")
    assert status == 502 and kind == "application/json"
    answer = json.loads(body)
    assert answer["status"] == "error" and dashboard.prometheus_url in answer["error"]


def test_the_package_data_ships_every_static_file_and_the_uplot_license() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["services.dashboard"]
    files = [path.relative_to(STATIC.parent).as_posix() for path in STATIC.rglob("*") if path.is_file()]
    assert "static/vendor/uPlot.LICENSE" in files
    assert "MIT License" in (STATIC / "vendor" / "uPlot.LICENSE").read_text()
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)]
    assert unshipped == []


def test_the_docs_name_every_query_and_show_its_promql() -> None:
    text = (ROOT / "docs" / "dashboard.md").read_text().replace("\\|", "|")
    for query in build_spec().queries():
        assert f"`{query.id}`" in text, query.id
        if query.id not in {"latency_p95", "latency_p99"}:  # written once, as latency_p50's, "(and 0.95, 0.99)"
            assert f"`{query.expr}`" in text, query.id
