"""The worker's HTTP endpoint: /metrics for Prometheus, /healthz (alive) and /ready (assigned and serving)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class EndpointServer:
    """Serves the registry and two probes on a background thread."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry,
        healthy: Callable[[], bool], ready: Callable[[], tuple[bool, str]],
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    with outer._scraped:
                        outer._scrapes_started += 1
                        number = outer._scrapes_started
                    self._reply(200, generate_latest(outer._registry), CONTENT_TYPE_LATEST)
                    with outer._scraped:
                        outer._last_scrape_done = max(outer._last_scrape_done, number)
                        outer._scraped.notify_all()
                elif path == "/healthz":
                    ok = outer._healthy()
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"stalled\n", "text/plain")
                elif path == "/ready":
                    ok, why = outer._ready()
                    self._reply(200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._registry = registry
        #: /metrics requests begun, and the number of the latest one answered (for :meth:`wait_for_scrape`)
        self._scraped = threading.Condition()
        self._scrapes_started = 0
        self._last_scrape_done = 0
        self._healthy = healthy
        self._ready = ready
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful when 0 was asked for)."""
        return int(self._server.server_address[1])

    def wait_for_scrape(self, timeout_s: float) -> bool:
        """Wait until a /metrics scrape that began after this call has been answered (at most ``timeout_s``).

        ``False`` on time-out, and at once when nothing ever scraped this endpoint.
        """
        with self._scraped:
            if self._scrapes_started == 0 or timeout_s <= 0:
                return False
            target = self._scrapes_started + 1
            return self._scraped.wait_for(lambda: self._last_scrape_done >= target, timeout_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
