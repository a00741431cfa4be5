"""Starts and stops the local Kafka, Redis, Prometheus and dashboard as plain processes (no Docker)."""

from services.stack.dashboard_process import DashboardProcess
from services.stack.kafka_server import KafkaServer, resolve_kafka_jars
from services.stack.local import DEFAULT_STATE_DIR, LocalStack, StackAddresses, run_stack_command
from services.stack.process import ManagedServer, ServerStatus, StackError, free_ports, port_is_free
from services.stack.prometheus_server import PrometheusServer
from services.stack.redis_server import RedisServer
from services.stack.tools import ensure_installed

__all__ = [
    "DEFAULT_STATE_DIR",
    "DashboardProcess",
    "KafkaServer",
    "LocalStack",
    "ManagedServer",
    "PrometheusServer",
    "RedisServer",
    "ServerStatus",
    "StackAddresses",
    "StackError",
    "ensure_installed",
    "free_ports",
    "port_is_free",
    "resolve_kafka_jars",
    "run_stack_command",
]
