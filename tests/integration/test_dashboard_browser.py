"""Issue 14, acceptance 1 and 2: the live dashboard in a real browser shows what Prometheus answers.

The session's Kafka, Redis and Prometheus, a worker with two models and a replay of a drifting stream; the
dashboard server reads that Prometheus. Headless Chromium (Debian's, driven by Playwright; no browser is
downloaded) opens the page once, before the replay, and never reloads it. When the stream is processed the test
takes one snapshot of the page (a single JavaScript task, so all of it is one refresh of the page) and compares:

- every number shown: its raw value (``data-value``) equals, as a string, what Prometheus answers to the same
  expression evaluated at the same time (``data-time``) for the same label set, and the text shown is that value
  times the query's scale, rounded to its decimals (within half a unit of the last digit shown);
- every chart: the arrays uPlot draws equal, point for point, the values of a ``query_range`` with the same
  start, end and step (nothing dropped, nothing added);
- the drift marks: exactly the drift times Prometheus holds for that range, at least one, none before the drift
  point; and the plotted rolling accuracy falls after it.

Exact equality holds because the page evaluates every query at a time a second in the past (a scrape that began
before it has been stored by then) and Prometheus evaluates a range query step as the same instant query.
Finally a 1280x800 screenshot goes to ``.streamlearn/artifacts/dashboard.png`` (or ``$STREAMLEARN_ARTIFACTS``);
copy it over docs/dashboard.png to refresh the README's picture (a test run never changes a tracked file).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.dashboard import DashboardServer, Query, build_spec
from services.replayer import replay
from services.stack import PrometheusServer
from shared.kafka.admin import ensure_topics
from tests.integration.helpers import make_settings, produce, running_worker, sample_value, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = Path(os.environ.get("STREAMLEARN_ARTIFACTS", ROOT / ".streamlearn" / "artifacts")) / "dashboard.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
N_EVENTS = 6000
DRIFT_AT = 3000
RATE = 250  # events per second: 24 s of replay, two dozen scrapes on each side of the drift
ROLLING_WINDOW = 300
#: the page's rolling accuracy is the group's over this time window (from the counters), 1,250 events here
QUALITY_WINDOW_S = 5
#: events before the models are past their first mistakes: a steady window starts after this many
WARM_UP = 500
SEED = 1
RANGE = "2m"
#: records no worker can use, sent during the replay: the dead-letter panel has two reasons to show
BAD_RECORDS = [(None, b"{not json")] * 30 + [(None, b"\xff\xfe not utf-8")] * 10
#: the charts whose data must be on the page at the end (label joins are all zero: the labels are inline)
CHARTS_WITH_DATA = ("quality", "events", "latency", "lag", "dead_letters")
#: the page lists the newest detections only (MAX_DRIFTS_LISTED in app.js)
MAX_DRIFTS_LISTED = 20

SNAPSHOT_JS = """() => {
  const D = window.streamlearnDashboard;
  const attrs = (e) => Object.assign({text: e.textContent}, e.dataset);
  return {
    frames: D.frames,
    frame: {start: D.frame.start, end: D.frame.end, step: D.frame.step},
    numbers: [...document.querySelectorAll(".num[data-query]")].map(attrs),
    flags: [...document.querySelectorAll(".flag[data-query]")].map(attrs),
    drifts: [...document.querySelectorAll("#drift-list li.drift")].map(attrs),
    champion: document.querySelector('[data-tile="champion"] .value').textContent,
    plots: Object.fromEntries(Object.entries(D.plots).map(([id, u]) => [id, {
      keys: D.seriesKeys[id], data: u.data.map((a) => Array.from(a, (v) => (v === undefined ? null : v))),
    }])),
  };
}"""


def _labels(result: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in result["metric"].items() if k != "__name__"}


def _value(raw: str) -> float | None:
    value = float(raw)
    return None if math.isnan(value) or math.isinf(value) else value


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium page, 1280x800, in a fresh profile; closed after the test."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `python -m services.stack.install` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800}, timeout=60_000,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            context.close()


def test_the_page_shows_what_prometheus_answers_and_the_drift(
    kafka_bootstrap: str, redis_url: str, prometheus_server: PrometheusServer,
    unique_name: Callable[[str], str], chromium: Any,
) -> None:
    settings = make_settings(
        kafka_bootstrap, unique_name, redis_url=redis_url,
        models=[{"name": "logreg", "estimator": "river.linear_model.LogisticRegression"},
                {"name": "nb", "estimator": "river.naive_bayes.GaussianNB"}],
        metrics={"rolling_window": ROLLING_WINDOW}, champion={"min_labels": 300}, drift={"export_interval_s": 0.5},
    )
    t = settings.kafka.topics
    ensure_topics(kafka_bootstrap, {t.events: 1, t.labels: 1, t.predictions: 1, t.shadow_predictions: 1,
                                    t.dead_letters: 1})
    spec = build_spec(rate_window="10s", refresh_s=1.0, quality_window=f"{QUALITY_WINDOW_S}s")
    page = chromium
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    registry = CollectorRegistry()
    with running_worker(settings, registry) as worker, \
            DashboardServer(prometheus_server.url, port=0, spec=spec) as dashboard:
        assert worker.endpoint is not None
        instance = f"127.0.0.1:{worker.endpoint.port}"
        prometheus_server.set_scrape_targets([instance])
        wait_for(lambda: bool(prometheus_server.query(f'streamlearn_ready{{instance="{instance}"}} == 1')), 60,
                 "Prometheus to scrape the ready worker")

        page.goto(f"{dashboard.url}?range={RANGE}&theme=dark")
        page.wait_for_function("() => (window.streamlearnDashboard || {}).frames >= 1")
        loaded_frames = page.evaluate("() => window.streamlearnDashboard.frames")

        sender = threading.Thread(target=lambda: replay(
            "agrawal-drift", bootstrap_servers=kafka_bootstrap, topic=t.events, limit=N_EVENTS, rate=RATE,
            seed=SEED, drift_at=DRIFT_AT, progress=False))
        replay_started = time.time()
        sender.start()
        time.sleep(4)
        produce(kafka_bootstrap, t.events, BAD_RECORDS)
        sender.join(timeout=180)
        wait_for(lambda: sample_value(registry, "streamlearn_events_total", {"outcome": "valid"}) == N_EVENTS
                 and sample_value(registry, "streamlearn_events_total", {"outcome": "invalid"}) == len(BAD_RECORDS),
                 90, f"{N_EVENTS} events processed and {len(BAD_RECORDS)} dead-lettered")
        assert worker.drift_step.detections, "the worker detected no drift"
        done = time.time()
        wait_for(lambda: float(prometheus_server.query(
            f'streamlearn_events_total{{instance="{instance}",outcome="valid"}}')[0]["value"][1]) == N_EVENTS,
            30, "Prometheus to scrape the last count")
        # the time range the replay took (the range buttons' call), then a refresh evaluated after the last count
        # was scraped, with every chart drawn
        span = math.ceil(time.time() - replay_started) + 8
        page.evaluate("(seconds) => window.streamlearnDashboard.setRange(seconds)", span)
        page.wait_for_function(
            "([done, span, charts]) => { const D = window.streamlearnDashboard;"
            "  return D.frame && D.frame.end > done + 2 && D.frame.end - D.frame.start === span"
            "    && charts.every((id) => D.plots[id]); }",
            arg=[done, span, list(CHARTS_WITH_DATA)], timeout=60_000)
        snapshot = page.evaluate(SNAPSHOT_JS)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        # the light theme redraws every chart in its colours, without a reload
        page.click("#theme")
        page.wait_for_function(
            "(frames) => window.streamlearnDashboard.frames > frames && document.documentElement.dataset.theme"
            " === 'light' && Object.values(window.streamlearnDashboard.plots).every((u) => u._signature"
            ".startsWith('light'))", arg=snapshot["frames"], timeout=30_000)
    prometheus_server.set_scrape_targets([])

    assert not errors, f"JavaScript errors on the page: {errors}"
    assert snapshot["frames"] > loaded_frames + 5, "the page did not refresh itself while the stream ran"
    queries = {q.id: q for q in spec.queries()}
    _check_numbers(prometheus_server, queries, snapshot)
    _check_charts(prometheus_server, queries, snapshot)
    _check_drift_and_champion(prometheus_server, queries, snapshot)
    totals = [float(n["value"]) for n in snapshot["numbers"] if n["query"] == "dead_letters_total"]
    assert sum(totals) == len(BAD_RECORDS) and len(totals) == 2, totals
    assert SCREENSHOT.stat().st_size > 20_000


def _check_numbers(prometheus: PrometheusServer, queries: dict[str, Query], snapshot: dict[str, Any]) -> None:
    """Every number and yes/no shown is Prometheus's answer to its query at its evaluation time."""
    shown = {n["query"] for n in snapshot["numbers"]} | {f["query"] for f in snapshot["flags"]}
    for needed in ("throughput", "processed", "champion_metric", "drift_count", "p95", "total_lag", "rolling",
                   "cumulative", "baselines", "events_rate", "latency_p95", "lag", "feature_psi", "ready",
                   "kafka_up", "redis_up", "checkpoint_age", "scraped", "dead_letters_total"):
        assert needed in shown, f"the page shows no number of {needed!r}"
    answers: dict[tuple[str, str], list[dict[str, Any]]] = {}
    shown_items = [(item, False) for item in snapshot["numbers"]] + [(item, True) for item in snapshot["flags"]]
    for item, is_flag in shown_items:
        query = queries[item["query"]]
        key = (query.expr, item["time"])
        if key not in answers:
            answers[key] = prometheus.query(query.expr, at=float(item["time"]))
        labels = json.loads(item["labels"])
        matching = [r for r in answers[key] if _labels(r) == labels]
        assert len(matching) == 1, f"{query.id} {labels}: Prometheus has {answers[key]}"
        assert matching[0]["value"][1] == item["value"], (query.id, labels, matching[0]["value"], item)
        value = _value(item["value"])
        if is_flag:
            assert item["text"] == ("yes" if value == 1.0 else "no"), item
        elif value is None:
            assert item["text"] == "\u2013", item  # an en dash: no value
        else:
            decimals = int(item["decimals"])
            number = float(item["text"].replace(",", ""))
            assert abs(number - value * float(item["scale"])) <= 0.5 * 10 ** -decimals + 1e-9, (item, value)


