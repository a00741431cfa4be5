"""Shared fixtures: real Redis, Kafka and Prometheus for integration tests, started lazily once per session.

Each server starts on free loopback ports in a temporary directory the first time a test asks for it, so a
Redis-only test never waits for Kafka. All of them are stopped when the session ends, pass or fail.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from services.stack import (
    KafkaServer,
    ManagedServer,
    PrometheusServer,
    RedisServer,
    StackAddresses,
    free_ports,
)
from tests.keys import TEST_HMAC_KEY  # noqa: F401  (sets STREAMLEARN_HMAC_KEY for the whole session)

SCRAPE_INTERVAL_S = 1.0
KAFKA_HEAP = "512M"


class SessionServers:
    """The servers of one test session, each started on first use and all stopped by ``stop_all``."""

    def __init__(self, state_dir_factory: Callable[[], Path]) -> None:
        self._state_dir_factory = state_dir_factory
        self._state_dir: Path | None = None
        self._servers: dict[str, ManagedServer] = {}

    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            self._state_dir = self._state_dir_factory()
        return self._state_dir

    def redis(self) -> RedisServer:
        server = self._servers.get(RedisServer.name)
        if server is None:
            (port,) = free_ports(1)
            server = self._start(RedisServer(self.state_dir, port=port, die_with_parent=True))
        assert isinstance(server, RedisServer)
        return server

    def kafka(self) -> KafkaServer:
        server = self._servers.get(KafkaServer.name)
        if server is None:
            port, controller_port = free_ports(2)
            server = self._start(KafkaServer(
                self.state_dir, port=port, controller_port=controller_port, heap=KAFKA_HEAP, die_with_parent=True,
            ))
        assert isinstance(server, KafkaServer)
        return server

    def prometheus(self) -> PrometheusServer:
        server = self._servers.get(PrometheusServer.name)
        if server is None:
            (port,) = free_ports(1)
            server = self._start(PrometheusServer(
                self.state_dir, port=port, scrape_interval_s=SCRAPE_INTERVAL_S, die_with_parent=True,
            ))
        assert isinstance(server, PrometheusServer)
        return server

    def restart_stopped(self) -> None:
        """Start again any server a test stopped or killed (same ports, same data)."""
        for server in self._servers.values():
            if not server.is_running():
                server.start()

    def stop_all(self) -> None:
        servers = list(self._servers.values())
        if servers:
            with ThreadPoolExecutor(max_workers=len(servers)) as pool:
                list(pool.map(lambda server: server.stop(), servers))

    def _start(self, server: ManagedServer) -> ManagedServer:
        self._servers[server.name] = server
        server.start()
        return server


@pytest.fixture(scope="session")
def session_servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> SessionServers:
    """The lazily started servers of this session; their finalizer stops them all."""
    servers = SessionServers(lambda: tmp_path_factory.mktemp("stack"))
    request.addfinalizer(servers.stop_all)
    return servers


@pytest.fixture(autouse=True)
def _restart_servers_a_test_stopped(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fault tests may stop or kill a session server; the next test gets it back."""
    yield
    if "session_servers" in request.fixturenames:
        servers: SessionServers = request.getfixturevalue("session_servers")
        servers.restart_stopped()


@pytest.fixture(scope="session")
def redis_server(session_servers: SessionServers) -> RedisServer:
    """The session's Redis (append-only persistence on); ``stop()``/``start()`` keep its data."""
    return session_servers.redis()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:<port>/0`` of the session's Redis; starts only Redis."""
    return redis_server.url


@pytest.fixture(scope="session")
def kafka_server(session_servers: SessionServers) -> KafkaServer:
    """The session's single-node Kafka broker; ``stop()``/``start()``/``kill()`` for fault tests."""
    return session_servers.kafka()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_server: KafkaServer) -> str:
    """``127.0.0.1:<port>`` of the session's Kafka; starts only Kafka."""
    return kafka_server.bootstrap


@pytest.fixture(scope="session")
def prometheus_server(session_servers: SessionServers) -> PrometheusServer:
    """The session's Prometheus (1 s scrape and evaluation interval): ``.url``, ``.set_scrape_targets([...])``."""
    return session_servers.prometheus()


@pytest.fixture(scope="session")
def stack(kafka_server: KafkaServer, redis_server: RedisServer, prometheus_server: PrometheusServer) -> StackAddresses:
    """All three session servers; their addresses."""
    return StackAddresses(kafka_server.bootstrap, redis_server.url, prometheus_server.url)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """A factory of names unique to this test and call, valid as Kafka topic, group and Redis key names."""
    test_part = re.sub(r"[^a-zA-Z0-9_-]+", "-", request.node.name)[:60].strip("-")

    def make(prefix: str = "t") -> str:
        return f"{prefix}.{test_part}.{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the session's Redis, emptied (``flushall``) before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The worker's Kafka transport (``kafka.client``): a test asking for it runs once with each."""
    return str(request.param)
