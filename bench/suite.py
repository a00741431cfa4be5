"""The benchmark's scenarios: throughput, paced latency, horizontal scale, memory over a long run, profile.

Each contender runs in its own process (``bench.runner``), one after the other, on a Kafka broker and a Redis
this module starts on free ports in a temporary directory (as the tests do) and stops at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from bench.common import SEED, SOURCE, RunResult, samples, wait_for_file
from services.replayer import replay
from services.replayer.replay import event_record
from services.stack import KafkaServer, RedisServer, free_ports
from shared.kafka.admin import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: a contender without partitions this long after start hit kafka-python's join-before-metadata race: retry
ASSIGN_TIMEOUT_S = 45.0
ATTEMPTS = 3
#: a paced run sends at its rate this long before the measured seconds: the clients' connections, the idempotent
#: producers' ids and the broker's first fetch sessions settle, and those events are not measured
WARMUP_S = 2.0
T = TypeVar("T")


class NotAssignedError(RuntimeError):
    """A contender's consumer got no partitions in time."""


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the stack ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Stack:
    """Kafka and Redis of one benchmark run."""

    kafka: KafkaServer
    redis: RedisServer

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def broker_cpu_s(self) -> float:
        """CPU seconds the broker process has used so far (0 when unknown)."""
        pid = self.kafka.pid()
        if pid is None:
            return 0.0
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def broker_threads_cpu_s(self) -> dict[str, float]:
        """CPU seconds each kind of the broker's threads has used so far (empty when unknown)."""
        pid = self.kafka.pid()
        return {} if pid is None else threads_cpu_s(pid)

    def broker_jit_cpu_s(self) -> float:
        """CPU seconds the broker's JIT compiler threads have used so far (those alive now)."""
        return sum(seconds for name, seconds in self.broker_threads_cpu_s().items() if name in JIT_THREADS)


@contextlib.contextmanager
def started_stack(state_dir: Path) -> Iterator[Stack]:
    """Start Redis and Kafka on free loopback ports; stop both on exit, pass or fail."""
    (redis_port,) = free_ports(1)
    port, controller_port = free_ports(2)
    redis_server = RedisServer(state_dir, port=redis_port, die_with_parent=True)
    kafka_server = KafkaServer(state_dir, port=port, controller_port=controller_port, heap="1G", die_with_parent=True)
    try:
        redis_server.start()
        kafka_server.start()
        yield Stack(kafka_server, redis_server)
    finally:
        for server in (kafka_server, redis_server):
            with contextlib.suppress(Exception):
                server.stop()


# --- contender processes ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    """What ``os.wait4`` says about a finished contender process."""

    exit_code: int
    cpu_s: float
    peak_rss_mib: float


#: the names (up to a trailing number) of a HotSpot JVM's JIT compiler threads, as /proc shows them (15 characters)
JIT_THREADS = frozenset({"C1 CompilerThre", "C2 CompilerThre"})


def threads_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each kind of thread of a process (threads named alike, up to a trailing number, summed)."""
    used: dict[str, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return used
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")].rstrip("0123456789-# ")
        fields = stat.rsplit(")", 1)[1].split()
        used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return used


def process_cpu_s(pid: int, *, kernel_only: bool = False, main_thread: bool = False) -> float:
    """User + system CPU seconds of a running process, all threads (0.0 once it is gone); ``kernel_only``: system
    CPU seconds only; ``main_thread``: its main thread's only (the thread that runs a Python program's loop)."""
    path = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return ((0 if kernel_only else int(fields[11])) + int(fields[12])) / CLK_TCK


class Child:
    """A ``bench.runner`` process; reaped with ``os.wait4`` so that its resource usage is kept."""

    def __init__(self, args: Sequence[str], log_path: Path) -> None:
        self.args = list(args)
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.runner", *self.args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )
        self.pid = self.process.pid
        self.usage: Usage | None = None

    def _reaped(self, status: int, rusage: Any) -> Usage:
        self.usage = Usage(
            exit_code=os.waitstatus_to_exitcode(status),
            cpu_s=rusage.ru_utime + rusage.ru_stime,
            peak_rss_mib=rusage.ru_maxrss / 1024.0,
        )
        return self.usage

    def alive(self) -> bool:
        if self.usage is not None:
            return False
        pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._reaped(status, rusage)
        return False

    def rss_mib(self) -> float | None:
        """The current resident set size (None once it exited)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return None

    def wait(self, timeout_s: float = 120.0) -> Usage:
        """Wait for the exit; kill it (by its pid) if it does not exit in time. Fails on a non-zero exit."""
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() > deadline:
                self.process.kill()
                _, status, rusage = os.wait4(self.pid, 0)
                self._reaped(status, rusage)
                raise RuntimeError(f"bench.runner {self.args[0]} did not exit in {timeout_s:.0f} s; {self.tail()}")
            time.sleep(0.05)
        assert self.usage is not None
        if self.usage.exit_code != 0:
            raise RuntimeError(f"bench.runner {' '.join(self.args[:3])} exited {self.usage.exit_code}: {self.tail()}")
        return self.usage

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            with contextlib.suppress(ChildProcessError):
                _, status, rusage = os.wait4(self.pid, 0)
                self._reaped(status, rusage)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"


