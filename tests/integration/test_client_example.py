"""The Python client's example (examples/produce_and_read.py) runs against a real broker and worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.kafka.admin import ensure_topics
from tests.integration.helpers import make_settings, running_worker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_sends_events_and_reads_every_prediction(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.predictions: 1, t.shadow_predictions: 1, t.dead_letters: 1})
    with running_worker(settings):
        done = subprocess.run(
            [sys.executable, "examples/produce_and_read.py", "--bootstrap", kafka_bootstrap, "--events-topic",
             t.events, "--predictions-topic", t.predictions, "--n", "400", "--timeout", "90"],
            capture_output=True, text=True, timeout=180, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "refused before sending (non_finite)" in done.stdout
    assert "400 of 400 predictions read" in done.stdout
    halves = [float(x) for x in re.findall(r"half: ([\d.]+)% right", done.stdout)]
    assert len(halves) == 2 and halves[1] > 80.0, f"the model learns the threshold: {done.stdout}"
