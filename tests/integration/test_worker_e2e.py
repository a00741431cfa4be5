"""Issue 2 end to end, on the real broker: exact River semantics, dead letters, drain on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry
from river import evaluate, metrics

from services.replayer import replay
from shared.datasets import iter_source
from shared.kafka.admin import ensure_topics
from shared.learners.registry import build_river_pipeline
from shared.settings import Settings
from tests.integration.helpers import (
    committed_total,
    make_settings,
    produce,
    read_topic,
    running_worker,
    sample_value,
    wait_for,
)

pytestmark = pytest.mark.integration

LOGREG = {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}


def _create_topics(bootstrap: str, settings: Settings, partitions: int = 1) -> None:
    t = settings.kafka.topics
    ensure_topics(bootstrap, {t.events: partitions, t.labels: partitions, t.predictions: 1,
                              t.shadow_predictions: 1, t.dead_letters: 1})


@pytest.mark.parametrize("scope", ["group", "partition"])
def test_phishing_predictions_equal_river_progressive_val_score(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], kafka_client: str, scope: str,
) -> None:
    """With one partition, both sync scopes publish River's own prequential predictions (group scope: with
    syncs every 300 events, each one a checkpoint that publishes the model's delta, on the way)."""
    n = 2000
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url, models=[LOGREG], kafka={"client": kafka_client},
        preprocessing={"scale_numbers": True, "one_hot_categories": True, "impute_missing": True},
        sync={"scope": scope, "every_events": 300},
    )
    _create_topics(kafka_bootstrap, settings)
    stats = replay("phishing", bootstrap_servers=kafka_bootstrap, topic=settings.kafka.topics.events,
                   limit=n, seed=7, progress=False)
    assert stats.sent == n
    registry = CollectorRegistry()
    with running_worker(settings, registry):
        wait_for(lambda: sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == n,
                 120, f"{n} valid events")
        wait_for(lambda: _committed(kafka_bootstrap, settings) == n, 30, "the offsets to be committed")

    records = read_topic(kafka_bootstrap, settings.kafka.topics.predictions, n)
    assert len(records) == n, "exactly one prediction per event"
    payloads = [orjson.loads(r.value) for r in records]
    ids = [p["id"] for p in payloads]
    assert ids == [f"phishing-7-{i:09d}" for i in range(n)], "none lost, none duplicated, in order"
    assert all(r.key == p["id"].encode() for r, p in zip(records, payloads, strict=True))

    samples = list(iter_source("phishing", limit=n))
    reference = build_river_pipeline(LOGREG["estimator"], {}, settings.preprocessing, settings.worker.seed)
    accuracy = metrics.Accuracy()
    expected = [
        step["Prediction"] for step in evaluate.iter_progressive_val_score(
            dataset=[(s.features, s.label) for s in samples], model=reference, metric=accuracy,
            step=1, yield_predictions=True,
        )
    ]
    assert [p["prediction"] for p in payloads] == expected
    gauge = sample_value(registry, "streamlearn_model_metric",
                         {"model": "logreg", "metric": "accuracy", "window": "cumulative"})
    assert gauge is not None and abs(gauge - accuracy.get()) <= 1e-9
    assert accuracy.get() > 0.85
    assert sample_value(registry, "streamlearn_predictions_total", {"model": "logreg"}) == n
    assert sample_value(registry, "streamlearn_model_metric",
                        {"model": "logreg", "metric": "accuracy", "window": "rolling"}) is not None
    if scope == "group":
        syncs = sample_value(registry, "streamlearn_syncs_total", {"outcome": "ok"})
        assert syncs is not None and syncs >= 2, "the group-scope run synced on the way"


def _committed(bootstrap: str, settings: Settings) -> int:
    return committed_total(bootstrap, settings.kafka.group_id, settings.kafka.topics.events)


MALFORMED_KINDS: list[tuple[str, bytes | None]] = [
    ("invalid_json", b'{"id": "x", "features": {'),
    ("invalid_utf8", b'{"id": "\xff\xfe", "features": {}}'),
    ("schema", b'{"features": {"a": 1.0}}'),
    ("schema", b'{"id": "", "features": {"a": 1.0}}'),
    ("schema", b'{"id": "x", "features": {"a": [1, 2]}}'),
    ("non_finite", b'{"id": "x", "features": {"a": NaN}}'),
    ("non_finite", b'{"id": "x", "features": {"a": Infinity}}'),
    ("oversize", b'{"id": "x", "features": {"a": "' + b"z" * 70_000 + b'"}}'),
    ("too_many_features", orjson.dumps({"id": "x", "features": {f"f{i}": 1 for i in range(600)}})),
    ("not_an_object", b'"just a string"'),
    ("empty", b""),
]


def test_malformed_events_go_to_the_dead_letter_topic(
    kafka_bootstrap: str, unique_name: Callable[[str], str], kafka_client: str
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name, models=[LOGREG], kafka={"client": kafka_client})
    _create_topics(kafka_bootstrap, settings)
    samples = list(iter_source("phishing", limit=300))
    items: list[tuple[bytes | None, bytes | None]] = []
    expected_bad: dict[int, str] = {}
    bad = 0
    for i, sample in enumerate(samples):
        event = {"id": f"ok-{i}", "features": sample.features, "label": sample.label}
        items.append((f"ok-{i}".encode(), orjson.dumps(event)))
        if i % 3 == 0 and bad < 100:
            code, value = MALFORMED_KINDS[bad % len(MALFORMED_KINDS)]
            expected_bad[len(items)] = code
            items.append((f"bad-{bad}".encode(), value))
            bad += 1
    assert bad == 100 and len({c for c in expected_bad.values()}) >= 8
    produce(kafka_bootstrap, settings.kafka.topics.events, items)

    registry = CollectorRegistry()
    with running_worker(settings, registry):
        wait_for(lambda: (sample_value(registry, "streamlearn_events_total", {"outcome": "invalid"}) or 0)
                 + (sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) or 0) == 400,
                 90, "400 events processed")
        assert threading.active_count() > 1

    dead = read_topic(kafka_bootstrap, settings.kafka.topics.dead_letters, 100)
    assert len(dead) == 100
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        offset = int(headers["source_offset"])
        assert headers["source_topic"] == settings.kafka.topics.events
        assert headers["source_partition"] == "0"
        assert headers["error_code"] == expected_bad[offset], headers
        assert len(headers["error"]) > 15
        assert record.value == (items[offset][1] or b"")
    predictions = read_topic(kafka_bootstrap, settings.kafka.topics.predictions, 300)
    assert sorted(orjson.loads(r.value)["id"] for r in predictions) == sorted(f"ok-{i}" for i in range(300))
    by_code = Counter(expected_bad.values())
    for code, count in by_code.items():
        assert sample_value(registry, "streamlearn_dead_letters_total", {"reason": code}) == count


def test_worker_process_drains_on_sigterm(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name, models=[LOGREG])
    _create_topics(kafka_bootstrap, settings)
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude={"redis", "hmac_key"})))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker", "--config", str(config)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        replay("bananas", bootstrap_servers=kafka_bootstrap, topic=settings.kafka.topics.events,
               limit=1500, progress=False)
        wait_for(lambda: len(read_topic(kafka_bootstrap, settings.kafka.topics.predictions, 1500, 5)) >= 1500,
                 120, "1500 predictions")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "draining" in output and "worker stopped" in output
    assert _committed(kafka_bootstrap, settings) == 1500
    assert len(read_topic(kafka_bootstrap, settings.kafka.topics.predictions, 1500)) == 1500