@dataclass(slots=True)
class Measured:
    """One contender's throughput run: its own report and what the parent measured around it."""

    label: str
    result: RunResult
    usage: Usage
    broker_cpu_s: float = 0.0
    #: CPU seconds the broker's JIT compilers used while the contender ran (start to report)
    broker_jit_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.result.rate

    @property
    def cpu_per_1k(self) -> float:
        return 1000.0 * self.result.cpu_s / max(self.result.events, 1)

    @property
    def broker_cpu_per_1k(self) -> float:
        return 1000.0 * self.broker_cpu_s / max(self.result.events, 1)


class Bench:
    """Runs the scenarios on one stack; every contender process gets fresh topics and a fresh group."""

    def __init__(self, stack: Stack, work_dir: Path) -> None:
        self.stack = stack
        self.work_dir = work_dir
        self._children: list[Child] = []

    def name(self, prefix: str) -> str:
        return f"bench.{prefix}.{uuid.uuid4().hex[:8]}"

    def path(self, prefix: str) -> Path:
        return self.work_dir / f"{prefix}-{uuid.uuid4().hex[:8]}"

    def spawn(self, *args: str) -> Child:
        child = Child(args, self.path(f"{args[0]}.log"))
        self._children.append(child)
        return child

    def kill_all(self) -> None:
        for child in self._children:
            child.kill()

    def topics(self, partitions: int = 1) -> tuple[str, str]:
        """Fresh events (``partitions``) and predictions topics."""
        events, predictions = self.name("events"), self.name("predictions")
        ensure_topics(self.stack.bootstrap, {events: partitions, predictions: 1, f"{predictions}.shadow": 1,
                                             f"{events}.dlq": 1, f"{events}.labels": partitions})
        return events, predictions

    def produce(self, topic: str, n: int) -> float:
        """Send the first ``n`` events of the source; returns the producer's rate."""
        stats = replay(SOURCE, bootstrap_servers=self.stack.bootstrap, topic=topic, limit=n, seed=SEED,
                       progress=False)
        return stats.rate

    # --- throughput ---------------------------------------------------------------------------------------

    def bare(self, model: str, n: int) -> Measured:
        result_path = self.path("result")
        broker0, jit0 = self.stack.broker_cpu_s(), self.stack.broker_jit_cpu_s()
        child = self.spawn("bare", "--model", model, "--n", str(n), "--result", str(result_path))
        usage = child.wait(timeout_s=900)
        return Measured("(a) bare model loop", RunResult.read(result_path), usage,
                        self.stack.broker_cpu_s() - broker0, max(0.0, self.stack.broker_jit_cpu_s() - jit0))

    def retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` again (it uses a fresh group each time) when its processes got no partitions."""
        for number in range(1, ATTEMPTS + 1):
            try:
                return attempt()
            except NotAssignedError as exc:
                if number == ATTEMPTS:
                    raise RuntimeError(f"{what}: {exc} ({ATTEMPTS} attempts)") from exc
                log(f"warning: {what}: {exc}; trying again with a fresh consumer group")
        raise AssertionError("unreachable")

    def await_ready(self, path: Path, children: Sequence[Child], what: str) -> None:
        """Wait until ``path`` exists (the contender has partitions); else kill ``children`` and raise."""
        try:
            wait_for_file(path, ASSIGN_TIMEOUT_S, what, lambda: all(c.alive() for c in children))
        except TimeoutError as exc:
            for child in children:
                child.kill()
            raise NotAssignedError(f"no partitions after {ASSIGN_TIMEOUT_S} s") from exc

    def kafka_contender(
        self, contender: str, model: str, events_topic: str, n: int, *, label: str,
        at_least_once: bool = False, profile: Path | None = None, client: str = "kafka-python",
        checkpoint_in_loop: bool = False,
    ) -> Measured:
        """The plain loop or the worker over ``n`` events already on ``events_topic`` (a fresh group)."""
        return self.retrying(label, lambda: self._kafka_contender(contender, model, events_topic, n, label=label,
                                                                  at_least_once=at_least_once, profile=profile,
                                                                  client=client,
                                                                  checkpoint_in_loop=checkpoint_in_loop))

    def _kafka_contender(
        self, contender: str, model: str, events_topic: str, n: int, *, label: str,
        at_least_once: bool, profile: Path | None, client: str, checkpoint_in_loop: bool,
    ) -> Measured:
        _, predictions = self.topics()
        result_path, stop_path, ready_path = self.path("result"), self.path("stop"), self.path("ready")
        args = [contender, "--model", model, "--n", str(n), "--result", str(result_path), "--stop-file",
                str(stop_path), "--ready-file", str(ready_path), "--bootstrap", self.stack.bootstrap,
                "--topic", events_topic, "--predictions", predictions, "--group", self.name("group"),
                "--redis-url", self.stack.redis_url]
        if at_least_once:
            args.append("--at-least-once")
        if profile is not None:
            args += ["--profile", str(profile)]
        if contender == "worker":
            args += ["--client", client]
        if checkpoint_in_loop:
            args.append("--checkpoint-in-loop")
        broker0, jit0 = self.stack.broker_cpu_s(), self.stack.broker_jit_cpu_s()
        child = self.spawn(*args)
        self.await_ready(ready_path, [child], f"{label} to get its partitions")
        wait_for_file(result_path, 120 + n / 50, f"{label} to process {n} events", child.alive)
        broker_cpu = self.stack.broker_cpu_s() - broker0
        jit = max(0.0, self.stack.broker_jit_cpu_s() - jit0)
        stop_path.touch()
        usage = child.wait()
        return Measured(label, RunResult.read(result_path), usage, broker_cpu, jit)

    # --- latency ------------------------------------------------------------------------------------------

    def paced(
        self, contender: str, model: str, rate: float, seconds: float, *, label: str,
        at_least_once: bool = False, commit_interval_s: float | None = None, client: str = "kafka-python",
        linger_ms: int | None = None, burn_us: float | None = None,
    ) -> LatencyResult:
        """Produce at ``rate`` for ``seconds``; latency from each send to its prediction being readable by a
        ``read_committed`` consumer. ``burn_us``: the relay spends that much CPU per record (a loaded floor)."""
        return self.retrying(label, lambda: self._paced(contender, model, rate, seconds, label=label,
                                                        at_least_once=at_least_once,
                                                        commit_interval_s=commit_interval_s, client=client,
                                                        linger_ms=linger_ms, burn_us=burn_us))

    def _paced(
        self, contender: str, model: str, rate: float, seconds: float, *, label: str,
        at_least_once: bool, commit_interval_s: float | None, client: str, linger_ms: int | None,
        burn_us: float | None,
    ) -> LatencyResult:
        events, predictions = self.topics()
        ready_path, stop_path = self.path("ready"), self.path("stop")
        args = [contender, "--model", model, "--ready-file", str(ready_path), "--stop-file", str(stop_path),
                "--bootstrap", self.stack.bootstrap, "--topic", events, "--predictions", predictions,
                "--group", self.name("group"), "--redis-url", self.stack.redis_url]
        if at_least_once:
            args.append("--at-least-once")
        if commit_interval_s is not None:
            args += ["--commit-interval", str(commit_interval_s)]
        if linger_ms is not None:
            args += ["--linger-ms", str(linger_ms)]
        if contender in ("worker", "relay"):
            args += ["--client", client]
        if burn_us:
            args += ["--burn-us", f"{burn_us:.1f}"]
        child = self.spawn(*args)
        n = max(50, int(rate * (WARMUP_S + seconds)))
        self.await_ready(ready_path, [child], f"{label} to get its partitions")
        jit_before = self.stack.broker_jit_cpu_s()
        cpu_before, started = process_cpu_s(child.pid), time.monotonic()
        main_before = process_cpu_s(child.pid, main_thread=True)
        sent, received = paced_run(self.stack.bootstrap, events, predictions, n, rate, stop_path)
        elapsed = time.monotonic() - started
        cpu = (process_cpu_s(child.pid) - cpu_before) / elapsed
        main_cpu = (process_cpu_s(child.pid, main_thread=True) - main_before) / elapsed
        jit = max(0.0, self.stack.broker_jit_cpu_s() - jit_before)
        child.wait()
        result = LatencyResult.of(label, rate, sent, received, commit_interval_s)
        result.cpu, result.main_cpu, result.broker_jit_s = cpu, main_cpu, jit
        return result

    # --- scale --------------------------------------------------------------------------------------------

    def scale(self, model: str, events_topic: str, workers: int, client: str = "kafka-python", *,
              partitions: int = 4, scope: str = "group", contender: str = "worker",
              burn_us: float = 0.0, trace: bool = False, at_least_once: bool = False) -> ScaleResult:
        """``workers`` worker processes in one group over the events already on the topic (of ``partitions``),
        in ``sync.scope`` ``scope``; with ``contender="group-relay"`` relays (the worker's transport, no steps,
        ``burn_us`` of CPU per record) instead: the machine's floor for the same group.

        Every worker keeps its partitions paused until all have joined and the partitions are split among
        them; then all start at once ("go") and each reports when it has reached its partitions' end offsets.
        ``trace``: each worker traces its loop (``bench.worker_trace``; the paths in ``ScaleResult.traces``).
        ``at_least_once``: the workers run without transactions (a diagnostic: the scale targets are measured
        exactly-once, the default).
        """
        return self.retrying(f"{workers} {contender}(s)", lambda: self._scale(
            model, events_topic, workers, client, partitions, scope, contender, burn_us, trace, at_least_once))

    def _scale(self, model: str, events_topic: str, workers: int, client: str, partitions: int,
               scope: str, contender: str = "worker", burn_us: float = 0.0, trace: bool = False,
               at_least_once: bool = False) -> ScaleResult:
        _, predictions = self.topics()
        group, go_path, stop_path = self.name("group"), self.path("go"), self.path("stop")
        children, results, readies, traces = [], [], [], []
        for index in range(workers):
            result_path, ready_path = self.path("result"), self.path("ready")
            extra: list[str] = ["--at-least-once"] if at_least_once else []
            if trace:
                traces.append(self.path("trace"))
                extra += ["--trace", str(traces[-1])]
            children.append(self.spawn(
                contender, "--burn-us", str(burn_us), "--model", model, "--result", str(result_path),
                "--ready-file", str(ready_path),
                "--go-file", str(go_path), "--stop-file", str(stop_path), "--bootstrap", self.stack.bootstrap,
                "--topic", events_topic, "--predictions", predictions, "--group", group,
                "--redis-url", self.stack.redis_url, "--transactional-id", f"{group}-{index}", "--client", client,
                "--scope", scope, *extra,
            ))
            results.append(result_path)
            readies.append(ready_path)
        try:
            try:
                _wait_split(readies, children, partitions=partitions, timeout_s=ASSIGN_TIMEOUT_S)
            except TimeoutError as exc:
                for child in children:
                    child.kill()
                raise NotAssignedError(str(exc)) from exc
            threads_before = self.stack.broker_threads_cpu_s()
            go = time.time()
            go_path.touch()
            for path, child in zip(results, children, strict=True):
                wait_for_file(path, 600, "a worker of the group to finish",
                              child.alive)
            threads = self.stack.broker_threads_cpu_s()
            broker_threads = {name: seconds - threads_before.get(name, 0.0) for name, seconds in threads.items()}
        finally:
            stop_path.touch()
        for child in children:
            child.wait()
        reports = [RunResult.read(path) for path in results]
        return ScaleResult(workers, reports, go, partitions, scope, traces, broker_threads)

    # --- memory -------------------------------------------------------------------------------------------

    def memory(self, model: str, n: int, client: str = "kafka-python") -> MemoryResult:
        """A worker over ``n`` events, produced while it runs; its RSS sampled over time by this process."""
        return self.retrying("memory run", lambda: self._memory(model, n, client))

    def _memory(self, model: str, n: int, client: str) -> MemoryResult:
        events, predictions = self.topics()
        result_path, stop_path, ready_path = self.path("result"), self.path("stop"), self.path("ready")
        child = self.spawn("worker", "--model", model, "--n", str(n), "--result", str(result_path),
                           "--stop-file", str(stop_path), "--ready-file", str(ready_path),
                           "--bootstrap", self.stack.bootstrap, "--topic", events,
                           "--predictions", predictions, "--group", self.name("group"),
                           "--redis-url", self.stack.redis_url, "--client", client)
        self.await_ready(ready_path, [child], "the worker to get its partitions")
        producer = threading.Thread(target=self.produce, args=(events, n), name="memory-producer", daemon=True)
        producer.start()
        samples_: list[tuple[float, float]] = []
        try:
            while not result_path.exists():
                if not child.alive():
                    raise RuntimeError(f"memory run: the worker exited early: {child.tail()}")
                rss = child.rss_mib()
                if rss is not None:
                    samples_.append((time.time(), rss))
                time.sleep(0.5)
        finally:
            stop_path.touch()
        producer.join(timeout=60)
        usage = child.wait()
        result = RunResult.read(result_path)
        # from the first event processed on: imports, start-up and the group join are left out
        window = [(t - result.started, rss) for t, rss in samples_ if t >= result.started]
        return MemoryResult(result, window, usage)


# --- results ------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[rank]


@dataclass(slots=True)
class LatencyResult:
    """End-to-end latencies of a paced run (the events of the first ``WARMUP_S`` seconds are left out).

    ``to_send`` is from the event's send to the contender's send of its prediction (the prediction record's
    timestamp), ``to_read`` from there to the prediction being read: the wait for the flush, the transaction
    and the reader's fetch.
    """

    label: str
    rate: float
    sent: int
    received: int
    commit_interval_s: float | None
    p50_ms: float
    p99_ms: float
    max_ms: float
    to_send_p50_ms: float = float("nan")
    to_send_p99_ms: float = float("nan")
    to_read_p50_ms: float = float("nan")
    to_read_p99_ms: float = float("nan")
    #: the contender's CPU (seconds per second, all threads) over the paced run
    cpu: float = float("nan")
    #: the same, of its main thread only (the loop; a kafka-python client's network runs on a thread of its own)
    main_cpu: float = float("nan")
    #: the CPU seconds the broker's JIT compilers used during the paced run (a broker still warming up)
    broker_jit_s: float = float("nan")

    @classmethod
    def of(cls, label: str, rate: float, sent: dict[str, float], received: dict[str, tuple[float, float]],
           commit_interval_s: float | None) -> LatencyResult:
        first = min(sent.values(), default=0.0)
        ids = [i for i, at in sent.items() if at >= first + WARMUP_S and i in received]
        total = [1000.0 * (received[i][0] - sent[i]) for i in ids]
        to_send = [1000.0 * (received[i][1] - sent[i]) for i in ids]
        to_read = [1000.0 * (received[i][0] - received[i][1]) for i in ids]
        return cls(label, rate, len(sent), sum(1 for i in sent if i in received), commit_interval_s,
                   percentile(total, 50), percentile(total, 99), max(total, default=float("nan")),
                   percentile(to_send, 50), percentile(to_send, 99), percentile(to_read, 50), percentile(to_read, 99))


@dataclass(slots=True)
class ScaleResult:
    """A group of workers over one topic (4 partitions, or 1 for the single-partition baseline)."""

    workers: int
    reports: list[RunResult]
    go: float
    partitions: int = 4
    scope: str = "group"
    #: the workers' loop traces, when asked for (``Bench.scale(trace=True)``)
    traces: list[Path] = field(default_factory=list)
    #: CPU seconds of each kind of the broker's threads from "go" until every worker had reported
    broker_threads: dict[str, float] = field(default_factory=dict)

    @property
    def broker_jit_s(self) -> float:
        """CPU seconds the broker's JIT compilers used from "go" until every worker had reported."""
        return sum(seconds for name, seconds in self.broker_threads.items() if name in JIT_THREADS)

    def sync_total(self, key: str) -> float:
        """The sum over the workers of one of the sync costs they reported (``syncs``, ``sync_s``,
        ``sync_bytes_published``, ``sync_bytes_read``)."""
        return sum(float(r.extra.get(key, 0.0)) for r in self.reports)

    @property
    def events(self) -> int:
        return sum(r.events for r in self.reports)

    @property
    def seconds(self) -> float:
        return max(r.finished for r in self.reports) - min(r.started for r in self.reports)

    @property
    def rate(self) -> float:
        return self.events / self.seconds


@dataclass(slots=True)
class MemoryResult:
    """A long worker run's resident memory over time."""

    result: RunResult
    samples: list[tuple[float, float]]
    usage: Usage
    extra: dict[str, Any] = field(default_factory=dict)

    def steady(self) -> list[float]:
        """RSS samples after the first 10% of the run (warm-up: imports, buffers, the model's first growth)."""
        if not self.samples:
            return []
        total = self.samples[-1][0]
        return [rss for t, rss in self.samples if t >= 0.1 * total]


# --- helpers ------------------------------------------------------------------------------------------------


class _Reader(threading.Thread):
    """Reads the predictions topic with ``read_committed``; notes when each prediction id became readable.

    librdkafka (confluent-kafka) fetches in its own C threads, so the reader and the paced producer take little
    of the CPUs the contender and the broker share, and the GIL does not delay the time a prediction is seen.
    """

    def __init__(self, bootstrap: str, topic: str, expected: int) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer
        from confluent_kafka import TopicPartition as Partition

        super().__init__(name="latency-reader", daemon=True)
        #: prediction id -> (when it was read, the prediction record's timestamp), epoch seconds
        self.received: dict[str, tuple[float, float]] = {}
        self._expected = expected
        self._halt = threading.Event()
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"latency-reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed", "enable.auto.commit": False, "fetch.wait.max.ms": 10,
        })
        self._consumer.assign([Partition(topic, 0, OFFSET_BEGINNING)])

    def run(self) -> None:
        try:
            while not self._halt.is_set() and len(self.received) < self._expected:
                message = self._consumer.poll(0.1)
                if message is None or message.error() is not None:
                    continue
                batch = [message, *self._consumer.consume(num_messages=1000, timeout=0)]
                now = time.time()
                for record in batch:
                    if record.error() is None:
                        self.received.setdefault(orjson.loads(record.value() or b"{}")["id"],
                                                 (now, record.timestamp()[1] / 1000.0))
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def paced_run(
    bootstrap: str, events: str, predictions: str, n: int, rate: float, stop_path: Path,
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Send ``n`` events at ``rate`` while reading the predictions; then ask the contender to stop (``stop_path``).
    Returns the send time of each event id, and what the reader saw of each."""
    try:
        reader = _Reader(bootstrap, predictions, n)
        reader.start()
        sent = _send_paced(bootstrap, events, n, rate)
        reader.join(timeout=60)
        reader.stop()
    finally:
        stop_path.touch()
    return sent, reader.received


def _send_paced(bootstrap: str, topic: str, n: int, rate: float) -> dict[str, float]:
    """Send ``n`` events at ``rate`` per second; the send time of each event id.

    The samples are read before the clock starts, so that the load generator spends its CPU on sending only;
    it sends with librdkafka (see :class:`_Reader`); ``linger.ms=1`` adds at most 1 ms to a latency and spares
    the broker a request per event.
    """
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1})
    sent: dict[str, float] = {}
    ready = list(samples(n))
    started = time.monotonic()
    for index, sample in enumerate(ready):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        event_id = f"paced-{index:09d}"
        now = time.time()
        key, value = event_record(sample, event_id, with_label=True, ts=now)
        producer.produce(topic, value, key)
        producer.poll(0)
        sent[event_id] = now
    producer.flush(60)
    return sent


def _wait_split(readies: list[Path], children: list[Child], partitions: int, timeout_s: float = 120) -> None:
    """Until every worker has reported a share and the shares split all partitions between them."""
    deadline = time.monotonic() + timeout_s
    while True:
        shares: list[list[int]] = []
        for path, child in zip(readies, children, strict=True):
            if not child.alive():
                raise RuntimeError(f"a worker exited before the group formed: {child.tail()}")
            with contextlib.suppress(OSError, ValueError):
                shares.append(json.loads(path.read_text()))
        every = [p for share in shares for p in share]
        if len(shares) == len(readies) and all(shares) and sorted(every) == list(range(partitions)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the group did not split {partitions} partitions in {timeout_s:.0f} s: {shares}")
        time.sleep(0.1)


def median_of(runs: list[Measured], key: Callable[[Measured], float]) -> float:
    return statistics.median(key(r) for r in runs)


def temp_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="streamlearn-bench-")
