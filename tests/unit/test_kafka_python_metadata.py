"""The kafka-python consumer asks for metadata again while a subscribed topic has no partitions in it.

A member that joined before a new topic's metadata reached it (the topic's partitions had no leader yet) is
assigned nothing for that topic, and kafka-python would look again only after ``metadata_max_age_ms`` (5 minutes;
dpkp/kafka-python#2377). The real race depends on the broker's leader election; this checks the reaction.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.kafka.transport import KafkaPythonConsumer


class _Cluster:
    def __init__(self, partitions: dict[str, set[int] | None]) -> None:
        self.partitions = partitions
        self.updates = 0

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)

    def request_update(self) -> None:
        self.updates += 1


class _Raw:
    def __init__(self, cluster: _Cluster, topics: set[str]) -> None:
        self._client = type("Client", (), {"cluster": cluster})()
        self.topics = topics

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        return {}

    def subscription(self) -> set[str]:
        return self.topics


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr("shared.kafka.transport.time.monotonic", lambda: now[0])
    return now


@pytest.mark.parametrize("missing", [None, set()], ids=["unknown", "no-partitions"])
def test_a_topic_without_partitions_asks_for_metadata_once_a_second(
    clock: list[float], missing: set[int] | None,
) -> None:
    cluster = _Cluster({"events": missing, "labels": {0}})
    consumer = KafkaPythonConsumer(_Raw(cluster, {"events", "labels"}))
    consumer.poll(10, 10)
    assert cluster.updates == 1
    clock[0] += 0.5
    consumer.poll(10, 10)
    assert cluster.updates == 1, "at most one request a second"
    clock[0] += 0.6
    consumer.poll(10, 10)
    assert cluster.updates == 2
    cluster.partitions["events"] = {0, 1}
    clock[0] += 5
    consumer.poll(10, 10)
    assert cluster.updates == 2, "every subscribed topic has partitions: nothing to ask"


def test_no_request_before_subscribing(clock: list[float]) -> None:
    cluster = _Cluster({})
    consumer = KafkaPythonConsumer(_Raw(cluster, set()))
    consumer.poll(10, 10)
    assert cluster.updates == 0
