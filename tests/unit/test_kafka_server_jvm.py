"""The JVM options the project's Kafka broker starts with (pure logic: no broker is started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.stack.kafka_server import KAFKA_JVM_PERFORMANCE_OPTS, KafkaServer


def _server(tmp_path: Path, heap: str = "1G") -> KafkaServer:
    return KafkaServer(tmp_path / "kafka", heap=heap)


def test_broker_gets_kafka_own_g1_settings_and_a_fixed_heap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_HEAP_OPTS", raising=False)
    monkeypatch.delenv("KAFKA_JVM_PERFORMANCE_OPTS", raising=False)
    options = _server(tmp_path, heap="512M").jvm_options()
    assert options[:2] == ["-Xmx512M", "-Xms512M"]
    assert "-XX:MaxGCPauseMillis=20" in options
    assert "-XX:+UseG1GC" in options
    assert options[2:] == list(KAFKA_JVM_PERFORMANCE_OPTS)


def test_environment_replaces_heap_and_performance_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_HEAP_OPTS", "-Xmx2G")
    monkeypatch.setenv("KAFKA_JVM_PERFORMANCE_OPTS", "-XX:+UseParallelGC -Djava.awt.headless=true")
    assert _server(tmp_path).jvm_options() == ["-Xmx2G", "-XX:+UseParallelGC", "-Djava.awt.headless=true"]
