"""The local stack on real servers: `stack up` in the background, use each server, restart, `stack down`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry, start_http_server

from services.stack import (
    KafkaServer,
    LocalStack,
    PrometheusServer,
    RedisServer,
    StackError,
    ensure_installed,
    free_ports,
    port_is_free,
)
from shared.kafka.admin import delete_topics, ensure_topics

pytestmark = pytest.mark.integration


def _stack_cli(state_dir: Path, action: str, ports: dict[str, float] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``run_stack_command`` in a separate process, as ``streamlearn stack <action>`` does."""
    code = (
        "import sys; from services.stack import run_stack_command; "
        f"sys.exit(run_stack_command({action!r}, state_dir={str(state_dir)!r}, **{ports or {}!r}))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=False)


def _read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=500)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(values) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            values.extend(record.value for record in batch)
    consumer.close()
    return values


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def test_stack_up_runs_in_background_serves_restarts_and_goes_down(tmp_path: Path) -> None:
    kafka_port, controller_port, redis_port, prometheus_port, target_port, dashboard_port = free_ports(6)
    ports = {"kafka_port": kafka_port, "controller_port": controller_port, "redis_port": redis_port,
             "prometheus_port": prometheus_port, "scrape_interval_s": 1.0, "dashboard_port": dashboard_port}
    stack = LocalStack(tmp_path, kafka_heap="512M", **ports)  # type: ignore[arg-type]
    try:
        up = _stack_cli(tmp_path, "up", ports)
        assert up.returncode == 0, up.stderr
        assert f"127.0.0.1:{kafka_port}" in up.stdout and f"redis://127.0.0.1:{redis_port}/0" in up.stdout
        assert f"dashboard   http://127.0.0.1:{dashboard_port}/" in up.stdout

        # the command has exited; the servers keep running and another process sees them
        statuses = {s.name: s for s in stack.status()}
        assert all(s.running and s.pid for s in statuses.values()), statuses
        assert statuses["kafka"].address == f"127.0.0.1:{kafka_port}"
        assert _stack_cli(tmp_path, "status").returncode == 0

        bootstrap = stack.addresses.kafka_bootstrap
        ensure_topics(bootstrap, {"stack-check": 1})
        ensure_topics(bootstrap, {"stack-check": 1})
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        producer.send("stack-check", b"hello").get(timeout=30)
        producer.close()
        assert _read_all(bootstrap, "stack-check", 1) == [b"hello"]

        client = redis.Redis.from_url(stack.addresses.redis_url)
        assert client.ping()
        client.set("stack-check", "kept")

        with urllib.request.urlopen(f"{stack.addresses.prometheus_url}/-/ready", timeout=5) as ready:
            assert ready.status == 200
        # the dashboard reads that Prometheus through its proxy
        query = f"{stack.addresses.dashboard_url}api/v1/query?query=vector(1)"
        with urllib.request.urlopen(query, timeout=5) as answer:
            assert json.load(answer)["data"]["result"][0]["value"][1] == "1"
        target_server, _ = start_http_server(target_port, addr="127.0.0.1", registry=CollectorRegistry())
        try:
            stack.prometheus.set_scrape_targets([f"127.0.0.1:{target_port}"])
            up_query = f'up{{job="streamlearn",instance="127.0.0.1:{target_port}"}}'
            _wait_for(lambda: [r["value"][1] for r in stack.prometheus.query(up_query)] == ["1"], 30,
                      "Prometheus to scrape the target set at run time")
        finally:
            target_server.shutdown()

        # restart on the same ports keeps the data (Kafka log, Redis append-only file)
        old_kafka_pid = statuses["kafka"].pid
        assert stack.kafka.stop() and not stack.kafka.is_running()
        stack.kafka.start()
        assert stack.kafka.pid() != old_kafka_pid
        assert _read_all(bootstrap, "stack-check", 1) == [b"hello"]
        assert stack.redis.stop()
        stack.redis.start()
        assert client.get("stack-check") == b"kept"
        client.close()
        delete_topics(bootstrap, ["stack-check"])

        down = _stack_cli(tmp_path, "down")
        assert down.returncode == 0, down.stderr
        assert not any(s.running for s in stack.status())
        assert all(port_is_free(p) for p in (kafka_port, controller_port, redis_port, prometheus_port, dashboard_port))
        assert stack.down() == []
        assert _stack_cli(tmp_path, "status").returncode == 3
    finally:
        stack.down()


def test_taken_port_is_a_clear_error_and_nothing_is_left_running(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(StackError, match=rf"redis port 127\.0\.0\.1:{taken} is already in use.*another redis port"):
            RedisServer(tmp_path, port=taken).start()

        kafka_port, controller_port, prometheus_port, dashboard_port = free_ports(4)
        stack = LocalStack(tmp_path, kafka_port=kafka_port, controller_port=controller_port, redis_port=taken,
                           prometheus_port=prometheus_port, dashboard_port=dashboard_port, kafka_heap="512M",
                           install_missing=False)
        with pytest.raises(StackError, match="already in use"):
            stack.up(quiet=True)
        assert not any(s.running for s in stack.status())
        assert stack.down() == []


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    kafka_port, controller_port = free_ports(2)
    server = KafkaServer(tmp_path, port=kafka_port, controller_port=controller_port)
    with pytest.raises(StackError, match=r"`java` is not on PATH.*apt-get install -y openjdk-17"):
        server.start()
    assert not server.is_running()


def test_server_that_exits_during_start_is_a_clear_error(tmp_path: Path) -> None:
    kafka_port, controller_port = free_ports(2)
    server = KafkaServer(tmp_path, port=kafka_port, controller_port=controller_port, heap="lots")
    with pytest.raises(StackError, match=r"kafka exited during start \(exit code 1\); see .*kafka\.out"):
        server.start()
    assert not server.is_running() and not server.pid_file.exists()


def test_broken_rule_file_and_missing_package_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = tmp_path / "alerts.yml"
    rules.write_text("groups:\n  - name: broken\n    rules:\n      - alert: X\n        expr: rate(\n")
    (port,) = free_ports(1)
    with pytest.raises(StackError, match=r"promtool check config .* failed; fix the config or the rule files"):
        PrometheusServer(tmp_path, port=port, rule_files=[rules]).start()

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=r"missing redis-server and there is no apt-get"):
        ensure_installed(["redis-server"])


def test_a_server_that_dies_with_its_caller_shares_its_session_and_a_detached_one_has_its_own(tmp_path: Path) -> None:
    """Test and bench servers stay in the caller's session (one autogroup for the scheduler: docs/operations.md,
    "Co-located servers and the scheduler") but in a process group of their own; `stack up` servers get a session."""
    tied_port, detached_port = free_ports(2)
    tied = RedisServer(tmp_path / "tied", port=tied_port, die_with_parent=True)
    detached = RedisServer(tmp_path / "detached", port=detached_port)
    try:
        tied.start()
        detached.start()
        tied_pid, detached_pid = (json.loads(s.pid_file.read_text())["pid"] for s in (tied, detached))
        assert os.getsid(tied_pid) == os.getsid(0)
        assert os.getpgid(tied_pid) == tied_pid != os.getpgid(0)
        assert os.getsid(detached_pid) == detached_pid != os.getsid(0)
    finally:
        tied.stop()
        detached.stop()
