"""The endpoint's final-scrape wait: a worker that stops keeps /metrics up until a scrape after its last values."""

from __future__ import annotations

import threading
import time
import urllib.request

from prometheus_client import CollectorRegistry

from services.worker.http import EndpointServer


def _scrape(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        response.read()


def test_waits_for_a_scrape_that_begins_after_the_call() -> None:
    server = EndpointServer("127.0.0.1", 0, CollectorRegistry(), lambda: True, lambda: (True, "ready"))
    server.start()
    try:
        assert server.wait_for_scrape(5.0) is False, "never scraped: nothing to wait for"
        _scrape(server.port)
        started = time.monotonic()
        assert server.wait_for_scrape(0.3) is False, "no scrape came: times out"
        assert time.monotonic() - started >= 0.3
        timer = threading.Timer(0.2, _scrape, (server.port,))
        timer.start()
        assert server.wait_for_scrape(5.0) is True
        timer.join()
    finally:
        server.stop()