def _range(prometheus: PrometheusServer, query: Query, frame: dict[str, Any]) -> list[dict[str, Any]]:
    return prometheus.query_range(query.expr, frame["start"], frame["end"], frame["step"])


def _check_charts(prometheus: PrometheusServer, queries: dict[str, Query], snapshot: dict[str, Any]) -> None:
    """Every chart draws exactly the points of a range query with the page's start, end and step."""
    frame = snapshot["frame"]
    steps = round((frame["end"] - frame["start"]) / frame["step"])
    xs = [frame["start"] + i * frame["step"] for i in range(steps + 1)]
    ranges: dict[str, list[dict[str, Any]]] = {}
    for chart in CHARTS_WITH_DATA:
        assert chart in snapshot["plots"], f"no {chart} chart"
    for chart, plot in snapshot["plots"].items():
        assert plot["data"][0] == xs, f"{chart}: x axis"
        drawn: dict[str, int] = {}
        for index, key in enumerate(plot["keys"], start=1):
            query = queries[key["query"]]
            if query.id not in ranges:
                ranges[query.id] = _range(prometheus, query, frame)
            matching = [r for r in ranges[query.id] if _labels(r) == key["labels"]]
            assert len(matching) == 1, (chart, key)
            expected: list[float | None] = [None] * len(xs)
            for ts, raw in matching[0]["values"]:
                value = _value(raw)
                expected[round((float(ts) - frame["start"]) / frame["step"])] = \
                    None if value is None else value * query.scale
            assert plot["data"][index] == expected, f"{chart}: {key} differs from the range query"
            drawn[query.id] = drawn.get(query.id, 0) + 1
        for query_id, count in drawn.items():
            assert count == len(ranges[query_id]), f"{chart}: {query_id} draws {count} of {len(ranges[query_id])}"


