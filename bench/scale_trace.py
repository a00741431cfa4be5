"""Where a scale run's time goes: ``python -m bench.scale_trace --client confluent --repeat 3``.

Starts Kafka and Redis (as ``make bench`` does), puts ``--events`` on a 4-partition topic, then runs the scale
scenario of ``make bench`` (one worker on the 4 partitions, then two; exactly-once, ``sync.scope: group``) with
every worker tracing its loop (``bench.worker_trace``). For each run it prints the window, the CPU that the workers,
the broker and Redis used in it (seconds per second of the window: 2.0 is both CPUs of this machine), the broker's
busiest threads (the JVM's JIT compilers among them), and per worker its chunks, the time spent polling, processing
chunks and in each other part of the loop. ``--relay-burn-us`` adds the loaded group relays of the scale floor. A
diagnostic: it prints, it does not write the docs.
"""

from __future__ import annotations

import argparse
import bisect
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.suite import Bench, ScaleResult, log, process_cpu_s, started_stack, temp_dir, threads_cpu_s


class CpuSampler(threading.Thread):
    """CPU seconds of some processes, sampled every ``interval_s`` (so that a window's share can be read off)."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.02) -> None:
        super().__init__(name="cpu-sampler", daemon=True)
        self.pids, self.interval_s = pids, interval_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            sample = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
            sample.update({f"{name} kernel": process_cpu_s(pid, kernel_only=True) for name, pid in self.pids.items()})
            self.samples.append((time.time(), sample))
            time.sleep(self.interval_s)

    def used(self, name: str, start: float, end: float) -> float:
        """CPU seconds ``name`` used between the samples nearest ``start`` and ``end``."""
        times = [t for t, _ in self.samples]
        lo = max(0, bisect.bisect_left(times, start) - 1)
        hi = min(len(times) - 1, bisect.bisect_left(times, end))
        return self.samples[hi][1][name] - self.samples[lo][1][name]


def print_threads(before: dict[str, float], after: dict[str, float]) -> None:
    """The broker's busiest kinds of threads between two :func:`threads_cpu_s` (the whole run: join included)."""
    top = sorted(((after[name] - before.get(name, 0.0), name) for name in after), reverse=True)[:8]
    print("  broker threads, CPU s over the whole run: " + ", ".join(f"{name} {s:.2f}" for s, name in top if s >= 0.01))


def describe(result: ScaleResult, sampler: CpuSampler) -> None:
    start = min(r.started for r in result.reports)
    end = max(r.finished for r in result.reports)
    wall = end - start
    workers_cpu = sum(r.cpu_s for r in result.reports)
    broker = sampler.used("broker", start, end)
    broker_kernel = sampler.used("broker kernel", start, end)
    redis = sampler.used("redis", start, end)
    print(f"\n== {result.workers} worker(s): {result.events:,} events in {wall:.3f} s = {result.rate:,.0f}/s; CPU per "
          f"second of the window: workers {workers_cpu / wall:.2f}, broker {broker / wall:.2f}, redis "
          f"{redis / wall:.2f}, total {(workers_cpu + broker + redis) / wall:.2f} of 2; per 1k events: workers "
          f"{1000 * workers_cpu / result.events:.3f} s, broker {1000 * broker / result.events:.3f} s, redis "
          f"{1000 * redis / result.events:.3f} s; syncs {result.sync_total('syncs'):.0f}; the broker's CPU in the "
          f"kernel {broker_kernel / broker if broker else 0:.0%}")
    busiest = sorted(((seconds, name) for name, seconds in result.broker_threads.items()), reverse=True)[:8]
    print("  broker threads in the window, CPU s: " + ", ".join(f"{name} {s:.2f}" for s, name in busiest if s >= 0.01))
    for report, path in zip(result.reports, result.traces, strict=False):
        trace: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        chunks = trace.get("chunks", [])
        in_chunks = sum(finished - started for *_, started, finished in chunks)
        sizes = [last - first + 1 for _, first, last, *_ in chunks]
        print(f"  worker: {report.events:,} events, {report.seconds:.3f} s ({report.started - start:+.3f} s after "
              f"the first start, finished {end - report.finished:.3f} s before the last), CPU {report.cpu_s:.2f} s "
              f"= {report.cpu_s / report.seconds:.2f} of its window; {len(chunks)} chunks of ~"
              f"{(sum(sizes) / len(sizes)) if sizes else 0:.0f} records, processing {in_chunks:.3f} s")
        rows = []
        for part, calls in trace.get("calls", {}).items():
            inside = [d for t, d in calls if report.started <= t <= report.finished]
            if inside:
                rows.append((sum(inside), len(inside), max(inside), part))
        for total, count, longest, part in sorted(rows, reverse=True)[:14]:
            print(f"    {part:32} {count:6d} calls {total:7.3f} s  max {1000 * longest:6.1f} ms")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_trace", description=__doc__.split("\n")[0])
    parser.add_argument("--client", choices=["confluent", "kafka-python"], default="confluent")
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, action="append", help="group sizes (default 1 and 2)")
    parser.add_argument("--single", action="store_true", help="also one worker on a 1-partition topic")
    parser.add_argument("--relay-burn-us", type=float, help="also the loaded group relays of the scale floor: "
                                                            "one and two, spending this much CPU per record")
    parser.add_argument("--at-least-once", action="store_true",
                        help="the workers without transactions (the scale targets are measured exactly-once)")
    args = parser.parse_args(argv)
    with temp_dir() as tmp, started_stack(Path(tmp) / "stack") as stack:
        bench = Bench(stack, Path(tmp))
        kafka_pid, redis_pid = stack.kafka.pid(), stack.redis.pid()
        assert kafka_pid is not None and redis_pid is not None
        sampler = CpuSampler({"broker": kafka_pid, "redis": redis_pid})
        sampler.start()
        try:
            topic, _ = bench.topics(partitions=4)
            log(f"producing {args.events:,} events on a 4-partition topic")
            bench.produce(topic, args.events)
            single, _ = bench.topics(partitions=1)
            if args.single:
                bench.produce(single, args.events)
            for _ in range(args.repeat):
                if args.single:
                    result = bench.scale("logreg", single, 1, args.client, partitions=1, trace=True,
                                         at_least_once=args.at_least_once)
                    print("\n(1 partition)", end="")
                    describe(result, sampler)
                for workers in args.workers or [1, 2]:
                    before = threads_cpu_s(kafka_pid)
                    result = bench.scale("logreg", topic, workers, args.client, partitions=4, trace=True,
                                         at_least_once=args.at_least_once)
                    describe(result, sampler)
                    print_threads(before, threads_cpu_s(kafka_pid))
                if args.relay_burn_us is not None:
                    for relays in (1, 2):
                        before = threads_cpu_s(kafka_pid)
                        result = bench.scale("logreg", topic, relays, args.client, partitions=4,
                                             contender="group-relay", burn_us=args.relay_burn_us)
                        print(f"\n(loaded relays, {args.relay_burn_us:g} us per record)", end="")
                        describe(result, sampler)
                        print_threads(before, threads_cpu_s(kafka_pid))
        finally:
            sampler.stopped.set()
            bench.kill_all()


if __name__ == "__main__":
    main()
