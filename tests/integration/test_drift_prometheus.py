"""Issue 5, acceptance 2: a real Prometheus scrapes a worker during a drifting replay.

Read back through Prometheus's HTTP API: the rolling accuracy falls after the drift point, the drift counter
rises after it and not before, and the StreamlearnDriftDetected alert (deploy/prometheus/alerts.yml, loaded by
the session's Prometheus) fires.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from services.replayer import replay
from services.stack import PrometheusServer
from shared.kafka.admin import ensure_topics
from tests.integration.helpers import make_settings, running_worker, sample_value, wait_for

pytestmark = pytest.mark.integration

DRIFT_AT = 2500
N_EVENTS = 5000
RATE = 400  # events per second: about 12 s of replay, a dozen scrapes on each side of the drift
ROLLING_WINDOW = 300
SEED = 1


def _series(prometheus: PrometheusServer, expression: str, start: float, end: float) -> list[tuple[float, float]]:
    result = prometheus.query_range(expression, start, end, 0.5)
    assert len(result) == 1, f"{expression}: expected one series, got {result}"
    return [(float(t), float(v)) for t, v in result[0]["values"]]


def _at(series: list[tuple[float, float]], t: float) -> float | None:
    """The series' value at time ``t`` (the last sample at or before it)."""
    before = [v for ts, v in series if ts <= t]
    return before[-1] if before else None


def test_prometheus_sees_accuracy_fall_and_the_drift_counted_after_the_drift_point_and_alerts(
    kafka_bootstrap: str, redis_url: str, prometheus_server: PrometheusServer, unique_name: Callable[[str], str]
) -> None:
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url,
        models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}],
        metrics={"rolling_window": ROLLING_WINDOW}, drift={"export_interval_s": 0.5},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    registry = CollectorRegistry()
    with running_worker(settings, registry) as worker:
        assert worker.endpoint is not None
        instance = f"127.0.0.1:{worker.endpoint.port}"
        selector = f'instance="{instance}"'
        prometheus_server.set_scrape_targets([instance])
        wait_for(lambda: bool(prometheus_server.query(f"streamlearn_ready{{{selector}}}")), 60,
                 "Prometheus to scrape the worker")
        started = time.time()
        sender = threading.Thread(target=lambda: replay(
            "agrawal-drift", bootstrap_servers=kafka_bootstrap, topic=t.events, limit=N_EVENTS, rate=RATE,
            seed=SEED, drift_at=DRIFT_AT, progress=False))
        sender.start()
        sender.join(timeout=120)
        wait_for(lambda: sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == N_EVENTS,
                 60, f"{N_EVENTS} events processed")
        wait_for(lambda: any(alert["labels"].get("alertname") == "StreamlearnDriftDetected"
                             and alert["labels"].get("instance") == instance and alert["state"] == "firing"
                             for alert in prometheus_server.alerts()), 30, "the drift alert to fire")
        time.sleep(2.5)  # a last scrape of the final values
        ended = time.time()
        detections = list(worker.drift_step.detections)
    prometheus_server.set_scrape_targets([])

    assert detections, "the worker detected no drift"
    assert all(d.offset >= DRIFT_AT for d in detections), f"a false alarm before the drift point: {detections}"

    events = _series(prometheus_server, f'streamlearn_events_total{{{selector},outcome="valid"}}', started, ended)
    drifts = _series(prometheus_server, f'streamlearn_drift_detections_total{{{selector},model="logreg",'
                                        f'detector="adwin"}}', started, ended)
    accuracy = _series(prometheus_server, f'streamlearn_model_metric{{{selector},model="logreg",'
                                          f'metric="accuracy",window="rolling"}}', started, ended)

    # the drift counter: zero while fewer than DRIFT_AT events were processed, positive by the end
    before_drift = [ts for ts, n in events if n < DRIFT_AT]
    after_drift = [ts for ts, n in events if n >= DRIFT_AT]
    assert len(before_drift) >= 5 and len(after_drift) >= 5, "scrapes on both sides of the drift point"
    assert all((_at(drifts, ts) or 0.0) == 0.0 for ts in before_drift), "the counter rose before the drift point"
    assert drifts[-1][1] >= 1.0, "the counter did not rise after the drift point"
    first_rise = next(ts for ts, v in drifts if v > 0)
    assert (_at(events, first_rise) or 0) >= DRIFT_AT

    # every quality metric, cumulative and rolling, with the baselines; and the operations series. Instant
    # queries are evaluated at the end of the run: the worker has stopped since, so "now" finds stale series.
    for metric in ("accuracy", "precision", "recall", "f1", "log_loss", "roc_auc"):
        for window in ("cumulative", "rolling"):
            found = prometheus_server.query(f'streamlearn_model_metric{{{selector},model="logreg",'
                                            f'metric="{metric}",window="{window}"}}', at=ended)
            assert found, f"{metric} ({window}) not in Prometheus"
    for baseline in ("no_change", "majority"):
        assert prometheus_server.query(f'streamlearn_baseline_metric{{{selector},baseline="{baseline}",'
                                       f'metric="accuracy",window="rolling"}}', at=ended), baseline
    for series in ("streamlearn_processing_seconds_count", "streamlearn_end_to_end_latency_seconds_count",
                   'streamlearn_consumer_lag{partition="0"}', "streamlearn_checkpoint_age_seconds",
                   'streamlearn_model_memory_bytes{model="logreg"}', "streamlearn_label_join_entries",
                   "streamlearn_last_drift_timestamp_seconds"):
        name, _, labels = series.partition("{")
        expression = f"{name}{{{selector}{',' + labels.rstrip('}') if labels else ''}}}"
        assert prometheus_server.query(expression, at=ended), f"{expression} not in Prometheus"
    processed = prometheus_server.query(f"streamlearn_processing_seconds_count{{{selector}}}", at=ended)
    assert float(processed[0]["value"][1]) > 0
    # exactly-once (the default): every transaction's commit time, as the dashboard's latency panel shows it
    commits = prometheus_server.query(f"streamlearn_transaction_commit_seconds_count{{{selector}}}", at=ended)
    assert commits and float(commits[0]["value"][1]) > 0, "no transaction commit timed"
    p99 = prometheus_server.query(f"histogram_quantile(0.99, sum by (le) (streamlearn_transaction_commit_seconds_bucket"
                                  f"{{{selector}}}))", at=ended)
    assert p99 and 0 < float(p99[0]["value"][1]) < 30, p99

    # the rolling accuracy: its level over the last window before the drift, against after it
    steady = [_at(accuracy, ts) for ts, n in events if DRIFT_AT - ROLLING_WINDOW <= n < DRIFT_AT]
    drifted = [_at(accuracy, ts) for ts, n in events if n >= DRIFT_AT + 2 * ROLLING_WINDOW]
    steady_values = [v for v in steady if v is not None]
    drifted_values = [v for v in drifted if v is not None]
    assert steady_values and drifted_values, (steady, drifted)
    # without Prometheus (River on the same stream): about 0.66 before (0.64-0.68), 0.58 after (0.53-0.62)
    mean_steady = sum(steady_values) / len(steady_values)
    mean_drifted = sum(drifted_values) / len(drifted_values)
    assert mean_drifted < mean_steady - 0.04, (steady_values, drifted_values)
    assert min(drifted_values) < min(steady_values) - 0.04, (steady_values, drifted_values)
