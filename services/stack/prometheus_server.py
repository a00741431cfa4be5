"""Prometheus on loopback, scraping targets listed in a file the stack rewrites at run time."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Any

from services.stack.process import DEPLOY_DIR, LOOPBACK, ManagedServer, StackError, port_accepts, write_atomically
from services.stack.tools import require_executable

PROMETHEUS_DEPLOY_DIR = DEPLOY_DIR / "prometheus"
CONFIG_TEMPLATE = PROMETHEUS_DEPLOY_DIR / "prometheus-local.yml.tmpl"
ALERT_RULES = PROMETHEUS_DEPLOY_DIR / "alerts.yml"
SCRAPE_JOB = "streamlearn"
_INSTALL_FIX = "install it with `apt-get install -y prometheus`"


def _duration(seconds: float) -> str:
    milliseconds = round(seconds * 1000)
    if milliseconds <= 0:
        raise ValueError(f"an interval must be positive, got {seconds} s")
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


class PrometheusServer(ManagedServer):
    """Prometheus with one scrape job, ``streamlearn``, fed by ``set_scrape_targets``.

    ``rule_files`` defaults to ``deploy/prometheus/alerts.yml`` when that file exists.
    """

    name = "prometheus"

    def __init__(
        self,
        state_dir: Path | str,
        *,
        port: int = 9090,
        scrape_interval_s: float = 5.0,
        rule_files: Sequence[Path] | None = None,
        retention_size: str = "1GB",
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 30.0,
        die_with_parent: bool = False,
    ) -> None:
        super().__init__(
            state_dir, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s, die_with_parent=die_with_parent
        )
        self.port = port
        self.scrape_interval_s = scrape_interval_s
        if rule_files is None:
            rule_files = [ALERT_RULES] if ALERT_RULES.is_file() else []
        self.rule_files = [Path(path).resolve() for path in rule_files]
        self.retention_size = retention_size

    @property
    def address(self) -> str:
        return self.url

    @property
    def url(self) -> str:
        """The base URL of the web UI and HTTP API."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.home / "prometheus.yml"

    @property
    def targets_file(self) -> Path:
        """The file_sd JSON file listing the scrape targets."""
        return self.home / "targets.json"

    def ports(self) -> dict[str, int]:
        return {"prometheus": self.port}

    def set_scrape_targets(self, targets: Sequence[str], labels: dict[str, str] | None = None) -> None:
        """Scrape these ``host:port`` targets (``/metrics``) from now on; Prometheus notices the file change."""
        self.home.mkdir(parents=True, exist_ok=True)
        groups = [{"targets": list(targets), "labels": dict(labels or {})}] if targets else []
        write_atomically(self.targets_file, json.dumps(groups, indent=1))

    def scrape_targets(self) -> list[str]:
        """The targets currently in the file."""
        try:
            groups = json.loads(self.targets_file.read_text())
        except (OSError, ValueError):
            return []
        return [target for group in groups for target in group["targets"]]

    def query(self, expression: str, timeout_s: float = 10.0, *, at: float | None = None) -> list[dict[str, Any]]:
        """Evaluate an instant PromQL query (now, or at Unix time ``at``); the ``result`` list of the API answer."""
        params = {"query": expression} if at is None else {"query": expression, "time": f"{at:.3f}"}
        return self._api("query", params, timeout_s)

    def query_range(self, expression: str, start: float, end: float, step_s: float,
                    timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Evaluate a PromQL range query (Unix-time ``start``/``end``); the ``result`` list (each has ``values``)."""
        params = {"query": expression, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
        return self._api("query_range", params, timeout_s)

    def alerts(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """The active (pending or firing) alerts, as ``/api/v1/alerts`` lists them."""
        url = f"{self.url}/api/v1/alerts"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            alerts: list[dict[str, Any]] = json.load(response)["data"]["alerts"]
        return alerts

    def _api(self, endpoint: str, params: dict[str, str], timeout_s: float) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            raise StackError(f"prometheus rejected the {endpoint} {params['query']!r}: {exc.read().decode()}") from exc
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def _command(self) -> list[str]:
        prometheus = require_executable("prometheus", _INSTALL_FIX)
        promtool = require_executable("promtool", _INSTALL_FIX)
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        if not self.targets_file.exists():
            self.set_scrape_targets([])
        template = Template(CONFIG_TEMPLATE.read_text())
        self.config_file.write_text(template.substitute(
            interval=_duration(self.scrape_interval_s),
            rule_files=json.dumps([str(path) for path in self.rule_files]),
            targets_files=json.dumps([str(self.targets_file)]),
        ))
        check = subprocess.run([promtool, "check", "config", str(self.config_file)],
                               capture_output=True, text=True, timeout=60, check=False)
        if check.returncode != 0:
            raise StackError(
                f"prometheus: `promtool check config {self.config_file}` failed; fix the config or the rule "
                f"files it names ({', '.join(map(str, self.rule_files)) or 'none'}):\n{check.stdout}{check.stderr}"
            )
        return [
            prometheus, f"--config.file={self.config_file}", f"--storage.tsdb.path={self.home / 'data'}",
            f"--storage.tsdb.retention.size={self.retention_size}", f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-lifecycle",
        ]

    def _probe(self) -> bool:
        if not port_accepts(self.port):
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False
