"""``streamlearn demo``: the local stack, one worker, a drifting stream, and live accuracy in the terminal."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO_ROOT / "deploy" / "config" / "demo.yaml"


def free_port(preferred: int) -> int:
    """``preferred`` when it is free on loopback, else any free port."""
    for candidate in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


@dataclass
class LiveView:
    """What the terminal shows, read from the worker's /metrics."""

    valid: float = 0.0
    invalid: float = 0.0
    rolling_accuracy: dict[str, float] = field(default_factory=dict)
    champion: str = "?"
    drifts: float = 0.0

    @classmethod
    def scrape(cls, url: str) -> LiveView:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
        view = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "streamlearn_events_total":
                    if labels.get("outcome") == "valid":
                        view.valid = sample.value
                    elif labels.get("outcome") == "invalid":
                        view.invalid = sample.value
                elif (sample.name == "streamlearn_model_metric" and labels.get("metric") == "accuracy"
                      and labels.get("window") == "rolling"):
                    view.rolling_accuracy[labels["model"]] = sample.value
                elif sample.name == "streamlearn_champion" and sample.value == 1:
                    view.champion = labels["model"]
                elif sample.name == "streamlearn_drift_detections_total":
                    view.drifts += sample.value
        return view


def run_demo(*, seconds: float = 60.0, rate: float = 300.0) -> int:
    """Start everything, replay ``agrawal-drift`` for ``seconds`` at ``rate``, show progress, stop it all."""
    from services.replayer import replay
    from services.stack import LocalStack, StackError
    from shared.kafka.admin import ensure_topics
    from shared.signing_keys import key_in

    state_dir = REPO_ROOT / ".streamlearn" / "demo"
    stack = LocalStack(
        state_dir=state_dir,
        kafka_port=free_port(9092), controller_port=free_port(9093),
        redis_port=free_port(6379), prometheus_port=free_port(9090),
        scrape_interval_s=2.0, dashboard_port=free_port(8050),
    )
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker: subprocess.Popen[bytes] | None = None
    replayer: threading.Thread | None = None
    try:
        # every demo starts from empty topics and an empty Redis: the replayer sends the same event ids each
        # time, and the previous run's dedup window and committed offsets would swallow all of them
        stack.down()  # servers a killed demo left running
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        print("starting Kafka, Redis and Prometheus (the first start downloads the Kafka jars) ...", flush=True)
        try:
            addresses = stack.up()
        except StackError as exc:
            print(f"streamlearn demo: {exc}", file=sys.stderr)
            return 1
        ensure_topics(addresses.kafka_bootstrap, {
            "events": 1, "labels": 1, "predictions": 1, "predictions.shadow": 1, "events.dlq": 1,
        })
        metrics_port = free_port(8000)
        env = {
            **os.environ,
            "STREAMLEARN_KAFKA__BOOTSTRAP_SERVERS": addresses.kafka_bootstrap,
            "STREAMLEARN_REDIS__URL": addresses.redis_url,
            "STREAMLEARN_METRICS__PORT": str(metrics_port),
            # the caller's key if set, else one generated into the demo's state dir (docs/security.md)
            "STREAMLEARN_HMAC_KEY": os.environ.get("STREAMLEARN_HMAC_KEY") or key_in(state_dir),
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--config", str(DEMO_CONFIG)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(state_dir / "worker.log", "wb"),  # noqa: SIM115
        )
        stack.prometheus.set_scrape_targets([f"127.0.0.1:{metrics_port}"])
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        total = int(seconds * rate)
        drift_at = total // 2
        print(f"live dashboard:    {addresses.dashboard_url}?range=2m  (open it in a browser)")
        print(f"worker /metrics:   {metrics_url}")
        print(f"Prometheus:        {addresses.prometheus_url}  (try: streamlearn_model_metric)")
        print(f"worker log:        {state_dir / 'worker.log'}")
        print(f"replaying {total} Agrawal events at {rate:.0f}/s; the concept changes at event {drift_at}. "
              "Ctrl-C stops.\n", flush=True)
        replayer = threading.Thread(
            target=replay, name="replayer", daemon=True,
            kwargs={"source": "agrawal-drift", "bootstrap_servers": addresses.kafka_bootstrap, "rate": rate,
                    "limit": total, "drift_at": drift_at, "progress": False, "stop": stop},
        )
        replayer.start()
        started = time.monotonic()
        last_valid, last_time = 0.0, started
        while not stop.is_set() and time.monotonic() - started < seconds + 15:
            stop.wait(2.0)
            if worker.poll() is not None:
                print(f"\nthe worker exited with code {worker.returncode}; see {state_dir / 'worker.log'}")
                return 1
            try:
                view = LiveView.scrape(metrics_url)
            except OSError:
                continue
            now = time.monotonic()
            throughput = (view.valid - last_valid) / max(now - last_time, 1e-9)
            last_valid, last_time = view.valid, now
            accuracy = "  ".join(f"{m} {a:.3f}" for m, a in sorted(view.rolling_accuracy.items()))
            phase = "after drift " if view.valid > drift_at else "before drift"
            print(f"{now - started:5.0f}s  {view.valid:7.0f} events {throughput:6.0f}/s  [{phase}]  "
                  f"rolling accuracy: {accuracy or '-'}  champion: {view.champion}  drifts: {view.drifts:.0f}",
                  flush=True)
            if not replayer.is_alive() and view.valid >= total:
                break
        print("\nstopping ...", flush=True)
        if last_valid == 0:
            print(f"streamlearn demo: the worker processed no event; see {state_dir / 'worker.log'}", file=sys.stderr)
            return 1
        return 0
    finally:
        stop.set()
        if replayer is not None:
            replayer.join(timeout=15)
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        stack.down()
        signal.signal(signal.SIGINT, previous)
        print("demo stopped: worker and servers are down.")
