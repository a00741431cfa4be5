"""Delayed labels need a labels topic co-partitioned with the events topic: the worker refuses any other layout."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from services.worker import Worker
from services.worker.worker import TopicLayoutError
from shared.kafka.admin import ensure_topics
from tests.integration.helpers import make_settings

pytestmark = pytest.mark.integration


def test_worker_refuses_a_labels_topic_with_another_partition_count(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name, redis_url=redis_url,
                             models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}])
    t = settings.kafka.topics
    assert settings.labels.enabled
    ensure_topics(kafka_bootstrap, {t.events: 2, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    worker = Worker(settings, registry=CollectorRegistry())
    with pytest.raises(TopicLayoutError, match=r"has 1 partitions but .* has 2"):
        worker.start()
    worker.close()


def test_worker_starts_with_co_partitioned_topics(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str]
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name, redis_url=redis_url,
                             models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}])
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 2, t.labels: 2, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    worker = Worker(settings, registry=CollectorRegistry())
    worker.start()
    worker.close()
