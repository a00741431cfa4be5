"""Kafka consumer and producer built from settings: manual commits only, raw bytes in and out."""

from __future__ import annotations

import socket
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.abc import Partitioner

from shared.settings import KafkaSettings

#: the producer's batch buffer per partition; kafka-python's 16 KiB default costs about three times the CPU per
#: record (measured with bench/profile_worker.py); a batch is still sent after ``linger_ms`` when not full
PRODUCER_BATCH_BYTES = 256 * 1024
#: a transactional producer's retry backoff: the first request of a transaction begun right after a commit is
#: answered CONCURRENT_TRANSACTIONS until the broker has written the previous one's markers (a few ms), and the
#: clients' default of 100 ms (librdkafka: growing to 1 s) then sets the exactly-once p99 (docs/benchmarks.md,
#: "Exactly-once latency"); Java's producer retries this case after 20 ms
TRANSACTIONAL_RETRY_BACKOFF_MS = 10
TRANSACTIONAL_RETRY_BACKOFF_MAX_MS = 100


class KeyPartitioner(Partitioner):
    """kafka-python's default partitioning (murmur2 of the key, as Java's), with a shortcut for one partition.

    The default builds sets and sorts the partitions on every record; a one-partition topic needs none of it.
    """

    def __init__(self) -> None:
        self._default = DefaultPartitioner()

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                  serialized_value: bytes | None, cluster: Any) -> int:
        partitions = cluster.partitions_for_topic(topic)
        if partitions is not None and len(partitions) == 1:
            return int(next(iter(partitions)))
        return int(self._default.partition(topic, key, serialized_key, value, serialized_value, cluster))


def security_options(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments shared by consumers, producers and admin clients: security (SASL, TLS) and reconnection."""
    options: dict[str, Any] = {
        "security_protocol": settings.security_protocol,
        "reconnect_backoff_max_ms": settings.reconnect_backoff_max_ms,
    }
    if settings.sasl_mechanism:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_check_hostname"] = settings.ssl_check_hostname
        for option, path in (("ssl_cafile", settings.ssl_cafile), ("ssl_certfile", settings.ssl_certfile),
                             ("ssl_keyfile", settings.ssl_keyfile)):
            if path is not None:
                options[option] = str(path)
        if settings.ssl_key_password is not None:
            options["ssl_password"] = settings.ssl_key_password.get_secret_value()
    return options


def build_consumer(settings: KafkaSettings, *, group_id: str | None = None) -> KafkaConsumer:
    """A group consumer that never auto-commits and reads only committed transactional data."""
    return KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group_id or settings.group_id,
        client_id=settings.client_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        isolation_level="read_committed",
        max_poll_records=settings.max_poll_records,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.session_timeout_ms // 3),
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        bootstrap_timeout_ms=settings.bootstrap_timeout_ms,
        # the instance id belongs to the worker's group: a consumer of another group is a dynamic member
        group_instance_id=settings.group_instance_id if group_id in (None, settings.group_id) else None,
        # kafka-python's own sensors, which nothing reads (the worker exports its own metrics), cost CPU per request
        metrics_enabled=False,
        **security_options(settings),
    )


def default_transactional_id(settings: KafkaSettings) -> str:
    """Stable per worker instance: the prefix, the group and the client id (or host name)."""
    instance = settings.transactional_id or f"{settings.client_id}-{socket.gethostname()}"
    return f"{settings.transactional_id_prefix}-{settings.group_id}-{instance}"


def build_producer(settings: KafkaSettings, *, transactional: bool = False) -> KafkaProducer:
    """An idempotent producer; transactional when exactly-once is on."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "acks": "all",
        "linger_ms": settings.linger_ms,
        "batch_size": PRODUCER_BATCH_BYTES,
        "partitioner": KeyPartitioner(),
        "enable_idempotence": True,
        "bootstrap_timeout_ms": settings.bootstrap_timeout_ms,
        "metrics_enabled": False,  # as the consumer's: unread, and paid per request
        **security_options(settings),
    }
    if settings.compression_type != "none":
        options["compression_type"] = settings.compression_type
    if transactional:
        options["transactional_id"] = default_transactional_id(settings)
        options["transaction_timeout_ms"] = settings.transaction_timeout_ms
        options["retry_backoff_ms"] = TRANSACTIONAL_RETRY_BACKOFF_MS
    return KafkaProducer(**options)
