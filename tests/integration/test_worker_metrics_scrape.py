"""Issue 2, acceptance 4: a real Prometheus server scrapes a worker during a replay; read back through its API."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from services.replayer import replay
from services.stack import PrometheusServer
from shared.kafka.admin import ensure_topics
from tests.integration.helpers import make_settings, running_worker, sample_value, scrape, wait_for

pytestmark = pytest.mark.integration

N_EVENTS = 3000


def test_prometheus_scrapes_the_worker_during_a_replay(
    kafka_bootstrap: str, redis_url: str, prometheus_server: PrometheusServer, unique_name: Callable[[str], str]
) -> None:
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url,
        models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}],
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    registry = CollectorRegistry()
    with running_worker(settings, registry) as worker:
        assert worker.endpoint is not None
        target = f"127.0.0.1:{worker.endpoint.port}"
        assert "streamlearn_model_metric" in scrape(f"http://{target}/metrics")
        prometheus_server.set_scrape_targets([target], labels={"job": "streamlearn-test"})
        wait_for(lambda: bool(prometheus_server.query(f'up{{instance="{target}"}} == 1')), 45,
                 "Prometheus to discover and scrape the worker")
        # a paced replay, so that scrapes land while the worker is busy
        sender = threading.Thread(target=lambda: replay(
            "agrawal", bootstrap_servers=kafka_bootstrap, topic=t.events, limit=N_EVENTS, rate=600, seed=3,
            progress=False))
        sender.start()
        query = f'streamlearn_model_metric{{instance="{target}",model="logreg",metric="accuracy",window="cumulative"}}'
        seen: list[float] = []

        def scraped_mid_replay() -> bool:
            result = prometheus_server.query(query)
            if result:
                seen.append(float(result[0]["value"][1]))
            return bool(result) and sender.is_alive()

        wait_for(scraped_mid_replay, 30, "Prometheus to scrape the model metric while the replay runs")
        sender.join(timeout=60)
        wait_for(lambda: sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == N_EVENTS,
                 60, f"{N_EVENTS} events processed")
        labels = {"model": "logreg", "metric": "accuracy", "window": "cumulative"}

        def prometheus_has_final() -> bool:
            # the gauges are refreshed from the scores at most every metrics.export_interval_s: wait for the
            # worker to export its final score (the loop keeps exporting while idle), then for a scrape of it
            scored = worker.score_step.scoreboards["logreg"].values().get(("accuracy", "cumulative"))
            final = sample_value(registry, "streamlearn_model_metric", labels)
            result = prometheus_server.query(query)
            return (final is not None and final == scored and bool(result)
                    and abs(float(result[0]["value"][1]) - final) < 1e-12)

        wait_for(prometheus_has_final, 15, "Prometheus to hold the worker's final accuracy")
        final = sample_value(registry, "streamlearn_model_metric", labels)
        assert final is not None and 0.5 < final <= 1.0
        valid = prometheus_server.query(f'streamlearn_events_total{{instance="{target}",outcome="valid"}}')
        assert float(valid[0]["value"][1]) == N_EVENTS
    assert seen, "at least one scrape during the replay"
