"""Issue 12, acceptance 5: a third worker joins and leaves mid-stream. The champion is the same on every worker
within one refresh interval, and the group-wide accuracy Prometheus computes from the workers' counters equals the
accuracy computed from the predictions topic (to 1e-6).

Two workers share a 4-partition events topic; a replayer sends a few thousand Agrawal events at a fixed rate; a
third worker joins after a quarter of them and leaves (gracefully) after more than half. A sampler reads every live
worker's champion every 20 ms. The session's Prometheus scrapes all three workers' /metrics; a leaving worker waits
for one last scrape (``metrics.final_scrape_wait_s``), so its counters are complete in Prometheus. The accuracy
"from the topic" is computed from the records themselves: each published record's prediction against the label in
the event it answers (every event carries its label inline; a record with a ``null`` prediction, from a model not
trained yet, is not scored, as in the workers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from services.replayer import replay
from services.stack import PrometheusServer
from services.worker.worker import Worker
from shared.kafka.admin import ensure_topics
from shared.settings import Settings, load_settings
from shared.state.group_scores import RedisGroupScores
from shared.steps.group_champion import GroupChampion
from tests.integration.helpers import committed_total, make_settings, read_topic, running_worker, wait_for

pytestmark = pytest.mark.integration

#: the first model predicts the majority class, the second learns: the group's champion must move to it
MODELS = [
    {"name": "prior", "estimator": "river.dummy.PriorClassifier", "task": "binary"},
    {"name": "nb", "estimator": "river.naive_bayes.GaussianNB", "task": "binary"},
]
N = 8000
RATE = 400.0  # events per second: about 20 s of stream
#: the third worker leaves once it has processed this many events
THIRD_WORKER_EVENTS = 500
REFRESH_S = 0.5
#: a worker refreshes between batches: one batch's processing and one poll (100 ms) on a busy two-core machine
SLACK_S = 1.0
SEED = 12


class ChampionSampler:
    """Reads every live worker's champion every ``interval_s`` on a thread: ``(time, {worker: champion})``."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[str, str]]] = []
        self._workers: dict[str, Worker] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="champion-sampler", daemon=True)

    def add(self, name: str, worker: Worker) -> None:
        with self._lock:
            self._workers[name] = worker

    def remove(self, name: str) -> None:
        with self._lock:
            self._workers.pop(name, None)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < 100_000:
            with self._lock:
                self.samples.append((time.monotonic(), {n: w.champion for n, w in self._workers.items()}))
            time.sleep(self.interval_s)

    def __enter__(self) -> ChampionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def longest_disagreement(self) -> float:
        """The longest stretch of time in which two live workers served different champions (seconds)."""
        longest, since = 0.0, None
        for t, champions in self.samples:
            if len(set(champions.values())) > 1:
                since = t if since is None else since
                longest = max(longest, t - since + self.interval_s)
            else:
                since = None
        return longest


def _instance(worker: Worker) -> str:
    assert worker.endpoint is not None
    return f"127.0.0.1:{worker.endpoint.port}"


def _valid(registries: dict[str, CollectorRegistry]) -> float:
    return sum(r.get_sample_value("streamlearn_events_total", {"outcome": "valid"}) or 0 for r in registries.values())


def _prometheus_ratio(prometheus: PrometheusServer, selector: str, at: float, by: str = "") -> dict[str, float]:
    """sum(correct) / sum(scored) over every worker that ever served (each worker's last value in the run)."""
    grouping = f" by ({by})" if by else ""
    expression = (f"sum{grouping} (last_over_time(streamlearn_predictions_correct_total{{{selector}}}[10m])) / "
                  f"sum{grouping} (last_over_time(streamlearn_predictions_scored_total{{{selector}}}[10m]))")
    return {(series["metric"].get(by) if by else ""): float(series["value"][1])
            for series in prometheus.query(expression, at=at)}


