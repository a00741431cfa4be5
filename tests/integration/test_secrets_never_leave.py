"""Secrets never leave: a worker run with a SASL password, a Redis password (a real Redis with ``requirepass``), a
checkpoint key and a PII hash key; none of them is found in its log, /metrics, the dead letters, the predictions or
what it wrote to Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
import yaml

from services.stack import RedisServer, free_ports
from shared.kafka.admin import ensure_topics
from shared.signing_keys import generate_key
from tests.integration.helpers import produce, read_topic, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
N_GOOD = 50


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """A Redis of this test's own that requires a password."""
    (port,) = free_ports(1)
    server = RedisServer(tmp_path / "redis", port=port, die_with_parent=True)
    server.start()
    password = "redis-pw-" + generate_key()[:20]
    client = redis.Redis.from_url(server.url)
    client.config_set("requirepass", password)
    client.close()
    try:
        yield server, password
    finally:
        server.stop()


def _scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def test_no_secret_in_logs_metrics_topics_or_redis(
    tmp_path: Path, kafka_bootstrap: str, unique_name: Callable[[str], str],
    redis_with_password: tuple[RedisServer, str],
) -> None:
    server, redis_password = redis_with_password
    secrets = {
        "sasl password": "sasl-pw-" + generate_key()[:24],
        "redis password": redis_password,
        "hmac key": generate_key(),
        "pii hash key": generate_key(),
    }
    topics = {name: unique_name(name) for name in ("events", "labels", "predictions", "shadow", "dlq")}
    ensure_topics(kafka_bootstrap, {t: 1 for t in topics.values()})
    (metrics_port,) = free_ports(1)
    namespace = unique_name("ns")
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {
            "bootstrap_servers": kafka_bootstrap, "group_id": unique_name("group"),
            "topics": {"events": topics["events"], "labels": topics["labels"], "predictions": topics["predictions"],
                       "shadow_predictions": topics["shadow"], "dead_letters": topics["dlq"]},
            # configured, though this plaintext broker never asks for it: it must not leak from the settings either
            "sasl_username": "streamlearn",
        },
        "redis": {"namespace": namespace},
        "metrics": {"port": metrics_port},
        "cleaning": {"pii": {"hash": ["email"], "dead_letters": "drop_fields"}},
        "checkpoint": {"every_events": 10, "every_seconds": 1.0},
        "models": [{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"}],
    }))
    env = {
        **os.environ,
        "STREAMLEARN_KAFKA__SASL_PASSWORD": secrets["sasl password"],
        "STREAMLEARN_REDIS__URL": f"redis://:{redis_password}@127.0.0.1:{server.port}/0",
        "STREAMLEARN_HMAC_KEY": secrets["hmac key"],
        "STREAMLEARN_CLEANING__PII__HASH_KEY": secrets["pii hash key"],
    }
    now = time.time()
    good = [{"id": f"e{i}", "ts": now, "features": {"x": float(i), "email": f"user{i}@example.com"}, "label": i % 2}
            for i in range(N_GOOD)]
    bad = [{"id": "bad-label", "features": {"x": 1.0, "email": "bad@example.com"}, "label": 3.5}]
    produce(kafka_bootstrap, topics["events"], [(e["id"].encode(), orjson.dumps(e)) for e in good + bad]
            + [(b"junk", b"{not json")])
    log_path = tmp_path / "worker.log"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "services.cli", "-v", "worker", "--config", str(config),
                                   "--max-seconds", "120"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: f'streamlearn_events_total{{outcome="valid"}} {N_GOOD}.0' in _scrape(metrics_url)
                     and 'streamlearn_checkpoints_total{outcome="ok"}' in _scrape(metrics_url), 90,
                     "the events processed and checkpointed")
            metrics = _scrape(metrics_url)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    log_text = log_path.read_text(errors="replace")
    assert "settings:" in log_text, "the settings dump is in the log (masked)"

    predictions = read_topic(kafka_bootstrap, topics["predictions"], N_GOOD)
    dead_letters = read_topic(kafka_bootstrap, topics["dlq"], 2)
    assert len(predictions) == N_GOOD and len(dead_letters) == 2
    outputs = {
        "log": log_text,
        "/metrics": metrics,
        "predictions": "\n".join(repr((r.key, r.value, r.headers)) for r in predictions),
        "dead letters": "\n".join(repr((r.key, r.value, r.headers)) for r in dead_letters),
    }
    client = redis.Redis(host="127.0.0.1", port=server.port, password=redis_password)
    try:
        stored = [repr(key) + repr(client.get(key) if client.type(key) == b"string" else b"")
                  for key in client.scan_iter(f"{namespace}*")]
    finally:
        client.close()
    assert stored, "the worker wrote its state to the password-protected Redis"
    outputs["redis"] = "\n".join(stored)
    for where, text in outputs.items():
        for what, secret in secrets.items():
            assert secret not in text, f"the {what} leaked into {where}"
    assert "bad@example.com" not in outputs["dead letters"], "cleaning.pii.dead_letters: drop_fields hashes e-mails"
    print(f"\nno secret in {', '.join(f'{k} ({len(v):,} chars)' for k, v in outputs.items())}")
