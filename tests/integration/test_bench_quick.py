"""``python -m bench --quick`` runs end to end on its own Kafka and Redis and writes a report (a smoke run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_writes_a_report(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "throughput", "--models", "logreg",
         "--events-logreg", "500", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = output.read_text()
    assert "| (a) bare model loop, no Kafka |" in report
    assert "| (c) streamlearn worker, exactly-once |" in report
    assert "| (c) streamlearn worker, exactly-once, `kafka.client: confluent` |" in report
    assert "4. logreg: worker (exactly-once, everything on; kafka-python) vs plain loop (b)" in report
    assert "4. logreg: worker (exactly-once, everything on; confluent, the default client) vs plain loop (b)" in report
