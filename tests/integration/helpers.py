"""Helpers for integration tests: run a worker in a thread, read topics to the end."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from services.worker import Worker
from shared.settings import Settings, load_settings
from tests.keys import TEST_HMAC_KEY


def make_settings(
    kafka_bootstrap: str, unique_name: Callable[[str], str], *, redis_url: str | None = None, **overrides: Any
) -> Settings:
    """Settings for one test: unique topics, group and Redis namespace, metrics on a free port.

    Without ``redis_url`` checkpoints are off (a test of pure Kafka behaviour); with it, state goes to the
    session's real Redis under a namespace of this test's own.
    """
    topics = {
        "events": unique_name("events"), "labels": unique_name("labels"),
        "predictions": unique_name("predictions"), "shadow_predictions": unique_name("shadow"),
        "dead_letters": unique_name("dlq"),
    }
    kafka = {"bootstrap_servers": kafka_bootstrap, "group_id": unique_name("group"), "topics": topics,
             "max_poll_records": 200, **overrides.pop("kafka", {})}
    metrics = {"port": 0, **overrides.pop("metrics", {})}
    overrides.setdefault("hmac_key", TEST_HMAC_KEY)
    if redis_url is not None:
        overrides.setdefault("redis", {"url": redis_url, "namespace": unique_name("ns")})
    else:
        overrides.setdefault("checkpoint", {"enabled": False})
        # dedup and the delayed-label join keep their state in Redis too
        overrides.setdefault("dedup", {"enabled": False})
        overrides.setdefault("labels", {"enabled": False})
        # and so does the group's champion: without Redis each worker ranks its own scores
        overrides["champion"] = {"scope": "worker", **overrides.get("champion", {})}
    return load_settings(None, kafka=kafka, metrics=metrics, **overrides)


@contextmanager
def running_worker(settings: Settings, registry: CollectorRegistry | None = None) -> Iterator[Worker]:
    """A worker polling in a background thread; stopped (and drained) on exit."""
    worker = Worker(settings, registry=registry)
    worker.start()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)

    thread = threading.Thread(target=target, name="worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "worker did not drain within 60 s"
        if errors:
            raise errors[0]


def run_until_it_stops(worker: Worker, *, max_seconds: float = 90) -> list[BaseException]:
    """Run ``worker`` on a thread until it stops by itself or ``max_seconds`` pass; what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(max_seconds=max_seconds)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=max_seconds + 60)
    assert not thread.is_alive(), "the worker should have stopped"
    return errors


def read_topic(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0, *, to_end: bool = False,
    client_options: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Read committed records from the start of ``topic`` until ``expected`` arrived or time is up.

    ``to_end``: then also on until the end offsets the topic had when reading began (every duplicate included).
    ``client_options``: security (``shared.kafka.clients.security_options``) for a TLS or SASL broker.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False,
        auto_offset_reset="earliest", consumer_timeout_ms=1000, **(client_options or {}),
    )
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(partitions) if to_end else {}
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s

    def short() -> bool:
        return len(records) < expected or any(consumer.position(tp) < end for tp, end in ends.items())

    while short() and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    # one more short poll: anything beyond ``expected`` is a duplicate the test must see
    for batch in consumer.poll(timeout_ms=1000).values():
        records.extend(batch)
    consumer.close()
    return records


def produce(
    bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]], *,
    client_options: Mapping[str, Any] | None = None,
) -> None:
    """Send raw (key, value) pairs and wait for them to be acknowledged."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **(client_options or {}))
    for key, value in items:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def sample_value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample of a metric in the worker's registry."""
    return registry.get_sample_value(name, labels or {})


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def committed_total(
    bootstrap: str, group_id: str, topic: str, *, client_options: Mapping[str, Any] | None = None
) -> int:
    """The sum over ``topic``'s partitions of the offsets ``group_id`` has committed (0 when none)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **(client_options or {}))
    try:
        offsets = admin.list_group_offsets({group_id: None}).get(group_id, {})
    finally:
        admin.close()
    return sum(o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset >= 0)


def events_committed(bootstrap: str, settings: Settings) -> int:
    """:func:`committed_total` of the settings' group on its events topic; -1 while the group has no coordinator."""
    try:
        return committed_total(bootstrap, settings.kafka.group_id, settings.kafka.topics.events)
    except KafkaError:  # the group's coordinator is not there yet
        return -1
