"""Issue 15: workers on a Kafka broker and a Redis that take TLS only, with SCRAM-SHA-512 and ACL users.

One secure broker and one secure Redis serve the whole module (``secure_stack``). A worker of each Kafka client
learns and publishes over TLS; a wrong password, an untrusted CA, a plaintext client or a missing client
certificate is refused at start with one line that names the address and what to check, and nothing is learned,
published or committed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml
from kafka.errors import CoordinatorNotAvailableError
from prometheus_client import CollectorRegistry

from services.replayer import replay
from services.worker import Worker
from shared.kafka.admin import ensure_topics
from shared.kafka.preflight import KafkaSecurityError
from shared.settings import RedisSettings, Settings
from shared.state.connection import RedisSecurityError, check_redis_security, redis_client
from tests.integration.helpers import (
    committed_total,
    make_settings,
    read_topic,
    run_until_it_stops,
    running_worker,
    sample_value,
    wait_for,
)
from tests.integration.secure_stack import REDIS_USER, SecureStack, start_secure_stack

pytestmark = pytest.mark.integration

LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}
EVENTS = 400
#: events waiting when a start is refused (none may be learned)
WAITING = 50
#: a refused start must be quick: the check makes one connection, no client library retry loop
REFUSAL_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    """The TLS-only broker (SASL_SSL with SCRAM-SHA-512, SSL with client certificates) and Redis (TLS, ACL)."""
    stack = start_secure_stack(tmp_path_factory.mktemp("secure"))
    try:
        yield stack
    finally:
        stack.stop()


def _settings(stack: SecureStack, unique_name: Callable[[str], str], kafka_client: str, *,
              listener: str = "SASL_SSL", kafka: dict[str, Any] | None = None,
              redis_settings: dict[str, Any] | None = None) -> Settings:
    kafka_section = {**stack.kafka_settings(listener), "client": kafka_client, **(kafka or {})}
    redis_section = {**stack.redis_settings(unique_name("ns")), **(redis_settings or {})}
    return make_settings(
        kafka_section["bootstrap_servers"], unique_name, redis_url=redis_section["url"], models=[LOGREG],
        kafka=kafka_section, redis=redis_section, checkpoint={"every_events": 100},
    )


def _with_events(stack: SecureStack, settings: Settings, count: int = EVENTS) -> None:
    """The worker's topics on the secure broker, with ``count`` labelled events waiting (sent over SASL_SSL)."""
    t = settings.kafka.topics
    options = stack.kafka_client_options()
    ensure_topics(stack.sasl_ssl_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                             t.dead_letters: 1}, **options)
    stats = replay("phishing", bootstrap_servers=stack.sasl_ssl_bootstrap, topic=t.events, limit=count, seed=3,
                   progress=False, client_options=options)
    assert stats.sent == count


def _redis(stack: SecureStack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis.url, socket_timeout=5, **stack.redis_client_options())


def _state_keys(stack: SecureStack, settings: Settings) -> list[bytes]:
    client = _redis(stack)
    try:
        return list(client.scan_iter(match=f"{settings.redis.namespace}:*", count=1000))
    finally:
        client.close()


def _assert_nothing_learned_or_published(stack: SecureStack, settings: Settings) -> None:
    options = stack.kafka_client_options()
    t = settings.kafka.topics
    assert read_topic(stack.sasl_ssl_bootstrap, t.predictions, 0, timeout_s=2, client_options=options) == []
    assert read_topic(stack.sasl_ssl_bootstrap, t.dead_letters, 0, timeout_s=1, client_options=options) == []
    try:
        committed = committed_total(stack.sasl_ssl_bootstrap, settings.kafka.group_id, t.events,
                                    client_options=options)
    except CoordinatorNotAvailableError:  # no group ever committed on this broker: no offsets topic yet
        committed = 0
    assert committed == 0
    assert _state_keys(stack, settings) == [], "no checkpoint, dedup or join state was written"


