"""The Prometheus config, alert rules and dashboard queries, checked by promtool and by a real Prometheus.

promtool validates the config and rules and runs the rule unit tests (deploy/prometheus/alerts_test.yml). The
session's Prometheus (which loads deploy/prometheus/alerts.yml) then scrapes a real metrics endpoint built from
the catalogue, and every dashboard query and alert rule is evaluated on it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from services.stack import PrometheusServer, free_ports
from shared.monitoring.metrics import Metrics
from tests.unit.test_dashboard import DASHBOARD, alert_rules, dashboard_expressions

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
#: values for Grafana's variables, so that dashboard queries are plain PromQL
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$model": ".*"}
MODELS = ("logreg", "arf")


def _promtool(*arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: apt-get install -y prometheus"
    return subprocess.run([promtool, *arguments], capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def _plain_promql(expression: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    assert "$" not in expression, f"unhandled Grafana variable in {expression}"
    return expression


def _dashboard_promql() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [_plain_promql(expression) for expression in dashboard_expressions(dashboard)]


# --- promtool --------------------------------------------------------------------------------------------------

def test_promtool_accepts_the_compose_config_and_resolves_its_rule_file(tmp_path: Path) -> None:
    result = _promtool("check", "config", str(CONFIG), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"Checking {ALERTS}" in result.stdout


def test_promtool_accepts_the_alert_rules() -> None:
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_the_alert_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = [case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for case in test["alert_rule_test"]]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    stays_silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    alerts = {rule["alert"] for rule in alert_rules()}
    assert sorted(alerts - fires) == [], "alerts never tested firing"
    assert sorted(alerts - stays_silent) == [], "alerts never tested silent"


@pytest.mark.parametrize(("original", "broken"), [
    ("streamlearn_checkpoint_age_seconds > 300", "streamlearn_checkpoint_age_seconds > 3000"),
    ("> 0.05", "> 0.01"),
    ('up{job="streamlearn"} == 0', "up == 0"),
])
def test_the_alert_unit_tests_catch_a_broken_rule(tmp_path: Path, original: str, broken: str) -> None:
    rules = ALERTS.read_text(encoding="utf-8")
    assert rules.count(original) == 1
    (tmp_path / ALERTS.name).write_text(rules.replace(original, broken), encoding="utf-8")
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    result = _promtool("test", "rules", str(tmp_path / ALERTS_TEST.name))
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    expressions = _dashboard_promql()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": expression} for index, expression in enumerate(expressions)
    ]}]}
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = _promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in result.stdout


# --- a real Prometheus scraping a real endpoint ----------------------------------------------------------------

def _populate(metrics: Metrics) -> None:
    """One sample of every series the dashboard reads, as a worker with two models would export."""
    for model in MODELS:
        for window in ("rolling", "cumulative"):
            for metric, value in {"accuracy": 0.6 if model == "logreg" else 0.9, "f1": 0.5, "log_loss": 0.4,
                                  "mae": 1.5, "rmse": 2.0}.items():
                metrics.model_metric.labels(model, metric, window).set(value)
        metrics.champion.labels(model).set(1 if model == "arf" else 0)
        metrics.model_memory.labels(model).set(1_000_000)
        metrics.sequence_keys.labels(model).set(10)
        metrics.last_drift.labels(model, "adwin").set(time.time() - 60)
        metrics.predictions.labels(model).inc(0)
        metrics.learned.labels(model).inc(0)
        metrics.drift_detections.labels(model, "adwin").inc(0)
        metrics.drift_reactions.labels(model, "reset").inc(0)
        for counter in (metrics.scored, metrics.correct, metrics.absolute_error, metrics.squared_error):
            counter.labels(model, "champion" if model == "arf" else "challenger").inc(0)
    for baseline in ("majority", "no_change", "mean"):
        for window in ("rolling", "cumulative"):
            for metric in ("accuracy", "f1", "mae", "rmse"):
                metrics.baseline_metric.labels(baseline, metric, window).set(0.7)
    for outcome in ("valid", "invalid", "duplicate"):
        metrics.events.labels(outcome).inc(0)
    for outcome in ("joined", "late"):
        metrics.labels.labels(outcome).inc(0)
    metrics.dead_letters.labels("bad_json").inc(0)
    metrics.checkpoints.labels("ok").inc(0)
    for outcome in ("ok", "failed"):
        metrics.syncs.labels(outcome).inc(0)
    for direction in ("published", "read"):
        metrics.sync_bytes.labels(direction).inc(0)
    metrics.snapshots_rejected.labels("tampered").inc(0)
    metrics.state_lost.inc(0)
    metrics.champion_switches.inc(0)
    metrics.join_evictions.inc(0)
    metrics.feature_drift.labels("salary", "psi").set(0.3)
    metrics.distribution_drift.labels("label", "psi").set(0.1)
    metrics.consumer_lag.labels("events", "0").set(120)
    metrics.kept_records.labels("score").set(3)
    for gauge, value in ((metrics.paused_partitions, 0), (metrics.checkpoint_age, 4), (metrics.join_entries, 50),
                         (metrics.dedup_entries, 500), (metrics.entity_keys, 20), (metrics.redis_up, 1),
                         (metrics.kafka_up, 1), (metrics.ready, 1)):
        gauge.set(value)
    metrics.info.labels("0.1.0", "0.26.1", "2.5.0", "3.0.12").set(1)


def _advance(metrics: Metrics) -> None:
    """Traffic between two scrapes, so rates, increases and quantiles have something to show."""
    metrics.events.labels("valid").inc(500)
    metrics.events.labels("invalid").inc(5)
    metrics.events.labels("duplicate").inc(2)
    metrics.labels.labels("joined").inc(100)
    metrics.dead_letters.labels("bad_json").inc(5)
    metrics.checkpoints.labels("ok").inc()
    metrics.syncs.labels("ok").inc()
    metrics.sync_bytes.labels("published").inc(20_000)
    metrics.sync_bytes.labels("read").inc(20_000)
    metrics.champion_switches.inc()
    metrics.join_evictions.inc()
    metrics.state_lost.inc()
    metrics.snapshots_rejected.labels("tampered").inc()
    for model in MODELS:
        metrics.predictions.labels(model).inc(500)
        metrics.learned.labels(model).inc(400)
        metrics.drift_detections.labels(model, "adwin").inc()
        metrics.drift_reactions.labels(model, "reset").inc()
        role = "champion" if model == "arf" else "challenger"
        metrics.scored.labels(model, role).inc(400)
        metrics.correct.labels(model, role).inc(360 if model == "arf" else 240)
        metrics.absolute_error.labels(model, role).inc(600.0)
        metrics.squared_error.labels(model, role).inc(1600.0)
    for seconds in (0.004, 0.02, 0.3):
        metrics.processing_seconds.observe(seconds)
        metrics.end_to_end_seconds.observe(seconds * 2)
    metrics.batch_size.observe(100)


def _rules(prometheus: PrometheusServer) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/rules", timeout=10) as response:
        groups = json.load(response)["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def scraped_worker_metrics(prometheus_server: PrometheusServer) -> Iterator[tuple[Metrics, str]]:
    """A populated :class:`Metrics` served on loopback and scraped by the session's Prometheus; its instance."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    _populate(metrics)
    (port,) = free_ports(1)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    instance = f"127.0.0.1:{port}"
    previous_targets = prometheus_server.scrape_targets()
    prometheus_server.set_scrape_targets([instance])
    try:
        yield metrics, instance
    finally:
        prometheus_server.set_scrape_targets(previous_targets)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_dashboard_queries_and_alert_rules_work_on_a_real_prometheus(
    prometheus_server: PrometheusServer, scraped_worker_metrics: tuple[Metrics, str]
) -> None:
    metrics, instance = scraped_worker_metrics
    selector = f'{{instance="{instance}"}}'
    _wait_for(lambda: bool(prometheus_server.query(f"streamlearn_ready{selector}")), 30, "the first scrape")
    _advance(metrics)
    _wait_for(lambda: bool(prometheus_server.query(f"increase(streamlearn_events_total{selector}[1m]) > 0")), 30,
              "a scrape after new traffic")

    empty = [expression for expression in _dashboard_promql() if not prometheus_server.query(expression)]
    assert empty == [], "dashboard queries without data although every series is exported"

    below_baseline = next(rule for rule in alert_rules() if rule["alert"] == "StreamlearnModelBelowBaseline")
    flagged = prometheus_server.query(below_baseline["expr"])
    assert [(series["metric"]["model"], series["metric"]["instance"]) for series in flagged] == [("logreg", instance)]

    loaded = {rule["name"]: rule for rule in _rules(prometheus_server) if rule["type"] == "alerting"}
    assert set(loaded) == {rule["alert"] for rule in alert_rules()}
    _wait_for(lambda: all(not rule["lastEvaluation"].startswith("0001") for rule in _rules(prometheus_server)), 30,
              "the rules to be evaluated")
    unhealthy = {rule["name"]: rule.get("lastError") for rule in _rules(prometheus_server) if rule["health"] != "ok"}
    assert unhealthy == {}
    _wait_for(lambda: any(rule["name"] == "StreamlearnDriftDetected" and rule["state"] == "firing"
                          for rule in _rules(prometheus_server)), 30, "the drift alert (no `for:`) to fire")