def _accuracy(records: list[Any], labels: dict[str, Any], by: str = "") -> dict[str, tuple[float, int]]:
    """Accuracy of published records against their events' labels (and how many were scored), overall (key
    ``""``) or per ``by`` field of the record; unlabelled events and ``null`` predictions are not scored."""
    cells: dict[str, list[int]] = {}
    for record in records:
        payload = orjson.loads(record.value)
        label, prediction = labels[payload["id"]], payload["prediction"]
        if label is None or prediction is None:
            continue
        cell = cells.setdefault(payload[by] if by else "", [0, 0])
        cell[0] += 1
        cell[1] += prediction == label
    return {key: (correct / n, n) for key, (n, correct) in cells.items()}


def _final_values_scraped(prometheus: PrometheusServer, workers: dict[str, tuple[str, CollectorRegistry]]) -> bool:
    for instance, registry in workers.values():
        for series in prometheus.query(f'streamlearn_predictions_scored_total{{instance="{instance}"}}'):
            labels = {"model": series["metric"]["model"], "role": series["metric"]["role"]}
            if float(series["value"][1]) != registry.get_sample_value("streamlearn_predictions_scored_total", labels):
                return False
    return True


def _as_member(settings: Settings, name: str) -> Settings:
    """The same settings with a transactional id of its own (the workers run in one process and host)."""
    data = settings.model_dump(mode="python")
    data["kafka"]["transactional_id"] = name
    data["redis"]["url"] = settings.redis.url.get_secret_value()
    data["hmac_key"] = settings.hmac_key.get_secret_value()
    return load_settings(None, **data)


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly-once", "at-least-once"])
def test_a_joining_and_leaving_worker_keeps_one_champion_and_exact_group_accuracy(
    kafka_bootstrap: str, redis_url: str, prometheus_server: PrometheusServer, unique_name: Callable[[str], str],
    exactly_once: bool,
) -> None:
    settings: Settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url, models=MODELS,
        champion={"min_labels": 300, "margin": 0.02, "refresh_s": REFRESH_S},
        metrics={"rolling_window": 500, "final_scrape_wait_s": 15.0},
        kafka={"session_timeout_ms": 6000, "exactly_once": exactly_once},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 4, t.labels: 4, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    registries = {name: CollectorRegistry() for name in "abc"}
    instances: dict[str, tuple[str, CollectorRegistry]] = {}
    sender = threading.Thread(target=lambda: replay(
        "agrawal", bootstrap_servers=kafka_bootstrap, topic=t.events, limit=N, rate=RATE, seed=SEED,
        progress=False))
    members = {name: _as_member(settings, name) for name in "abc"}
    with ChampionSampler() as sampler, running_worker(members["a"], registries["a"]) as a, \
            running_worker(members["b"], registries["b"]) as b:
        for name, worker in (("a", a), ("b", b)):
            instances[name] = (_instance(worker), registries[name])
            sampler.add(name, worker)
        prometheus_server.set_scrape_targets([instance for instance, _ in instances.values()])
        wait_for(lambda: all(r.get_sample_value("streamlearn_ready") == 1 for r in (registries["a"],
                                                                                      registries["b"])),
                 60, "two workers assigned")
        sender.start()
        wait_for(lambda: _valid(registries) >= N / 6, 60, "a sixth of the stream")
        with running_worker(members["c"], registries["c"]) as c:
            instances["c"] = (_instance(c), registries["c"])
            prometheus_server.set_scrape_targets([instance for instance, _ in instances.values()])
            sampler.add("c", c)
            wait_for(lambda: (registries["c"].get_sample_value("streamlearn_events_total",
                                                               {"outcome": "valid"}) or 0) >= THIRD_WORKER_EVENTS,
                     60, "the third worker to take part")
            # it leaves after Prometheus has found it (a worker never scraped does not wait for a last scrape)
            wait_for(lambda: bool(prometheus_server.query(f'up{{instance="{instances["c"][0]}"}} == 1')), 30,
                     "Prometheus to scrape the third worker")
            sampler.remove("c")  # it leaves: from now on it is not a member
            left_mid_stream = sender.is_alive()
        sender.join(timeout=60)
        wait_for(lambda: committed_total(kafka_bootstrap, settings.kafka.group_id, t.events) == N, 90,
                 "every event committed")
        time.sleep(REFRESH_S + SLACK_S)  # every worker has refreshed once since the last label
        final = {a.champion, b.champion}
        switches = sum(r.get_sample_value("streamlearn_champion_switches_total") or 0
                       for r in registries.values())
        wait_for(lambda: _final_values_scraped(prometheus_server, instances), 30,
                 "Prometheus to scrape every worker's final counters")
        ended = time.time()
        group_view = RedisGroupScores(redis.Redis.from_url(redis_url), settings.redis.namespace,
                                      settings.kafka.group_id, settings.metrics.rolling_window).sync(0, {}, "")
        assert isinstance(a.champion_selector, GroupChampion)
    prometheus_server.set_scrape_targets([])

    longest = sampler.longest_disagreement()
    c_processed = registries["c"].get_sample_value("streamlearn_events_total", {"outcome": "valid"}) or 0
    print(f"\ngroup champion: {switches:.0f} switch(es), final {final}, stored {group_view.champion}; longest "
          f"disagreement {longest:.3f} s over {len(sampler.samples)} samples; third worker processed "
          f"{c_processed:.0f} of {N}")
    assert c_processed >= THIRD_WORKER_EVENTS
    assert left_mid_stream, "the third worker left while events were still being sent"
    assert switches >= 1 and group_view.switches == switches, "the group moved from the prior to the learner"
    assert final == {group_view.champion}, "every worker serves the stored champion"
    assert longest <= REFRESH_S + SLACK_S, f"workers disagreed for {longest:.3f} s"

    events = read_topic(kafka_bootstrap, t.events, N)
    labels = {payload["id"]: payload.get("label") for payload in (orjson.loads(r.value) for r in events)}
    assert len(labels) == N
    published = read_topic(kafka_bootstrap, t.predictions, N, to_end=True)
    shadow = read_topic(kafka_bootstrap, t.shadow_predictions, N, to_end=True)
    assert len(published) >= N and len(shadow) >= N

    # the published predictions (whichever model was champion): role="champion" summed over every worker
    selector = f'instance=~"{"|".join(i for i, _ in instances.values())}"'
    topic_published, topic_scored = _accuracy(published, labels)[""]
    prometheus_published = _prometheus_ratio(prometheus_server, f'{selector},role="champion"', ended)[""]
    scored = prometheus_server.query(f'sum(last_over_time(streamlearn_predictions_scored_total{{{selector},'
                                     f'role="champion"}}[10m]))', at=ended)
    rewinds = sum(r.get_sample_value("streamlearn_transaction_rewinds_total") or 0 for r in registries.values())
    print(f"published accuracy: topic {topic_published:.6f} over {topic_scored} scored, Prometheus "
          f"{prometheus_published:.6f} over {scored[0]['value'][1]} scored; {len(published)} published records, "
          f"{rewinds:.0f} transaction rewinds")
    assert abs(prometheus_published - topic_published) < 1e-6
    # and per model, over both topics (the shadow topic holds the other model's predictions)
    by_model = {model: accuracy for model, (accuracy, _) in _accuracy(published + shadow, labels, "model").items()}
    prometheus_by_model = _prometheus_ratio(prometheus_server, selector, ended, by="model")
    print(f"per model: topic {by_model}, Prometheus {prometheus_by_model}")
    assert set(prometheus_by_model) == set(by_model) == {"prior", "nb"}
    for model, accuracy in by_model.items():
        assert abs(prometheus_by_model[model] - accuracy) < 1e-6, model