@pytest.mark.parametrize("listener", ["SASL_SSL", "SSL"])
def test_a_worker_learns_and_publishes_over_tls(
    secure_stack: SecureStack, unique_name: Callable[[str], str], kafka_client: str, listener: str
) -> None:
    """SASL_SSL (SCRAM-SHA-512) or SSL with a client certificate to Kafka; TLS and an ACL user to Redis."""
    settings = _settings(secure_stack, unique_name, kafka_client, listener=listener)
    _with_events(secure_stack, settings)
    registry = CollectorRegistry()
    with running_worker(settings, registry):
        wait_for(lambda: sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == EVENTS,
                 90, f"{EVENTS} valid events")
        wait_for(lambda: committed_total(secure_stack.sasl_ssl_bootstrap, settings.kafka.group_id,
                                         settings.kafka.topics.events,
                                         client_options=secure_stack.kafka_client_options()) == EVENTS,
                 30, "the offsets to be committed")

    records = read_topic(secure_stack.sasl_ssl_bootstrap, settings.kafka.topics.predictions, EVENTS,
                         client_options=secure_stack.kafka_client_options())
    ids = [orjson.loads(r.value)["id"] for r in records]
    assert ids == [f"phishing-3-{i:09d}" for i in range(EVENTS)], "every prediction, once, read back over TLS"
    accuracy = sample_value(registry, "streamlearn_model_metric",
                            {"model": "logreg", "metric": "accuracy", "window": "cumulative"})
    assert accuracy is not None and accuracy > 0.7, "the model learned"
    checkpoint = f"{settings.redis.namespace}:{settings.kafka.group_id}:ckpt:{settings.kafka.topics.events}:0"
    assert checkpoint.encode() in _state_keys(secure_stack, settings), "the checkpoint went to the TLS Redis"


KAFKA_REFUSALS: dict[str, tuple[str, dict[str, Any], str]] = {
    # case: (listener, kafka settings over the working ones, what the one line must say)
    "wrong password": ("SASL_SSL", {"sasl_password": "not-the-password"},
                       "authentication failed .* check kafka.sasl_username and kafka.sasl_password"),
    "unknown user": ("SASL_SSL", {"sasl_username": "mallory"},
                     "authentication failed .* check kafka.sasl_username and kafka.sasl_password"),
    "wrong CA": ("SASL_SSL", {"ssl_cafile": "OTHER_CA"}, "certificate is not trusted .* check that kafka.ssl_cafile"),
    "plaintext client": ("SASL_SSL", {"security_protocol": "PLAINTEXT", "ssl_cafile": None},
                         "the listener speaks TLS; check kafka.security_protocol"),
    "no client certificate": ("SSL", {"ssl_certfile": None, "ssl_keyfile": None},
                              "may require a client certificate: check kafka.ssl_certfile"),
}


@pytest.mark.parametrize("case", sorted(KAFKA_REFUSALS))
def test_kafka_refuses_a_bad_security_setup_with_one_clear_line(
    secure_stack: SecureStack, unique_name: Callable[[str], str], kafka_client: str, case: str
) -> None:
    listener, overrides, expected = KAFKA_REFUSALS[case]
    if overrides.get("ssl_cafile") == "OTHER_CA":
        overrides = {**overrides, "ssl_cafile": str(secure_stack.other_pki.ca_cert)}
    settings = _settings(secure_stack, unique_name, kafka_client, listener=listener, kafka=overrides)
    _with_events(secure_stack, settings, WAITING)
    worker = Worker(settings, registry=CollectorRegistry())
    started = time.monotonic()
    with pytest.raises(KafkaSecurityError, match=expected) as refused:
        worker.start()
    assert time.monotonic() - started < REFUSAL_WITHIN_S
    message = str(refused.value)
    assert "\n" not in message and f"Kafka at {settings.kafka.bootstrap_servers} refused" in message
    assert secure_stack.kafka_password not in message and "not-the-password" not in message
    _assert_nothing_learned_or_published(secure_stack, settings)


REDIS_REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "wrong password": ({"password": "not-the-password"},
                       "refused the login .* check redis.username and redis.password"),
    "no user": ({"username": None, "password": None}, "refused the login"),
    "wrong CA": ({"ssl_ca_certs": "OTHER_CA"}, "certificate that is not trusted .* check redis.ssl_ca_certs"),
    "plaintext client": ({"url": "PLAINTEXT", "ssl_ca_certs": None},
                         "closed the connection on a plaintext command; it may expect TLS"),
}


@pytest.mark.parametrize("case", sorted(REDIS_REFUSALS))
def test_redis_refuses_a_bad_security_setup_with_one_clear_line(
    secure_stack: SecureStack, unique_name: Callable[[str], str], case: str
) -> None:
    overrides, expected = REDIS_REFUSALS[case]
    if overrides.get("ssl_ca_certs") == "OTHER_CA":
        overrides = {**overrides, "ssl_ca_certs": str(secure_stack.other_pki.ca_cert)}
    if overrides.get("url") == "PLAINTEXT":
        overrides = {**overrides, "url": secure_stack.redis.url.replace("rediss://", "redis://")}
    settings = _settings(secure_stack, unique_name, "kafka-python", redis_settings=overrides)
    _with_events(secure_stack, settings, WAITING)
    worker = Worker(settings, registry=CollectorRegistry())
    with pytest.raises(RedisSecurityError, match=expected) as refused:
        worker.start()
    message = str(refused.value)
    assert "\n" not in message and f"Redis at 127.0.0.1:{secure_stack.redis.port}" in message
    assert secure_stack.redis_password not in message and "not-the-password" not in message
    _assert_nothing_learned_or_published(secure_stack, settings)


