"""The dashboard's HTTP server: the page, its static files, the query catalogue, and a Prometheus proxy.

The browser talks only to this origin: ``/api/v1/query`` and ``/api/v1/query_range`` are forwarded, with their
query string unchanged, to the configured Prometheus; nothing else of Prometheus is reachable through it.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from services.dashboard.queries import DashboardSpec, build_spec

log = logging.getLogger("streamlearn.dashboard")

#: the Prometheus API endpoints the page may call
PROXIED = frozenset({"/api/v1/query", "/api/v1/query_range"})
#: an answer from Prometheus larger than this is refused (a runaway query must not fill the server's memory)
MAX_PROXY_BYTES = 8 * 1024 * 1024
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}


def _static(name: str) -> bytes | None:
    """A file of the package's ``static/`` folder (``vendor/...`` included), or None."""
    if not name or ".." in name.split("/") or name.startswith("/"):
        return None
    node = resources.files("services.dashboard").joinpath("static")
    for part in name.split("/"):
        node = node.joinpath(part)
    return node.read_bytes() if node.is_file() else None


class DashboardServer:
    """Serves the dashboard on ``host:port`` (port 0: any free port) on a background thread."""

    def __init__(
        self, prometheus_url: str, *, host: str = "127.0.0.1", port: int = 8050,
        spec: DashboardSpec | None = None, timeout_s: float = 15.0,
    ) -> None:
        self.prometheus_url = prometheus_url.rstrip("/")
        self.spec = spec if spec is not None else build_spec()
        self.timeout_s = timeout_s
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "streamlearn-dashboard"

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path in ("/", "/index.html"):
                    self._static("index.html")
                elif path.startswith("/static/"):
                    self._static(path.removeprefix("/static/"))
                elif path == "/api/queries":
                    body = {**outer.spec.as_json(), "prometheus": outer.prometheus_url}
                    self._reply(200, json.dumps(body).encode(), "application/json")
                elif path in PROXIED:
                    self._reply(*outer._forward(path, query))
                elif path == "/favicon.ico":
                    self._static("favicon.svg")
                elif path == "/healthz":
                    self._reply(200, b"ok\n", "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _static(self, name: str) -> None:
                body = _static(name)
                if body is None:
                    self._reply(404, b"not found\n", "text/plain")
                    return
                suffix = name[name.rfind("."):]
                kind = STATIC_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
                self._reply(200, body, kind)

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the browser went away (a reload, a closed tab)
                    log.debug("client closed the connection before the answer to %s", self.path)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.address_string(), *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="dashboard-http", daemon=True)

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (useful when 0 was asked for)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Where a browser opens the page."""
        return f"http://{self.host}:{self.port}/"

    def start(self) -> DashboardServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def serve_forever(self) -> None:
        """Serve on the calling thread until ``stop()`` (from another thread) or KeyboardInterrupt."""
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _forward(self, path: str, query: str) -> tuple[int, bytes, str]:
        """Prometheus's answer to ``path?query``: (status, body, content type); a JSON error when unreachable."""
        url = f"{self.prometheus_url}{path}?{query}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                body = response.read(MAX_PROXY_BYTES + 1)
                status = int(response.status)
                kind = response.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as exc:  # Prometheus's own error answer (a bad query): pass it on
            return exc.code, exc.read(MAX_PROXY_BYTES), exc.headers.get("Content-Type", "application/json")
        except OSError as exc:
            return 502, _error(f"Prometheus at {self.prometheus_url} is unreachable: {exc}"), "application/json"
        if len(body) > MAX_PROXY_BYTES:
            return 502, _error(f"the answer exceeds {MAX_PROXY_BYTES} bytes; narrow the time range"), \
                "application/json"
        return status, body, kind


def _error(message: str) -> bytes:
    answer: dict[str, Any] = {"status": "error", "errorType": "unavailable", "error": message}
    return json.dumps(answer).encode()
