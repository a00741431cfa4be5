"""The live dashboard as a background process of the local stack (``streamlearn dashboard`` in its own session)."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from services.stack.process import LOOPBACK, ManagedServer, port_accepts


class DashboardProcess(ManagedServer):
    """``streamlearn dashboard`` on loopback, reading the stack's Prometheus; stopped by ``stack down``."""

    name = "dashboard"

    def __init__(
        self, state_dir: Path | str, *, prometheus_url: str, port: int = 8050, start_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0, die_with_parent: bool = False,
    ) -> None:
        super().__init__(
            state_dir, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s, die_with_parent=die_with_parent
        )
        self.port = port
        self.prometheus_url = prometheus_url

    @property
    def address(self) -> str:
        return self.url

    @property
    def url(self) -> str:
        """Where a browser opens the page."""
        return f"http://{LOOPBACK}:{self.port}/"

    def ports(self) -> dict[str, int]:
        return {"dashboard": self.port}

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "services.cli", "dashboard", "--host", LOOPBACK, "--port", str(self.port),
                "--prometheus", self.prometheus_url]

    def _probe(self) -> bool:
        if not port_accepts(self.port):
            return False
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False
