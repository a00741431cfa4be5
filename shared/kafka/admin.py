"""Topic administration: create missing topics and delete topics, waiting until the metadata agrees."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, NoError, TopicAlreadyExistsError, UnknownTopicOrPartitionError, for_code


class TopicAdminError(RuntimeError):
    """Topics could not be created or deleted in time."""


@contextmanager
def _admin(bootstrap: str, timeout_s: float, **client_options: Any) -> Iterator[KafkaAdminClient]:
    timeout_ms = max(1000, int(timeout_s * 1000))
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="streamlearn-admin",
        request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms, **client_options,
    )
    try:
        yield admin
    finally:
        admin.close()


def _partition_counts(admin: KafkaAdminClient, topics: Iterable[str]) -> dict[str, int]:
    """Partitions per topic that exists and has a leader for every partition."""
    ready: dict[str, int] = {}
    for topic in admin.describe_topics(list(topics)):
        partitions = topic.get("partitions") or []
        if topic.get("error_code", 0) == 0 and partitions and all(
            p.get("error_code", 0) == 0 and p.get("leader_id", -1) >= 0 for p in partitions
        ):
            ready[topic["name"]] = len(partitions)
    return ready


def partition_counts(
    bootstrap: str, topics: Iterable[str], *, timeout_s: float = 10, **client_options: Any
) -> dict[str, int]:
    """Partitions per topic, for the topics of ``topics`` that exist (with a short-lived admin client).

    A consumer's own metadata is left alone on purpose: asking a group member for one topic's partitions
    replaces its cluster view with that topic alone, and the group leader then rebalances twice.
    """
    with _admin(bootstrap, timeout_s, **client_options) as admin:
        return _partition_counts(admin, topics)


def ensure_topics(
    bootstrap: str, topics: dict[str, int], *, timeout_s: float = 30, **client_options: Any
) -> None:
    """Create the missing ``topics`` (name -> partitions, replication 1) and wait until all are usable.

    Idempotent: existing topics are kept as they are, even with another partition count.
    Raises TopicAdminError when they are not all ready within ``timeout_s``. ``client_options``: security
    (``shared.kafka.clients.security_options``).
    """
    if not topics:
        return
    deadline = time.monotonic() + timeout_s
    with _admin(bootstrap, timeout_s, **client_options) as admin:
        missing = set(topics) - set(admin.list_topics())
        if missing:
            request = {name: {"num_partitions": topics[name], "replication_factor": 1} for name in sorted(missing)}
            response = admin.create_topics(request, timeout_ms=int(timeout_s * 1000), raise_errors=False)
            failures = {
                topic["name"]: f"{error.__name__}: {topic.get('error_message') or ''}".rstrip(": ")
                for topic in response["topics"]
                if (error := for_code(topic["error_code"])) not in (NoError, TopicAlreadyExistsError)
            }
            if failures:
                raise TopicAdminError(f"could not create topics on {bootstrap}: {failures}")
        pending: set[str] = set(topics)
        while True:
            with suppress(KafkaError):
                pending -= set(_partition_counts(admin, pending))
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TopicAdminError(f"topics not ready on {bootstrap} after {timeout_s} s: {sorted(pending)}")
            time.sleep(0.1)


def delete_topics(
    bootstrap: str, topics: Iterable[str], *, timeout_s: float = 30, **client_options: Any
) -> None:
    """Delete ``topics`` (those that do not exist are ignored) and wait until the metadata no longer lists them."""
    names = set(topics)
    if not names:
        return
    deadline = time.monotonic() + timeout_s
    with _admin(bootstrap, timeout_s, **client_options) as admin:
        present = names & set(admin.list_topics())
        if present:
            with suppress(UnknownTopicOrPartitionError):
                admin.delete_topics(sorted(present), timeout_ms=int(timeout_s * 1000))
        while present:
            present &= set(admin.list_topics())
            if not present:
                return
            if time.monotonic() > deadline:
                raise TopicAdminError(f"topics still listed on {bootstrap} after {timeout_s} s: {sorted(present)}")
            time.sleep(0.1)
