"""Issue 4, acceptance 3: the broker and Redis restarted mid-stream; the worker recovers by itself, loses nothing.

Events arrive at a steady rate from a producer running beside the worker, so the outage falls in the middle of
the stream. Exactly-once mode: a read-committed consumer sees exactly one prediction per event. The recovery
times are printed (pytest -s) and recorded in docs/operations.md.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable

import orjson
import pytest
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from services.replayer import replay
from services.replayer.replay import ReplayStats
from services.stack import KafkaServer, RedisServer
from shared.kafka.admin import ensure_topics
from shared.settings import Settings
from tests.integration.helpers import committed_total, make_settings, read_topic, running_worker, sample_value, wait_for

pytestmark = pytest.mark.integration

LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}
RATE = 400.0


def _settings(kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str],
              client: str = "kafka-python") -> Settings:
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG],
        kafka={"exactly_once": True, "session_timeout_ms": 6000, "transaction_op_timeout_ms": 10_000,
               "client": client},
        # one test starts the worker while Redis is down: it is to wait for Redis, not refuse to start
        worker={"commit_interval_s": 0.5, "startup_checks": False},
        checkpoint={"every_events": 1000, "every_seconds": 1.0, "max_backoff_s": 2.0},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    return settings


class _Stream:
    """``replay`` at a steady rate on a background thread."""

    def __init__(self, bootstrap: str, topic: str, n: int) -> None:
        self.n = n
        self.stats: list[ReplayStats] = []
        self.errors: list[BaseException] = []

        def target() -> None:
            try:
                self.stats.append(replay("agrawal", bootstrap_servers=bootstrap, topic=topic, limit=n, seed=3,
                                         rate=RATE, progress=False))
            except BaseException as exc:  # surfaced by join()
                self.errors.append(exc)

        self._thread = threading.Thread(target=target, name="stream", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the producer did not finish"
        assert not self.errors, self.errors
        assert self.stats and self.stats[0].sent == self.n


def _events(registry: CollectorRegistry) -> float:
    return sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) or 0.0


def _exactly_one_prediction_each(bootstrap: str, settings: Settings, n: int) -> tuple[int, int]:
    records = read_topic(bootstrap, settings.kafka.topics.predictions, n, timeout_s=60)
    counts = Counter(orjson.loads(r.value)["id"] for r in records)
    expected = {f"agrawal-3-{i:09d}" for i in range(n)}
    lost = len(expected - set(counts))
    duplicated = sum(c - 1 for c in counts.values() if c > 1)
    return lost, duplicated


def _committed(bootstrap: str, settings: Settings) -> int:
    try:
        return committed_total(bootstrap, settings.kafka.group_id, settings.kafka.topics.events)
    except KafkaError:  # the coordinator is still loading after the broker's restart: ask again
        return -1


def _ready(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_broker_restart_mid_stream(
    kafka_server: KafkaServer, kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str],
    kafka_client: str,
) -> None:
    n = 6000
    settings = _settings(kafka_bootstrap, redis_url, unique_name, kafka_client)
    registry = CollectorRegistry()
    with running_worker(settings, registry) as worker:
        assert worker.endpoint is not None
        port = worker.endpoint.port
        stream = _Stream(kafka_bootstrap, settings.kafka.topics.events, n)
        wait_for(lambda: _events(registry) >= 1500, 60, "1500 events before the outage")
        committed_before = _committed(kafka_bootstrap, settings)
        t0 = time.monotonic()
        kafka_server.stop()
        t_stopped = time.monotonic()
        wait_for(lambda: sample_value(registry, "streamlearn_kafka_up") == 0, 20, "kafka_up to drop to 0")
        t_noticed = time.monotonic()
        status, body = _ready(port)
        assert status == 503 and "Kafka" in body, (status, body)
        time.sleep(max(0.0, 3.0 - (t_noticed - t_stopped)))
        kafka_server.start()
        t_started = time.monotonic()
        wait_for(lambda: _committed(kafka_bootstrap, settings) > committed_before, 120,
                 "a transaction committed after the restart", interval_s=0.1)
        t_first_commit = time.monotonic()
        wait_for(lambda: sample_value(registry, "streamlearn_kafka_up") == 1, 30, "kafka_up back to 1")
        stream.join(120)
        wait_for(lambda: _committed(kafka_bootstrap, settings) == n, 120, f"{n} committed offsets")
        t_caught_up = time.monotonic()
        assert _ready(port)[0] == 200
        rewinds = sample_value(registry, "streamlearn_transaction_rewinds_total")
    lost, duplicated = _exactly_one_prediction_each(kafka_bootstrap, settings, n)
    print(f"\nbroker outage: graceful stop {t_stopped - t0:.1f} s; kafka_up=0 and /ready 503 "
          f"{t_noticed - t_stopped:.1f} s after the stop; broker down {t_started - t_stopped:.1f} s (start "
          f"included); first transaction committed {t_first_commit - t_started:.1f} s after the broker was back; "
          f"all {n} committed {t_caught_up - t_started:.1f} s after; transactions given up: {rewinds}; "
          f"lost={lost} duplicated={duplicated}")
    assert lost == 0 and duplicated == 0


def test_redis_restart_mid_stream(
    redis_server: RedisServer, kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    n = 4000
    settings = _settings(kafka_bootstrap, redis_url, unique_name)
    registry = CollectorRegistry()
    with running_worker(settings, registry) as worker:
        assert worker.endpoint is not None
        port = worker.endpoint.port
        stream = _Stream(kafka_bootstrap, settings.kafka.topics.events, n)
        wait_for(lambda: (sample_value(registry, "streamlearn_checkpoints_total", {"outcome": "ok"}) or 0) >= 1,
                 60, "a first checkpoint")
        assert sample_value(registry, "streamlearn_redis_up") == 1
        redis_server.stop()
        t_stopped = time.monotonic()
        wait_for(lambda: sample_value(registry, "streamlearn_redis_up") == 0, 30, "redis_up to drop to 0")
        t_noticed = time.monotonic()
        status, body = _ready(port)
        assert status == 503 and "Redis unavailable" in body, (status, body)
        during = _events(registry)
        wait_for(lambda: _events(registry) >= during + 400, 30, "predictions to go on while Redis is down")
        failed = sample_value(registry, "streamlearn_checkpoints_total", {"outcome": "failed"}) or 0
        wait_for(lambda: (sample_value(registry, "streamlearn_checkpoints_total", {"outcome": "failed"}) or 0)
                 > failed, 30, "a retried checkpoint")
        ok_before = sample_value(registry, "streamlearn_checkpoints_total", {"outcome": "ok"}) or 0
        redis_server.start()
        t_started = time.monotonic()
        wait_for(lambda: (sample_value(registry, "streamlearn_checkpoints_total", {"outcome": "ok"}) or 0)
                 > ok_before, 60, "a checkpoint after Redis came back", interval_s=0.05)
        t_recovered = time.monotonic()
        assert sample_value(registry, "streamlearn_redis_up") == 1
        assert _ready(port)[0] == 200
        stream.join(60)
        wait_for(lambda: _committed(kafka_bootstrap, settings) == n, 60, f"{n} committed offsets")
    lost, duplicated = _exactly_one_prediction_each(kafka_bootstrap, settings, n)
    print(f"\nRedis outage: noticed (redis_up=0, /ready 503) {t_noticed - t_stopped:.1f} s after the stop; "
          f"{failed:.0f}+ failed checkpoints while down; first checkpoint {t_recovered - t_started:.1f} s after "
          f"Redis was back; lost={lost} duplicated={duplicated}")
    assert lost == 0 and duplicated == 0


def test_a_partition_assigned_while_redis_is_down_waits_for_it(
    redis_server: RedisServer, kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    """Restoring needs Redis: the partition stays paused (no prediction from untrained models), /ready says why,
    and the worker restores it by itself once Redis is back."""
    n = 300
    settings = _settings(kafka_bootstrap, redis_url, unique_name)
    replay("agrawal", bootstrap_servers=kafka_bootstrap, topic=settings.kafka.topics.events, limit=n, seed=3,
           progress=False)
    redis_server.stop()
    registry = CollectorRegistry()
    with running_worker(settings, registry) as worker:
        assert worker.endpoint is not None
        port = worker.endpoint.port
        wait_for(lambda: _ready(port)[0] == 503 and "Redis" in _ready(port)[1], 30, "/ready to report Redis")
        time.sleep(3.0)
        assert _events(registry) == 0, "nothing predicted before the partition's state is restored"
        redis_server.start()
        t_started = time.monotonic()
        wait_for(lambda: _committed(kafka_bootstrap, settings) == n, 60, f"{n} committed offsets", interval_s=0.1)
        t_done = time.monotonic()
        assert _ready(port)[0] == 200
    lost, duplicated = _exactly_one_prediction_each(kafka_bootstrap, settings, n)
    print(f"\nassigned while Redis was down: all {n} events committed {t_done - t_started:.1f} s after Redis was "
          f"back; lost={lost} duplicated={duplicated}")
    assert lost == 0 and duplicated == 0
