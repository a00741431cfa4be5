"""The broker collector log's reading in ``bench.latency_stages`` (pure text; lines as JDK 17 writes them)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from bench.latency_stages import BrokerPause, broker_pauses, gc_log_options, pauses_summary

_PHASE = "Termination (ms):              Min:  0.0, Avg: {avg}, Max: {max}, Diff: {max}, Sum: {max}, Workers: 2"
LOG = "\n".join([
    "[2026-12-07T13:08:21.921+0000] GC(2) Pause Remark 10M->10M(1024M) 2.298ms",
    "[2026-12-07T13:09:35.058+0000] GC(30)     " + _PHASE.format(avg=" 0.0", max="0.0"),
    "[2026-12-07T13:09:35.059+0000] GC(30) Pause Young (Normal) (G1 Evacuation Pause) 228M->181M(1024M) 9.074ms",
    '[2026-12-07T13:09:35.100+0000] Safepoint "Cleanup", Time since last: 1000127915 ns, Reaching safepoint: 15553 ns',
    "[2026-12-07T13:09:39.985+0000] GC(31)     " + _PHASE.format(avg="45.4", max="90.9"),
    "[2026-12-07T13:09:39.986+0000] GC(31) Pause Young (Normal) (G1 Evacuation Pause) 387M->181M(1024M) 103.636ms",
])


def _at(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def test_the_pauses_of_a_window_come_with_the_longest_wait_of_a_collector_thread() -> None:
    pauses = broker_pauses(LOG, _at("2026-12-07T13:09:00.000+0000"), _at("2026-12-07T13:09:40.000+0000"))
    assert [(p.ms, p.waited_ms) for p in pauses] == [(9.074, 0.0), (103.636, 90.9)]
    assert pauses[1].at == pytest.approx(_at("2026-12-07T13:09:39.986+0000"))
    assert pauses[1].kind == "Young (Normal) (G1 Evacuation Pause) 387M->181M(1024M)"
    everything = broker_pauses(LOG, 0.0, float("inf"))
    assert [(p.ms, p.waited_ms) for p in everything] == [(2.298, None), (9.074, 0.0), (103.636, 90.9)]
    assert everything[0].kind == "Remark 10M->10M(1024M)"
    assert broker_pauses(LOG, _at("2026-12-07T13:09:36.000+0000"), _at("2026-12-07T13:09:39.000+0000")) == []


def test_the_summary_lists_the_long_pauses_at_their_second_of_send_time() -> None:
    first_send = 1_000.0
    pauses = [BrokerPause(1_001.5, "Young", 9.1, 0.0), BrokerPause(1_007.25, "Young", 103.6, 90.9),
              BrokerPause(1_008.0, "Remark", 25.0, None)]
    assert pauses_summary(pauses, first_send) == (
        "broker pauses during the run: 3, 137.7 ms in all, longest 103.6 ms; those >= 20 ms (second of send time: "
        "ms, a thread's wait): 7.2 s: 103.6 ms, 90.9 ms, 8.0 s: 25.0 ms")
    assert pauses_summary([], first_send) == "broker pauses during the run: none"


def test_the_log_options_add_the_log_to_the_brokers_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_JVM_PERFORMANCE_OPTS", raising=False)
    options = gc_log_options(Path("/tmp/x/gc.log"))
    assert options.startswith("-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20")
    assert options.endswith(" -Xlog:gc,gc+phases=debug:file=/tmp/x/gc.log:time")
    monkeypatch.setenv("KAFKA_JVM_PERFORMANCE_OPTS", "-XX:+UseZGC")
    assert gc_log_options(Path("/tmp/gc.log")) == "-XX:+UseZGC -Xlog:gc,gc+phases=debug:file=/tmp/gc.log:time"