def _check_drift_and_champion(
    prometheus: PrometheusServer, queries: dict[str, Query], snapshot: dict[str, Any]
) -> None:
    """Drift marks where Prometheus has them, none before the drift point, accuracy lower after it."""
    frame = snapshot["frame"]
    expected_drifts = {(_labels(r)["model"], raw) for r in _range(prometheus, queries["drift_times"], frame)
                       for _, raw in r["values"] if (_value(raw) or 0) > 0}
    marked = {(d["model"], d["time"]) for d in snapshot["drifts"]}
    assert marked, "no drift mark on the page"
    newest = sorted(expected_drifts, key=lambda drift: float(drift[1]), reverse=True)[:MAX_DRIFTS_LISTED]
    assert marked == set(newest)
    counts = _range(prometheus, queries["processed"], frame)
    events_at = {float(ts): float(raw) for ts, raw in counts[0]["values"]}
    last_before = max(ts for ts, n in events_at.items() if n < DRIFT_AT)
    # a count at a step is the last scrape's, up to a scrape interval old: a drift detected just after the drift
    # point may carry a time up to that much before the step that first shows the count past it
    assert all(float(raw) > last_before - prometheus.scrape_interval_s for _, raw in marked), (marked, last_before)

    quality = snapshot["plots"]["quality"]
    rolling_logreg = next(i for i, k in enumerate(quality["keys"], start=1)
                          if k["query"] == "rolling" and k["labels"].get("model") == "logreg")
    accuracy = dict(zip(quality["data"][0], quality["data"][rolling_logreg], strict=True))
    # the events counted at the start of each point's window (a time window of whole steps: step is 1 s here)
    assert QUALITY_WINDOW_S % frame["step"] == 0, frame
    window_start = {ts: events_at.get(ts - QUALITY_WINDOW_S, -1) for ts in accuracy}
    steady = [a for ts, a in accuracy.items()
              if a is not None and window_start[ts] >= WARM_UP and events_at.get(ts, DRIFT_AT) < DRIFT_AT]
    drifted = [a for ts, a in accuracy.items()
               if a is not None and window_start[ts] >= DRIFT_AT + 2 * ROLLING_WINDOW]
    assert steady and drifted, (steady, drifted)
    # River alone on this stream: about 0.66 before the drift, 0.58 after (tests/integration/test_drift_prometheus.py)
    assert sum(drifted) / len(drifted) < sum(steady) / len(steady) - 0.04, (steady, drifted)

    champions = [(float(ts), _labels(r)["model"]) for r in _range(prometheus, queries["champion"], frame)
                 for ts, raw in r["values"] if _value(raw) == 1.0]
    assert champions, "Prometheus has no champion"
    last_step = max(ts for ts, _ in champions)
    assert snapshot["champion"] == next(model for ts, model in champions if ts == last_step)
