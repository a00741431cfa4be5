"""Clear start-up errors: the real ``streamlearn worker`` command, pointed at a closed loopback port, says which
address failed and what to check, in one line, and exits non-zero within its connect timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from services.stack import free_ports
from shared.startup import STARTUP_EXIT_CODE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT_S = 5.0
REDIS_PASSWORD = "pw-must-not-leak-7f3a"


def _run_worker(tmp_path: Path, kafka: str, redis_url: str) -> tuple[subprocess.CompletedProcess[str], float]:
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": kafka}, "metrics": {"enabled": False},
        "worker": {"connect_timeout_s": CONNECT_TIMEOUT_S},
    }))
    env = {**os.environ, "STREAMLEARN_REDIS__URL": redis_url}  # the session's STREAMLEARN_HMAC_KEY is inherited
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "services.cli", "worker", "--config", str(config)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - started


def _the_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("streamlearn worker:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_an_unreachable_broker_is_named_in_one_line(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    done, seconds = _run_worker(tmp_path, f"127.0.0.1:{port}", "redis://127.0.0.1:6379/0")
    line = _the_line(done.stderr)
    print(f"\n{seconds:.1f} s: {line}")
    assert done.returncode == STARTUP_EXIT_CODE
    assert f"127.0.0.1:{port}" in line and "kafka.bootstrap_servers" in line and "Kafka" in line
    assert seconds < CONNECT_TIMEOUT_S + 15  # the interpreter's start included; before: a 30 s wait and a traceback


def test_an_unreachable_redis_is_named_without_its_password(tmp_path: Path, kafka_bootstrap: str) -> None:
    (port,) = free_ports(1)
    done, seconds = _run_worker(tmp_path, kafka_bootstrap, f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0")
    line = _the_line(done.stderr)
    print(f"\n{seconds:.1f} s: {line}")
    assert done.returncode == STARTUP_EXIT_CODE
    assert f"redis://127.0.0.1:{port}/0" in line and "redis.url" in line
    assert REDIS_PASSWORD not in done.stderr + done.stdout
    assert seconds < CONNECT_TIMEOUT_S + 15