def test_the_worker_command_exits_non_zero_with_one_line(
    secure_stack: SecureStack, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """``streamlearn worker`` with a wrong SCRAM password: exit status 3, the reason on one line of stderr."""
    settings = _settings(secure_stack, unique_name, "kafka-python", kafka={"sasl_password": "not-the-password"})
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json") | {
        "kafka": settings.kafka.model_dump(mode="json") | {"sasl_password": "not-the-password"},
        "redis": settings.redis.model_dump(mode="json") | {"url": secure_stack.redis.url,
                                                            "password": secure_stack.redis_password},
        "hmac_key": settings.hmac_key.get_secret_value(),
    }))
    result = subprocess.run([sys.executable, "-m", "services.cli", "worker", "--config", str(config),
                             "--max-seconds", "20"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 3, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("streamlearn worker:")]
    assert len(lines) == 1 and f"Kafka at {secure_stack.sasl_ssl_bootstrap} refused SASL_SSL" in lines[0], \
        result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_the_client_libraries_refuse_an_untrusted_broker_on_their_own(
    secure_stack: SecureStack, unique_name: Callable[[str], str], kafka_client: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the start-up check, kafka-python and librdkafka still verify the broker's certificate: a worker
    that trusts another CA reads, learns and publishes nothing (kafka-python gives up after its bootstrap
    timeout, librdkafka retries until the run ends)."""
    monkeypatch.setattr("services.worker.worker.check_kafka_security", lambda settings: None)
    settings = _settings(secure_stack, unique_name, kafka_client,
                         # at-least-once: a transactional producer that cannot connect retries past max_seconds
                         kafka={"ssl_cafile": str(secure_stack.other_pki.ca_cert), "exactly_once": False,
                                "bootstrap_timeout_ms": 5_000})
    _with_events(secure_stack, settings, WAITING)
    registry = CollectorRegistry()
    run_until_it_stops(Worker(settings, registry=registry), max_seconds=6)
    assert not sample_value(registry, "streamlearn_events_total", {"outcome": "valid"})
    _assert_nothing_learned_or_published(secure_stack, settings)


def test_the_redis_user_is_confined_to_its_keys_and_commands(secure_stack: SecureStack) -> None:
    """The ACL the worker ran under above is not ``+@all``: other keys and dangerous commands are refused."""
    client = _redis(secure_stack)
    try:
        client.set("ns.confined-check", b"1")
        client.delete("ns.confined-check")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("other-application:key", b"1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
    finally:
        client.close()


def test_replay_sends_with_the_workers_security_settings(
    secure_stack: SecureStack, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """``streamlearn replay --config worker.yaml`` reaches the SASL_SSL listener with the file's TLS and SCRAM."""
    topic = unique_name("replayed")
    ensure_topics(secure_stack.sasl_ssl_bootstrap, {topic: 1}, **secure_stack.kafka_client_options())
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump({"kafka": secure_stack.kafka_settings("SASL_SSL")}))
    result = subprocess.run([sys.executable, "-m", "services.cli", "replay", "phishing", "--config", str(config),
                             "--topic", topic, "--limit", "20", "--quiet"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    records = read_topic(secure_stack.sasl_ssl_bootstrap, topic, 20, timeout_s=20,
                         client_options=secure_stack.kafka_client_options())
    assert len(records) == 20


def test_redis_credentials_in_the_url_work_too(secure_stack: SecureStack) -> None:
    """``rediss://user:password@host:port/db``: the same login as ``redis.username`` and ``redis.password``."""
    port = secure_stack.redis.port
    url = f"rediss://{REDIS_USER}:{secure_stack.redis_password}@127.0.0.1:{port}/0"
    settings = RedisSettings(url=url, ssl_ca_certs=secure_stack.pki.ca_cert)
    check_redis_security(settings)
    client = redis_client(settings)
    try:
        assert client.ping()
    finally:
        client.close()
    wrong = RedisSettings(url=url.replace(secure_stack.redis_password, "not-the-password"),
                          ssl_ca_certs=secure_stack.pki.ca_cert)
    with pytest.raises(RedisSecurityError, match="refused the login") as refused:
        check_redis_security(wrong)
    assert "not-the-password" not in str(refused.value)
