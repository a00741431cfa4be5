"""Issue 14, acceptance 3: ``streamlearn produce data.csv --label-column y`` then ``streamlearn tail predictions``,
as subprocesses of the real command, with a worker running on the real broker."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import yaml

from shared.contract import DeadLetter, Prediction
from shared.kafka.admin import ensure_topics
from shared.settings import Settings
from tests.integration.helpers import make_settings, produce, running_worker, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODELS = [
    {"name": "logreg", "estimator": "river.linear_model.LogisticRegression"},
    {"name": "nb", "estimator": "river.naive_bayes.GaussianNB"},
]
ROWS = 300
#: line numbers (the header is line 1) of the rows the contract refuses, and why
BAD_LINES = {42: "is inf", 77: "expected 5 fields", 150: "id: String should have at least 1 character"}


def _cli(*args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], input=stdin, capture_output=True,
                          timeout=timeout, cwd=ROOT, env=env, check=False)


def _tail(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "services.cli", "tail", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env)


def _write_csv(path: Path) -> list[str]:
    """A CSV of ROWS data rows with an id column; the ids of the valid rows, in order."""
    rng = random.Random(3)
    lines = ["id,x1,x2,color,y"]
    valid = []
    for line in range(2, ROWS + 2):
        x1, x2 = rng.uniform(-1, 1), rng.uniform(-1, 1)
        color = rng.choice(["red", "green", "blue"])
        row_id = f"row-{line}"
        if line == 42:
            lines.append(f"{row_id},inf,{x2},{color},true")
        elif line == 77:
            lines.append(f"{row_id},{x1},{color},false")
        elif line == 150:
            lines.append(f",{x1},{x2},{color},true")
        else:
            lines.append(f"{row_id},{x1:.4f},{x2:.4f},{color},{str(x1 + x2 > 0).lower()}")
            valid.append(row_id)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return valid


def _topics(bootstrap: str, settings: Settings) -> None:
    t = settings.kafka.topics
    ensure_topics(bootstrap, {t.events: 2, t.labels: 2, t.predictions: 1, t.shadow_predictions: 1,
                              t.dead_letters: 1})


def test_produce_a_csv_then_tail_the_predictions(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name, models=MODELS)
    _topics(kafka_bootstrap, settings)
    t = settings.kafka.topics
    data = tmp_path / "data.csv"
    valid_ids = _write_csv(data)
    connect = ["--bootstrap", kafka_bootstrap]

    with running_worker(settings):
        # the acceptance command, plus where the test's broker and topics are
        sent = _cli("produce", str(data), "--label-column", "y", *connect, "--topic", t.events)
        stderr = sent.stderr.decode()
        assert sent.returncode == 1, f"invalid rows give exit status 1: {stderr}"
        for line, reason in BAD_LINES.items():
            messages = [m for m in stderr.splitlines() if f"data.csv, line {line}:" in m]
            assert len(messages) == 1 and reason in messages[0] and "row skipped" in messages[0], stderr
        assert f"sent {len(valid_ids)} events to {t.events}, {len(BAD_LINES)} invalid rows skipped" in stderr

        tailed = _cli("tail", "predictions", "--from-beginning", "--json", "--limit", str(len(valid_ids)),
                      "--timeout", "90", *connect, "--topic", t.predictions)
        assert tailed.returncode == 0, tailed.stderr.decode()
        predictions = [Prediction.model_validate_json(line) for line in tailed.stdout.splitlines()]
        assert sorted(p.id for p in predictions) == sorted(valid_ids), "every valid row, nothing else lost"
        assert {p.model for p in predictions} == {"logreg"}, "the champion's predictions"

        table = _cli("tail", "predictions", "--from-beginning", "--limit", "5", "--timeout", "30", *connect,
                     "--topic", t.predictions)
        lines = table.stdout.decode().splitlines()
        assert table.returncode == 0 and lines[0].split()[:4] == ["TIME", "MODEL", "KEY", "ID"], table.stdout
        assert len(lines) == 6 and all("logreg" in line and "row-" in line for line in lines[1:]), lines

        shadow = _cli("tail", "shadow", "--from-beginning", "--json", "--model", "nb", "--key", "row-10",
                      "--limit", "1", "--timeout", "30", *connect, "--topic", t.shadow_predictions)
        (only,) = [Prediction.model_validate_json(line) for line in shadow.stdout.splitlines()]
        assert (only.id, only.model) == ("row-10", "nb")

        # from the end: a tail started now sees only what is produced after it, here from standard input
        follower = _tail("predictions", "--json", "--limit", "3", "--timeout", "60", *connect,
                         "--topic", t.predictions)
        assert follower.stderr is not None
        ready = follower.stderr.readline().decode()
        assert "from the end" in ready, ready
        more = b"".join(orjson.dumps({"id": f"late-{i}", "x1": 0.5, "x2": -0.1, "color": "red", "y": True}) + b"\n"
                        for i in range(3))
        assert _cli("produce", "-", *connect, "--topic", t.events, "--label-column", "y", stdin=more).returncode == 0
        out, err = follower.communicate(timeout=90)
        assert follower.returncode == 0, err.decode()
        assert sorted(orjson.loads(line)["id"] for line in out.splitlines()) == ["late-0", "late-1", "late-2"]

        # dead letters, with their reason headers
        produce(kafka_bootstrap, t.events, [(b"k-bad", b"{not json")])
        letters = _cli("tail", "dead-letters", "--from-beginning", "--json", "--limit", "1", "--timeout", "60",
                       *connect, "--topic", t.dead_letters)
        assert letters.returncode == 0, letters.stderr.decode()
        letter = DeadLetter.model_validate_json(letters.stdout.splitlines()[0])
        assert (letter.error_code, letter.key, letter.value, letter.source_topic) == \
            ("invalid_json", "k-bad", "{not json", t.events)


def test_labels_to_the_labels_topic_are_joined(
    kafka_bootstrap: str, redis_url: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry

    from tests.integration.helpers import sample_value

    settings = make_settings(kafka_bootstrap, unique_name, redis_url=redis_url, models=MODELS[:1])
    _topics(kafka_bootstrap, settings)
    t = settings.kafka.topics
    data = tmp_path / "events.jsonl"
    data.write_text("".join(
        orjson.dumps({"order": f"o-{i}", "customer": f"c-{i % 7}", "features": {"amount": i % 13},
                      "paid": i % 2 == 0}).decode() + "\n" for i in range(100)), encoding="utf-8")
    registry = CollectorRegistry()
    with running_worker(settings, registry):
        # servers and topics from a worker's settings file
        config = tmp_path / "worker.yaml"
        config.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": kafka_bootstrap,
                                                    "topics": settings.kafka.topics.model_dump()}}))
        sent = _cli("produce", str(data), "--id-column", "order", "--key-column", "customer",
                    "--label-column", "paid", "--labels", "topic", "--config", str(config))
        assert sent.returncode == 0, sent.stderr.decode()
        assert f"sent 100 events to {t.events} and 100 labels to {t.labels}" in sent.stderr.decode()
        wait_for(lambda: sample_value(registry, "streamlearn_labels_total", {"outcome": "joined"}) == 100, 90,
                 "100 labels joined (keyed like their events, so none misrouted)")
    assert not sample_value(registry, "streamlearn_labels_total", {"outcome": "misrouted"})


def test_tail_shows_only_committed_predictions(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    from kafka import KafkaProducer

    topic = unique_name("predictions")
    ensure_topics(kafka_bootstrap, {topic: 1})
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique_name("tx"), acks="all")

    def prediction(event_id: str) -> bytes:
        return orjson.dumps({"id": event_id, "key": None, "model": "m", "model_version": "v.1", "prediction": 1,
                             "proba": None, "score": None, "ts": 1.0, "latency_ms": 1.0})

    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, key=b"aborted", value=prediction("aborted"))
        producer.flush()
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(topic, key=b"committed", value=prediction("committed"))
        producer.commit_transaction()
    finally:
        producer.close()
    tailed = _cli("tail", "predictions", "--from-beginning", "--json", "--timeout", "8", "--bootstrap",
                  kafka_bootstrap, "--topic", topic)
    assert tailed.returncode == 0, tailed.stderr.decode()
    assert [orjson.loads(line)["id"] for line in tailed.stdout.splitlines()] == ["committed"]
