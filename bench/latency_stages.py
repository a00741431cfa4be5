"""Where a paced run's latency goes, stage by stage: ``python -m bench.latency_stages --client confluent --rate 6000``.

Starts Kafka and Redis (as ``make bench`` does), then runs, one after the other and each ``--repeat`` times, the
relay floor and the worker (at-least-once; and, with ``--eos-interval``, the exactly-once relay and worker) at the
same paced rate, as ``bench.suite`` does for the latency rows. The worker runs with ``--trace``
(``bench.worker_trace``), so each measured event's latency splits into:

- **fetch**: from the event's send to the worker's poll returning it (the broker, the fetch, and the time the loop
  spent elsewhere before it called ``poll`` again);
- **held**: from the poll to the start of the chunk that processed it (backpressure holds what a chunk left);
- **process**: the chunk's run through the steps, up to the last record's send to the producer;
- **out**: from there to the prediction being read (the producer's linger and delivery, the commit when
  exactly-once, the reader's fetch).

For the slowest 1% of events the mean of each stage is printed beside the median event's, and the loop's calls
(commit, exports, collections, ...) that overlapped those events' wait, by part. A diagnostic: it prints, it does
not write the docs.
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import json
import os
import re
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bench import suite
from bench.suite import (
    CLK_TCK,
    WARMUP_S,
    Bench,
    LatencyResult,
    log,
    percentile,
    process_cpu_s,
    started_stack,
    temp_dir,
)
from services.stack.kafka_server import KAFKA_JVM_PERFORMANCE_OPTS

STAGES = ("fetch", "held", "process", "out")
#: a loop call at least this long is listed as a stall
STALL_S = 0.001
#: the CPU sampler's period (each sample reads five files of /proc)
SAMPLE_S = 0.1
#: the timeline's CPU columns: the processes sampled, then the rest of the machine and what its hypervisor took
CPU_COLUMNS = ("worker", "broker", "redis", "bench", "other", "steal", "idle")


class CpuSampler:
    """Who used the 2 CPUs during a paced run: every ``SAMPLE_S``, the CPU seconds of the contender, the broker,
    Redis and this process (the paced producer and the reader), and the machine's busy, steal and idle time
    (``/proc/stat``), so that the timeline shows who took the CPU while the contender fell behind."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = pids
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.samples.append((time.time(), self._sample()))
            if self._stop.wait(SAMPLE_S):
                self.samples.append((time.time(), self._sample()))
                return

    def _sample(self) -> dict[str, float]:
        used = {name: process_cpu_s(pid) if pid else 0.0 for name, pid in self._pids.items()}
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, idle, iowait, irq, softirq, steal = fields
        used["busy"] = (user + nice + system + irq + softirq) / CLK_TCK
        used["idle"] = (idle + iowait) / CLK_TCK
        used["steal"] = steal / CLK_TCK
        return used

    def by_bucket(self, first: float, step_s: float) -> dict[int, dict[str, float]]:
        """CPUs used (seconds per second) in each ``step_s`` bucket from ``first``, by column of ``CPU_COLUMNS``."""
        spent: dict[int, dict[str, float]] = {}
        spans: dict[int, float] = {}
        for (t0, a), (t1, b) in zip(self.samples, self.samples[1:], strict=False):
            index = int((t0 - first) // step_s)
            if t0 < first or t1 <= t0:
                continue
            delta = {k: b[k] - a[k] for k in a}
            named = sum(delta.get(k, 0.0) for k in self._pids)
            delta["other"] = max(0.0, delta["busy"] - named)
            bucket = spent.setdefault(index, {})
            for column in CPU_COLUMNS:
                bucket[column] = bucket.get(column, 0.0) + delta.get(column, 0.0)
            spans[index] = spans.get(index, 0.0) + (t1 - t0)
        return {i: {k: v / spans[i] for k, v in bucket.items()} for i, bucket in spent.items()}


def paced_traced(bench: Bench, contender: str, client: str, rate: float, seconds: float, *,
                 at_least_once: bool = True, interval_s: float | None = None, code_dir: Path | None = None,
                 extra: Sequence[str] = ()) -> tuple[LatencyResult, dict[str, float], dict[str, tuple[float, float]],
                                                     dict[str, Any] | None]:
    """One paced run with the worker's trace: (result, sent, received, trace)."""
    events, predictions = bench.topics()
    ready_path, stop_path, trace_path = bench.path("ready"), bench.path("stop"), bench.path("trace")
    args = [contender, "--model", "logreg", "--ready-file", str(ready_path), "--stop-file", str(stop_path),
            "--bootstrap", bench.stack.bootstrap, "--topic", events, "--predictions", predictions,
            "--group", bench.name("group"), "--redis-url", bench.stack.redis_url, "--client", client, *extra]
    if contender == "worker":
        args += ["--trace", str(trace_path)]
        if at_least_once:
            args.append("--at-least-once")
    if interval_s is not None and (contender == "worker" or not at_least_once):
        args += ["--commit-interval", str(interval_s)]  # a relay with an interval is the exactly-once relay
    child = _spawn_from(bench, code_dir, args)
    n = max(50, int(rate * (WARMUP_S + seconds)))
    try:
        bench.await_ready(ready_path, [child], f"{contender} to get its partitions")
    except RuntimeError:
        print(child.tail())
        raise
    cpu_before, started = process_cpu_s(child.pid), time.monotonic()
    main_before = process_cpu_s(child.pid, main_thread=True)
    pids = {"worker": child.pid, "broker": bench.stack.kafka.pid(), "redis": bench.stack.redis.pid(),
            "bench": os.getpid()}
    with CpuSampler(pids) as sampler:
        sent, received = suite.paced_run(bench.stack.bootstrap, events, predictions, n, rate, stop_path)
    elapsed = time.monotonic() - started
    log(f"{contender} used {(process_cpu_s(child.pid) - cpu_before) / elapsed:.2f} CPU over the paced run, its main "
        f"thread {(process_cpu_s(child.pid, main_thread=True) - main_before) / elapsed:.2f}")
    child.wait()
    trace = json.loads(trace_path.read_text()) if trace_path.exists() else None
    if trace is not None:
        trace["cpu"] = sampler
    return LatencyResult.of(contender, rate, sent, received, interval_s), sent, received, trace


def _spawn_from(bench: Bench, code_dir: Path | None, args: list[str]) -> Any:
    """``bench.spawn``, from another checkout of the code when ``code_dir`` is given (its ``bench.runner``,
    ``services`` and ``shared``)."""
    if code_dir is None:
        return bench.spawn(*args)
    saved_root, saved_path = suite.ROOT, os.environ.get("PYTHONPATH")
    suite.ROOT, os.environ["PYTHONPATH"] = code_dir, str(code_dir)
    try:
        return bench.spawn(*args)
    finally:
        suite.ROOT = saved_root
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path


def stages_of(sent: dict[str, float], received: dict[str, tuple[float, float]],
              trace: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per measured event id: its latency and the seconds of each stage (the event's index is its offset)."""
    at: dict[int, tuple[float, float, float]] = {}
    for _, first, last, polled, started, finished in trace["chunks"]:
        for offset in range(first, last + 1):
            at.setdefault(offset, (polled, started, finished))
    start = min(sent.values(), default=0.0) + WARMUP_S
    out: dict[str, dict[str, float]] = {}
    for event_id, sent_at in sent.items():
        if sent_at < start or event_id not in received:
            continue
        offset = int(event_id.rsplit("-", 1)[1])
        if offset not in at:
            continue
        polled, started, finished = at[offset]
        read = received[event_id][0]
        out[event_id] = {"total": read - sent_at, "fetch": polled - sent_at, "held": started - polled,
                         "process": finished - started, "out": read - finished, "sent": sent_at, "read": read}
    return out


def report(label: str, result: LatencyResult, sent: dict[str, float], received: dict[str, tuple[float, float]],
           trace: dict[str, Any] | None) -> None:
    print(f"\n== {label}: {result.rate:,.0f}/s, read {result.received}/{result.sent}, p50 {result.p50_ms:.1f} ms, "
          f"p99 {result.p99_ms:.1f} ms, max {result.max_ms:.1f}; send->sent p50/p99 {result.to_send_p50_ms:.1f} / "
          f"{result.to_send_p99_ms:.1f}, sent->read {result.to_read_p50_ms:.1f} / {result.to_read_p99_ms:.1f}")
    if trace is None:
        return
    events = stages_of(sent, received, trace)
    if not events:
        print("  (no traced events)")
        return
    ordered = sorted(events.values(), key=lambda e: e["total"])
    tail = ordered[int(0.99 * len(ordered)):]
    middle = ordered[len(ordered) // 2]
    print("  stage ms    " + "  ".join(f"{s:>8}" for s in STAGES))
    print("  p50         " + "  ".join(f"{1000 * percentile([e[s] for e in ordered], 50):8.2f}" for s in STAGES))
    print("  p99         " + "  ".join(f"{1000 * percentile([e[s] for e in ordered], 99):8.2f}" for s in STAGES))
    print("  median ev.  " + "  ".join(f"{1000 * middle[s]:8.2f}" for s in STAGES))
    print(f"  slowest 1% ({len(tail)} events, total >= {1000 * tail[0]['total']:.1f} ms), mean:")
    print("              " + "  ".join(f"{1000 * statistics.fmean(e[s] for e in tail):8.2f}" for s in STAGES))
    # the loop's parts: totals and the long calls
    span = max(e["read"] for e in ordered) - min(e["sent"] for e in ordered)
    print(f"  loop parts over the run ({span:.1f} s): calls, total s, p99 ms, max ms, calls >= {1000 * STALL_S:g} ms")
    stalls: list[tuple[float, float, str]] = []
    for part, calls in sorted(trace["calls"].items(), key=lambda kv: -sum(d for _, d in kv[1])):
        if not calls:
            continue
        durations = [d for _, d in calls]
        long = [(t, d, part) for t, d in calls if d >= STALL_S]
        stalls += long
        print(f"    {part:28} {len(calls):7d} {sum(durations):7.2f} {1000 * percentile(durations, 99):7.2f} "
              f"{1000 * max(durations):7.1f} {len(long):5d}")
    collections = trace["collections"]
    for generation in (0, 1, 2):
        pauses = [d for _, d, g in collections if g == generation]
        if pauses:
            print(f"    gc generation {generation}: {len(pauses)} collections, {sum(pauses):.3f} s, "
                  f"max {1000 * max(pauses):.1f} ms")
    stalls += [(t, d, f"gc gen {g}") for t, d, g in collections if d >= STALL_S]
    # how much of the slowest events' wait each part's long calls took (mean ms per event, by part)
    stalls.sort()
    overlap: dict[str, float] = {}
    starts = [t for t, _, _ in stalls]
    longest = max((d for _, d, _ in stalls), default=0.0)
    for event in tail:
        lo = bisect.bisect_left(starts, event["sent"] - longest)
        hi = bisect.bisect_right(starts, event["read"])
        for t, d, part in stalls[lo:hi]:
            shared = min(t + d, event["read"]) - max(t, event["sent"])
            if shared > 0:
                overlap[part] = overlap.get(part, 0.0) + shared
    top = sorted(overlap.items(), key=lambda kv: -kv[1])[:10]
    print("  long calls within the slowest 1%'s wait, mean ms per event: "
          + (", ".join(f"{part} {1000 * total / len(tail):.1f}" for part, total in top) or "none"))
    if trace.get("truncated"):
        print("  (the trace hit its bound: later entries are missing)")
    timeline(sent, received, trace)
    if START_DETAIL:
        start_detail(sent, trace)


#: ``--start-detail``: also print the loop's first chunks and long calls of each run
START_DETAIL = False


def start_detail(sent: dict[str, float], trace: dict[str, Any], seconds: float = 1.5, chunks: int = 30) -> None:
    """The loop's first ``chunks`` chunks (ms from the first send: polled, started, finished; records) and its
    calls of at least 5 ms in the first ``seconds``: what a run's start costs."""
    first = min(sent.values(), default=0.0)
    print(f"  the first {chunks} chunks, ms from the first send: polled, started, finished, records")
    for _, lo, hi, polled, started, finished in trace["chunks"][:chunks]:
        print(f"    {1000 * (polled - first):8.1f} {1000 * (started - first):8.1f} {1000 * (finished - first):8.1f}"
              f" {hi - lo + 1:5d}")
    long = sorted((t, d, part) for part, calls in trace["calls"].items() for t, d in calls
                  if d >= 0.005 and t - first < seconds)
    long += [(t - d, d, f"gc gen {g}") for t, d, g in trace["collections"] if d >= 0.005 and t - first < seconds]
    print(f"  calls of at least 5 ms in the first {seconds:g} s (ms from the first send, ms):")
    for t, d, part in sorted(long):
        print(f"    {1000 * (t - first):8.1f} {1000 * d:7.1f} {part}")
    later = sorted((t, d, part) for part, calls in trace["calls"].items() for t, d in calls
                   if d >= 0.010 and t - first >= seconds)
    later += [(t - d, d, f"gc gen {g}") for t, d, g in trace["collections"] if d >= 0.010 and t - first >= seconds]
    print("  calls of at least 10 ms after that (ms from the first send, ms, part): "
          + ", ".join(f"{1000 * (t - first):.0f} {1000 * d:.1f} {part}" for t, d, part in sorted(later)))
    polls = sorted(((d, t) for t, d in trace["calls"].get("poll", []) if t >= first), reverse=True)[:10]
    print("  the 10 longest polls after the first send (ms from the first send, ms): "
          + ", ".join(f"{1000 * (t - first):.0f} {1000 * d:.1f}" for d, t in sorted(polls, key=lambda p: p[1])))


def timeline(sent: dict[str, float], received: dict[str, tuple[float, float]], trace: dict[str, Any],
             step_s: float = 0.5) -> None:
    """Per ``step_s`` of send time, the warm-up included: the events sent, their p50 and max latency, and the
    loop's chunks that polled in that time (count, mean records): where a run's tail starts, and whether the loop
    caught up."""
    if not sent:
        return
    first = min(sent.values())
    buckets: dict[int, list[float]] = {}
    for event_id, at in sent.items():
        if event_id in received:
            buckets.setdefault(int((at - first) / step_s), []).append(received[event_id][0] - at)
    chunks: dict[int, list[int]] = {}
    for _, lo, hi, polled, _, _ in trace["chunks"]:
        if polled >= first:
            chunks.setdefault(int((polled - first) / step_s), []).append(hi - lo + 1)
    sampler: CpuSampler | None = trace.get("cpu")
    cpu = sampler.by_bucket(first, step_s) if sampler is not None else {}
    print(f"  timeline by {step_s:g} s of send time (measured from {WARMUP_S:g} s): events, p50 ms, max ms | "
          "chunks polled, mean records | CPUs used: " + " ".join(CPU_COLUMNS))
    for index in sorted(buckets):
        totals, sizes = sorted(buckets[index]), chunks.get(index, [])
        used = cpu.get(index)
        print(f"    {index * step_s:5.1f} s {len(totals):6d} {1000 * totals[len(totals) // 2]:8.1f} "
              f"{1000 * totals[-1]:8.1f} | {len(sizes):5d} {statistics.fmean(sizes) if sizes else 0:7.1f} |"
              + ("" if used is None else " " + " ".join(f"{used.get(c, 0.0):5.2f}" for c in CPU_COLUMNS)))


#: a pause's line of the broker's collector log (``-Xlog:gc...:time``), and the wait of its collector threads
_PAUSE_LINE = re.compile(r"^\[(?P<at>[^\]]+)\] GC\((?P<gc>\d+)\) Pause (?P<kind>.+?) (?P<ms>[\d.]+)ms$")
_TERMINATION_LINE = re.compile(r"^\[[^\]]+\] GC\((?P<gc>\d+)\) +Termination \(ms\):.*Max: *(?P<ms>[\d.]+)")
#: pauses at least this long are listed one by one
LONG_PAUSE_MS = 20.0


class BrokerPause(NamedTuple):
    """One stop of the broker's JVM for its collector."""

    at: float  # wall-clock seconds (epoch) when it ended
    kind: str  # "Young (Normal) (G1 Evacuation Pause) 387M->181M(1024M)"
    ms: float
    #: the longest time a collector thread waited for the others to finish (``Termination``, ``gc+phases=debug``):
    #: near the pause's length when one thread could not run
    waited_ms: float | None


def broker_pauses(log_text: str, since: float, until: float) -> list[BrokerPause]:
    """The pauses in a broker's collector log that ended between ``since`` and ``until`` (epoch seconds)."""
    waits: dict[str, float] = {}
    pauses: list[tuple[str, BrokerPause]] = []
    for line in log_text.splitlines():
        termination = _TERMINATION_LINE.match(line)
        if termination:
            waits[termination["gc"]] = max(waits.get(termination["gc"], 0.0), float(termination["ms"]))
            continue
        pause = _PAUSE_LINE.match(line)
        if pause is None:
            continue
        at = datetime.datetime.strptime(pause["at"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
        if since <= at <= until:
            pauses.append((pause["gc"], BrokerPause(at, pause["kind"], float(pause["ms"]), None)))
    return [p._replace(waited_ms=waits.get(gc)) for gc, p in pauses]


def pauses_summary(pauses: Sequence[BrokerPause], first_send: float) -> str:
    """One line: how many pauses, their total and longest, and each one of at least ``LONG_PAUSE_MS`` at its second
    of send time (as the timeline counts it: from the run's first send, the warm-up included)."""
    if not pauses:
        return "broker pauses during the run: none"
    longest = max(pauses, key=lambda p: p.ms)
    line = (f"broker pauses during the run: {len(pauses)}, {sum(p.ms for p in pauses):.1f} ms in all, "
            f"longest {longest.ms:.1f} ms")
    long_ones = [p for p in pauses if p.ms >= LONG_PAUSE_MS]
    if long_ones:
        line += f"; those >= {LONG_PAUSE_MS:g} ms (second of send time: ms, a thread's wait): " + ", ".join(
            f"{p.at - first_send:.1f} s: {p.ms:.1f} ms"
            + ("" if p.waited_ms is None else f", {p.waited_ms:.1f} ms") for p in long_ones)
    return line


def gc_log_options(path: Path) -> str:
    """``KAFKA_JVM_PERFORMANCE_OPTS`` that log the collector's pauses and phases to ``path``: the environment's
    options if set (else the broker's defaults), plus the log."""
    base = os.environ.get("KAFKA_JVM_PERFORMANCE_OPTS") or " ".join(KAFKA_JVM_PERFORMANCE_OPTS)
    return f"{base} -Xlog:gc,gc+phases=debug:file={path}:time"


class RedisLatency:
    """Redis's own latency monitor (``LATENCY LATEST``): which of the server's events (a command, the append-only
    file's write or fsync, a fork) took at least the threshold during a run."""

    def __init__(self, url: str, threshold_ms: int) -> None:
        import redis

        self._client = redis.Redis.from_url(url)
        self._client.config_set("latency-monitor-threshold", threshold_ms)
        self._client.execute_command("LATENCY", "RESET")

    def report(self) -> None:
        """Print each event's count of spikes since the last report, the latest and the longest, then reset."""
        events = self._client.execute_command("LATENCY", "LATEST")
        if not events:
            log("redis latency monitor: no event over the threshold")
        for event in events:
            name, _, latest_ms, max_ms = event[:4]
            history = self._client.execute_command("LATENCY", "HISTORY", name)
            log(f"redis latency monitor: {name.decode() if isinstance(name, bytes) else name}: {len(history)} "
                f"seconds with a spike, latest {latest_ms} ms, max {max_ms} ms")
        self._client.execute_command("LATENCY", "RESET")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_stages", description=__doc__.split("\n")[0])
    parser.add_argument("--client", choices=["confluent", "kafka-python"], default="confluent")
    parser.add_argument("--rate", type=float, action="append", help="events/s (repeatable; default 500)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run (after the warm-up)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--eos-interval", type=float,
                        help="also the exactly-once worker (and relay) with this transaction interval")
    parser.add_argument("--no-relay", action="store_true")
    parser.add_argument("--loaded-relay-us", type=float, action="append", default=[],
                        help="also the relay spending this much CPU per record (repeatable): is a tail the load's?")
    parser.add_argument("--no-alos", action="store_true", help="no at-least-once worker")
    parser.add_argument("--redis-latency", type=int, metavar="MS",
                        help="turn on Redis's latency monitor at this threshold and print its events after each run")
    parser.add_argument("--before", type=Path, help="also run each worker from this other checkout of the code "
                                                    "(e.g. `git archive` of an earlier commit): before and after "
                                                    "in one run, beside the same relay")
    parser.add_argument("--start-detail", action="store_true",
                        help="also print each worker run's first chunks and long calls (what its start costs)")
    parser.add_argument("--broker-gc-log", action="store_true",
                        help="log the broker's collector and print each run's pauses (the longest thread wait too)")
    args = parser.parse_args(argv)
    global START_DETAIL
    START_DETAIL = args.start_detail
    with temp_dir() as tmp:
        gc_log = Path(tmp) / "broker-gc.log" if args.broker_gc_log else None
        if gc_log is not None:
            os.environ["KAFKA_JVM_PERFORMANCE_OPTS"] = gc_log_options(gc_log)
        run_all(args, Path(tmp), gc_log)


def run_all(args: argparse.Namespace, tmp: Path, gc_log: Path | None) -> None:
    """Every run of the command line, on one stack."""
    with started_stack(tmp / "stack") as stack:
        bench = Bench(stack, tmp)
        monitor = RedisLatency(stack.redis_url, args.redis_latency) if args.redis_latency else None
        try:
            for _ in range(args.repeat):
                for rate in args.rate or [500.0]:
                    runs: list[tuple[str, str, bool, float | None, Path | None, tuple[str, ...]]] = []
                    eos = args.eos_interval
                    if not args.no_relay:
                        runs.append(("relay", "relay", True, None, None, ()))
                        if eos is not None:
                            runs.append((f"relay exactly-once {eos:g} s", "relay", False, eos, None, ()))
                    for burn_us in args.loaded_relay_us:
                        runs.append((f"relay +{burn_us:g} us CPU/record", "relay", True, None, None,
                                     ("--burn-us", str(burn_us))))
                        if eos is not None:
                            runs.append((f"relay exactly-once {eos:g} s +{burn_us:g} us CPU/record", "relay", False,
                                         eos, None, ("--burn-us", str(burn_us))))
                    for code_dir, tag in ([(args.before, " BEFORE")] if args.before else []) + [(None, "")]:
                        if not args.no_alos:
                            runs.append((f"worker at-least-once{tag}", "worker", True, None, code_dir, ()))
                        if args.eos_interval is not None:
                            runs.append((f"worker exactly-once {args.eos_interval:g} s{tag}", "worker", False,
                                         args.eos_interval, code_dir, ()))
                    for label, contender, alos, interval, code_dir, extra in runs:
                        log(f"{label}, {args.client}, {rate:,.0f}/s")
                        started = time.time()
                        result, sent, received, trace = paced_traced(
                            bench, contender, args.client, rate, args.seconds, at_least_once=alos,
                            interval_s=interval, code_dir=code_dir, extra=extra)
                        report(f"{label} ({args.client})", result, sent, received, trace)
                        if gc_log is not None:
                            pauses = broker_pauses(gc_log.read_text(errors="replace"), started, time.time())
                            print("  " + pauses_summary(pauses, min(sent.values(), default=started)))
                        if monitor is not None:
                            monitor.report()
        finally:
            bench.kill_all()


if __name__ == "__main__":
    main()
