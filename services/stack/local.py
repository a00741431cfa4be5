"""The local stack: Kafka, Redis, Prometheus and the dashboard started together; the ``streamlearn stack`` actions."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from services.stack.dashboard_process import DashboardProcess
from services.stack.kafka_server import KafkaServer
from services.stack.process import REPO_ROOT, ManagedServer, ServerStatus, StackError, start_all
from services.stack.prometheus_server import PrometheusServer
from services.stack.redis_server import RedisServer
from services.stack.tools import ensure_installed
from shared.signing_keys import KEY_FILE_NAME, key_in

DEFAULT_STATE_DIR = REPO_ROOT / ".streamlearn" / "stack"


@dataclass(frozen=True)
class StackAddresses:
    """Where clients reach the local servers."""

    kafka_bootstrap: str
    redis_url: str
    prometheus_url: str
    dashboard_url: str = ""

    def as_env(self) -> dict[str, str]:
        """The settings variables that point a worker at these servers."""
        return {"STREAMLEARN_KAFKA__BOOTSTRAP_SERVERS": self.kafka_bootstrap, "STREAMLEARN_REDIS__URL": self.redis_url}


class LocalStack:
    """Kafka, Redis and Prometheus as background processes on loopback, with data under ``state_dir``.

    ``up()`` starts them (or keeps those already running from this state dir); ``down()`` stops only
    processes whose pid files this state dir holds. ``kafka``, ``redis`` and ``prometheus`` give control
    of each server (``stop()``, ``start()``, ``kill()``, ``set_scrape_targets``).
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        kafka_port: int = 9092,
        controller_port: int = 9093,
        redis_port: int = 6379,
        prometheus_port: int = 9090,
        scrape_interval_s: float = 5.0,
        dashboard_port: int = 8050,
        kafka_heap: str = "1G",
        install_missing: bool = True,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else DEFAULT_STATE_DIR
        self.install_missing = install_missing
        self.kafka = KafkaServer(self.state_dir, port=kafka_port, controller_port=controller_port, heap=kafka_heap)
        self.redis = RedisServer(self.state_dir, port=redis_port)
        self.prometheus = PrometheusServer(self.state_dir, port=prometheus_port, scrape_interval_s=scrape_interval_s)
        self.dashboard = DashboardProcess(self.state_dir, port=dashboard_port, prometheus_url=self.prometheus.url)

    @property
    def servers(self) -> tuple[ManagedServer, ...]:
        """In start order: Kafka first, as it takes longest."""
        return (self.kafka, self.redis, self.prometheus, self.dashboard)

    @property
    def addresses(self) -> StackAddresses:
        return StackAddresses(self.kafka.bootstrap, self.redis.url, self.prometheus.url, self.dashboard.url)

    def up(self, *, quiet: bool = False) -> StackAddresses:
        """Start all four and wait until each answers; on failure nothing started here is left running."""
        if self.install_missing:
            ensure_installed()
        start_all(self.servers)
        key_in(self.state_dir)  # a random checkpoint key for the workers of this stack (docs/security.md)
        if not quiet:
            self._print_addresses(sys.stdout)
        return self.addresses

    def status(self) -> list[ServerStatus]:
        """Each server: running or stopped, pid, address."""
        return [server.status() for server in self.servers]

    def down(self) -> list[str]:
        """Stop the servers this state dir started (in parallel); safe to call again. Returns the names stopped."""
        with ThreadPoolExecutor(max_workers=len(self.servers)) as pool:
            stopped = list(pool.map(lambda server: server.stop(), reversed(self.servers)))
        return [server.name for server, was in zip(reversed(self.servers), stopped, strict=True) if was]

    def __enter__(self) -> LocalStack:
        self.up(quiet=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def _print_addresses(self, out: TextIO) -> None:
        addresses = self.addresses
        print(f"kafka       {addresses.kafka_bootstrap}", file=out)
        print(f"redis       {addresses.redis_url}", file=out)
        print(f"prometheus  {addresses.prometheus_url}", file=out)
        print(f"dashboard   {addresses.dashboard_url}", file=out)
        print(f"state dir   {self.state_dir}", file=out)
        print(f"hmac key    export STREAMLEARN_HMAC_KEY=\"$(cat {self.state_dir / KEY_FILE_NAME})\"", file=out,
              flush=True)


def run_stack_command(
    action: str,
    *,
    state_dir: Path | str | None = None,
    kafka_port: int | None = None,
    controller_port: int | None = None,
    redis_port: int | None = None,
    prometheus_port: int | None = None,
    scrape_interval_s: float | None = None,
    dashboard_port: int | None = None,
) -> int:
    """``streamlearn stack up|down|status``. Returns the exit code.

    up: 0 when all four are ready (they keep running after the command exits), 1 on a StackError.
    down: 0, also when nothing ran. status: 0 when all four run, 3 when any is stopped.
    Ports matter for ``up`` only; ``down`` and ``status`` use the pid files in ``state_dir``.
    """
    options: dict[str, int | float] = {
        name: value for name, value in {
            "kafka_port": kafka_port, "controller_port": controller_port, "redis_port": redis_port,
            "prometheus_port": prometheus_port, "scrape_interval_s": scrape_interval_s,
            "dashboard_port": dashboard_port,
        }.items() if value is not None
    }
    stack = LocalStack(state_dir, **options)  # type: ignore[arg-type]
    try:
        if action == "up":
            stack.up()
            print("running in the background; `streamlearn stack down` stops them")
            return 0
        if action == "down":
            stopped = stack.down()
            print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing was running from {stack.state_dir}")
            return 0
        if action == "status":
            statuses = stack.status()
            for status in statuses:
                print(status.line())
            return 0 if all(status.running for status in statuses) else 3
    except StackError as exc:
        print(f"streamlearn stack {action}: {exc}", file=sys.stderr)
        return 1
    raise ValueError(f"unknown stack action {action!r}; expected up, down or status")
