"""The dashboard's accuracy, MAE and RMSE for a group of two workers: summed first, divided second.

Two metric endpoints, each the worker's own ``Metrics`` catalogue on its registry, served over HTTP as a worker
serves it, stand for two workers that scored different numbers of labels; the session's Prometheus scrapes both.
The dashboard's own queries (``build_spec``) must give the group's figures (total correct / total scored, and the
same for the errors), which differ from the mean of the two workers' figures. The workers themselves are not run:
tests/integration/test_group_champion_rebalance.py checks that real workers' counters equal what they published,
and tests/integration/test_dashboard_browser.py that the page shows what these queries answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from services.dashboard import build_spec
from services.stack import PrometheusServer, free_ports
from shared.monitoring.metrics import Metrics
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

#: model names no other test of the session's Prometheus uses (its windows still hold their series)
LOGREG, NB = "group_quality_logreg", "group_quality_nb"
#: per worker and model: (role, scored, correct, absolute error sum, squared error sum)
COUNTS = {
    "a": {LOGREG: ("champion", 300, 270, 150.0, 300.0), NB: ("challenger", 300, 150, 600.0, 2400.0)},
    "b": {LOGREG: ("champion", 100, 50, 200.0, 900.0), NB: ("challenger", 100, 90, 50.0, 100.0)},
}
#: the group's figures: the counts of both workers added, then divided
GROUP = {
    "accuracy": {LOGREG: 320 / 400, NB: 240 / 400},
    "mae": {LOGREG: 350 / 400, NB: 650 / 400},
    "rmse": {LOGREG: math.sqrt(1200 / 400), NB: math.sqrt(2500 / 400)},
}
#: what was published (role="champion": logreg on both workers)
PUBLISHED = {"accuracy": 320 / 400, "mae": 350 / 400, "rmse": math.sqrt(1200 / 400)}
QUALITY_WINDOW_S = 12


@pytest.fixture
def two_workers(prometheus_server: PrometheusServer) -> Iterator[dict[str, tuple[str, Metrics]]]:
    """Two workers' metric catalogues served on loopback: name -> (instance, metrics)."""
    ports = free_ports(2)
    metrics: dict[str, tuple[str, Metrics]] = {}
    servers = []
    for name, port in zip(COUNTS, ports, strict=True):
        registry = CollectorRegistry()
        metrics[name] = (f"127.0.0.1:{port}", Metrics(registry))
        servers.append(start_http_server(port, addr="127.0.0.1", registry=registry)[0])
    try:
        yield metrics
    finally:
        prometheus_server.set_scrape_targets([])
        for server in servers:
            server.shutdown()
            server.server_close()


def _by_model(prometheus: PrometheusServer, expression: str, at: float) -> dict[str, float]:
    return {r["metric"].get("model", ""): float(r["value"][1]) for r in prometheus.query(expression, at=at)}


def test_the_quality_queries_give_the_groups_figures_not_a_mean_of_the_workers(
    prometheus_server: PrometheusServer, two_workers: dict[str, tuple[str, Metrics]],
) -> None:
    for _, worker in two_workers.values():  # every series exists at 0 first, so increase() sees the whole count
        for model, (role, *_) in COUNTS["a"].items():
            for counter in (worker.scored, worker.correct, worker.absolute_error, worker.squared_error):
                counter.labels(model=model, role=role).inc(0)
    instances = [instance for instance, _ in two_workers.values()]
    ours = f'instance=~"{"|".join(instances)}"'
    # the published figure sums every model's champion counts: no other test's worker may be in the window
    wait_for(lambda: not prometheus_server.query(
        f"count(last_over_time(streamlearn_predictions_scored_total{{{ours.replace('=~', '!~')}}}"
        f"[{QUALITY_WINDOW_S + 5}s]))"), QUALITY_WINDOW_S + 60, "earlier tests' counters to leave the window")
    prometheus_server.set_scrape_targets(instances)
    scraped = f"count by (instance) (streamlearn_predictions_scored_total{{{ours}}})"
    wait_for(lambda: len(prometheus_server.query(scraped)) == 2, 60, "Prometheus to scrape both workers")
    # the series sit at 0 for a whole window before the step, so at evaluation each worker's samples span the window
    # and increase() extrapolates both workers' counts alike (by at most one scrape interval of the window)
    time.sleep(QUALITY_WINDOW_S + 1)
    for name, (_, worker) in two_workers.items():
        for model, (role, scored, correct, absolute, squared) in COUNTS[name].items():
            worker.scored.labels(model=model, role=role).inc(scored)
            worker.correct.labels(model=model, role=role).inc(correct)
            worker.absolute_error.labels(model=model, role=role).inc(absolute)
            worker.squared_error.labels(model=model, role=role).inc(squared)
    total = f"sum(streamlearn_predictions_scored_total{{{ours}}})"
    wait_for(lambda: prometheus_server.query(total)[0]["value"][1] == "800", 30, "Prometheus to scrape the counts")
    time.sleep(2)  # a few scrapes after the step, inside the rolling window
    at = time.time() - 1

    for metric, expected in GROUP.items():
        queries = {q.id: q for q in build_spec(metric=metric, quality_window=f"{QUALITY_WINDOW_S}s").queries()}
        cumulative = _by_model(prometheus_server, queries["cumulative"].expr, at)
        assert cumulative == pytest.approx(expected, rel=1e-12), (metric, cumulative)
        # increase() extrapolates each worker's samples to the window's edges (by at most half a scrape interval
        # each side); the mean of the workers' figures is at least 10 % away from the group's
        rolling = _by_model(prometheus_server, queries["rolling"].expr, at)
        assert rolling == pytest.approx(expected, rel=0.04), (metric, rolling)
        published = _by_model(prometheus_server, queries["champion_metric"].expr, at)
        assert published == pytest.approx({"": PUBLISHED[metric]}, rel=0.04), (metric, published)
        for model, value in expected.items():
            per_worker = [_figure(metric, COUNTS[name][model]) for name in COUNTS]
            assert abs(sum(per_worker) / len(per_worker) - value) > 0.1 * value, (metric, model)


def _figure(metric: str, counts: tuple[str, int, int, float, float]) -> float:
    """One worker's own accuracy, MAE or RMSE."""
    _, scored, correct, absolute, squared = counts
    return {"accuracy": correct / scored, "mae": absolute / scored, "rmse": math.sqrt(squared / scored)}[metric]

