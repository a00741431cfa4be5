"""The benchmark's plan (:class:`Config`), its results (:class:`Outcome`) and the markdown report.

``docs/benchmarks.md`` is generated between two markers; the text after the end marker (the analysis written
by people, from the figures of a run) is kept when the report is written again.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common import MODEL_TITLES, SOURCE
from bench.suite import WARMUP_S, Bench, LatencyResult, Measured, MemoryResult, ScaleResult, log

BEGIN = "<!-- bench:results:begin -->"
END = "<!-- bench:results:end -->"

TARGET_LOGREG_VS_PLAIN = 1.5
TARGET_ARF_VS_BARE = 0.9
TARGET_P99_MS = 25.0
#: issue 13: at-least-once at 500 events/s against the relay floor of the same client and run, and in ms
LOW_RATE = 500.0
TARGET_LOW_P50_VS_FLOOR = 3.0
TARGET_LOW_P99_VS_FLOOR = 2.0
TARGET_LOW_P99_MS = 10.0
#: issue 13: at-least-once at half the worker's maximum, p99 against the relay floor at that rate
TARGET_HALF_P99_VS_FLOOR = 3.0
#: issue 13: exactly-once p99 at most this many transaction intervals (0.1 s), default client
TARGET_EOS_INTERVALS = 1.5
EOS_INTERVAL_S = 0.1
#: the client ``kafka.client: auto`` resolves to (confluent-kafka is a dependency)
DEFAULT_CLIENT = "confluent"
TARGET_SCALE = 1.6
#: issue 12: one worker in group scope on 4 partitions against the same worker on 1 partition
TARGET_SCALE_PARTITIONS = 0.9
#: the scale stage's warm-up ends after a round in whose runs' windows the broker's JIT compilers used less CPU than
#: this (seconds; a round is six runs), or after ``SCALE_WARMUP_MAX_ROUNDS`` rounds
SCALE_WARM_JIT_S = 0.3
SCALE_WARMUP_MAX_ROUNDS = 5
#: the latency stage's warm-up ends after a round (one unmeasured run of each shape of the rows: relay and worker
#: of each client, exactly-once and at-least-once) in whose windows the broker's JIT used less CPU than this
#: (about 0.1 s a run: a broker that has served every shape a few times still compiles that much)
LATENCY_WARM_JIT_S = 0.6
LATENCY_WARMUP_MAX_ROUNDS = 3
#: the throughput stage's warm-up (per model with a ratio target): unmeasured runs of the target's Kafka contenders
#: until, in one round, the broker's JIT used less CPU than this during them, at most ``THROUGHPUT_WARMUP_MAX_ROUNDS``
THROUGHPUT_WARM_JIT_S = 0.3
THROUGHPUT_WARMUP_MAX_ROUNDS = 3
#: the scale scenario's ``sync.scope`` (issue 12: one model for the whole group)
SCALE_SCOPE = "group"
#: "flat": RSS at the end at most this much above RSS after the first 10% of the run
FLAT_TOLERANCE = 0.05


@dataclass(frozen=True, slots=True)
class Config:
    """How many events each scenario uses (defaults: a full run of a few minutes on 2 cores)."""

    logreg_events: int = 50_000
    arf_events: int = 12_000
    mlp_events: int = 10_000
    latency_seconds: float = 8.0
    scale_events: int = 120_000
    #: at most this many unmeasured rounds of a model's target contenders before its measured throughput turns
    #: (``THROUGHPUT_WARM_JIT_S``)
    throughput_warmup_rounds: int = THROUGHPUT_WARMUP_MAX_ROUNDS
    #: at most this many unmeasured rounds of the scale runs before the measured ones (``SCALE_WARM_JIT_S``)
    scale_warmup_rounds: int = SCALE_WARMUP_MAX_ROUNDS
    #: at most this many unmeasured rounds of the latency rows' shapes before the measured ones
    #: (``LATENCY_WARM_JIT_S``)
    latency_warmup_rounds: int = LATENCY_WARMUP_MAX_ROUNDS
    #: the paced seconds of each latency warm-up run (after the runs' own unmeasured seconds)
    latency_warmup_seconds: float = 3.0
    memory_events: int = 1_000_000
    profile_events: int = 20_000
    repeat: int = 3
    #: turns of the ARF throughput runs: its target's paired ratios spread by +-10 % between turns (the model's
    #: loop is CPU-bound for seconds, the broker compiles beside it), so it takes the median of more of them
    arf_repeat: int = 5
    quick: bool = False
    stages: tuple[str, ...] = ("throughput", "latency", "scale", "memory", "profile")
    models: tuple[str, ...] = ("logreg", "arf", "mlp")
    #: ``--latency-only``: only the latency rows of the targets (relay floor and worker at 500 events/s and at
    #: half max, each client; exactly-once at 0.1 s), after one short throughput run per client for the maximum
    latency_only: bool = False
    #: ``--scale-only``: only the scale scenario (issue 12's throughput targets)
    scale_only: bool = False

    @classmethod
    def smoke(cls) -> Config:
        """The ``--quick`` plan: every scenario, with few events."""
        return cls(logreg_events=1_000, arf_events=200, mlp_events=640, latency_seconds=2.0, scale_events=1_000,
                   scale_warmup_rounds=1, latency_warmup_rounds=1, latency_warmup_seconds=0.5, memory_events=2_000,
                   profile_events=1_000, repeat=1, arf_repeat=1, throughput_warmup_rounds=1, quick=True)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def events(self, model: str) -> int:
        return {"logreg": self.logreg_events, "arf": self.arf_events, "mlp": self.mlp_events}[model]

    def turns(self, model: str) -> int:
        """How many times each contender of ``model``'s throughput runs."""
        return self.arf_repeat if model == "arf" else self.repeat


#: contender key -> what the tables call it
CONTENDERS = {
    "a": "(a) bare model loop, no Kafka",
    "b": "(b) plain kafka-python + River loop",
    "c": "(c) streamlearn worker, exactly-once",
    "c-alos": "(c) streamlearn worker, at-least-once",
    "c-rd": "(c) streamlearn worker, exactly-once, `kafka.client: confluent`",
    "c-rd-alos": "(c) streamlearn worker, at-least-once, `kafka.client: confluent`",
    "c-ckl": "(c) streamlearn worker, exactly-once, checkpoints in the poll loop (`checkpoint.background: false`)",
    "t": "(t) kafka-python alone: poll, orjson, send; no model",
    "r": "(r) relay floor, kafka-python: poll, produce, flush and commit once a second; no model",
    "r-rd": "(r) relay floor, confluent: poll then consume(n, 0), produce, flush and commit once a second; no model",
    "r-rd-eos": "(r) exactly-once relay floor, confluent: poll then consume(n, 0), produce in a transaction, add the "
                "offsets and commit it every interval; no model",
}
#: the worker's Kafka transports (``kafka.client``), each benchmarked
CLIENTS = ("kafka-python", "confluent")
#: the transport of each worker contender
CLIENT_OF = {"c": "kafka-python", "c-alos": "kafka-python", "c-rd": "confluent", "c-rd-alos": "confluent"}
MODELS_IN_ORDER = ("logreg", "arf", "mlp")
#: the latency rows measured ``repeat`` times (the targets and their floors); the median p99 is reported
LATENCY_REPEATED = ("r@500", "c-alos@500", "r-rd@500", "c-rd-alos@500", "r@half", "c-alos@half", "r@half-loaded",
                    "r-rd@half", "c-rd-alos@half", "r-rd@half-loaded", f"r-rd-eos@{EOS_INTERVAL_S:g}s",
                    f"c-rd@{EOS_INTERVAL_S:g}s", f"r-rd-eos@{EOS_INTERVAL_S:g}s-loaded")


#: the profiled workers of the profile stage: key -> (model, client); the torch MLP (with the default client) when
#: the throughput stage runs it, as issue 13 asks for a profile while it is below 0.8x the bare loop
PROFILED: dict[str, tuple[str, str]] = {
    "kafka-python": ("logreg", "kafka-python"), "confluent": ("logreg", "confluent"), "mlp": ("mlp", "confluent"),
}

#: per model, the two contenders of its ratio target (issue 13.4: the worker vs the plain loop; 13.5: the ARF worker
#: vs the bare loop), run one right after the other in each turn
TARGET_PAIRS: dict[str, tuple[str, str]] = {"logreg": ("b", "c-rd"), "arf": ("a", "c-rd")}


def turn_order(model: str, keys: tuple[str, ...], turn: int) -> list[str]:
    """The order the contenders of ``model`` run in during turn ``turn`` (from 0).

    The two contenders of the model's ratio target run first and back to back, so a machine that speeds up or
    slows down within a turn (the broker compiling, a neighbour's load) moves both sides of the ratio alike; which
    of the two runs first alternates from turn to turn. The other contenders follow in ``keys``' order.
    """
    pair = [key for key in TARGET_PAIRS.get(model, ()) if key in keys]
    if len(pair) != 2:
        return list(keys)
    first = pair if turn % 2 == 0 else pair[::-1]
    return [*first, *(key for key in keys if key not in pair)]


def warm_up(what: str, rounds: int, threshold_s: float, run_round: Callable[[], tuple[float, str]],
            record: list[float]) -> None:
    """Unmeasured rounds until the broker's JIT has settled: ``run_round`` runs one round and returns the JIT CPU
    seconds its runs saw and a line for the log; stop after a round under ``threshold_s``, or after ``rounds``.
    Each round's JIT goes to ``record``."""
    for round_ in range(1, rounds + 1):
        jit, summary = run_round()
        record.append(jit)
        log(f"  {what} warm-up round {round_} (not measured): broker JIT {jit:.2f} CPU s in the runs' windows; "
            f"{summary}")
        if jit < threshold_s:
            return
    log(f"  {what}: the broker's JIT had not settled after {rounds} rounds; measuring anyway")


@dataclass(frozen=True, slots=True)
class LatencyPlan:
    """One paced latency row: who, at what rate (fixed, or a fraction of a worker's maximum), with what."""

    key: str
    contender: str
    label: str
    client: str
    at_least_once: bool = True
    interval_s: float | None = None
    rate: float | None = None
    of: str | None = None
    fraction: float = 0.5
    #: a relay loaded to this row's CPU: it spends, per record, the CPU the row's run used beyond the relay's
    #: (both measured just before it, at the same rate)
    loaded_as: str | None = None


def latency_plans(latency_only: bool) -> list[LatencyPlan]:
    """The latency rows in the order they run: each client's relay floor beside its worker, at 500 events/s and at
    half the worker's maximum, then exactly-once (and, in a full run, the plain loop and the 1 s interval)."""
    plans: list[LatencyPlan] = []
    for client, relay, worker in (("kafka-python", "r", "c-alos"), ("confluent", "r-rd", "c-rd-alos")):
        for where, rate, of in (("500", LOW_RATE, None), ("half", None, worker)):
            at = f"at {LOW_RATE:,.0f} events/s" if rate else "at half the worker's max"
            plans.append(LatencyPlan(f"{relay}@{where}", "relay", f"{CONTENDERS[relay]}, {at}", client, rate=rate,
                                     of=of))
            plans.append(LatencyPlan(f"{worker}@{where}", "worker", f"{CONTENDERS[worker]}, {at}", client,
                                     rate=rate, of=of))
        plans.append(LatencyPlan(f"{relay}@half-loaded", "relay", f"{CONTENDERS[relay]}; loaded to the worker's CPU, "
                                 "at half the worker's max", client, of=worker, loaded_as=f"{worker}@half"))
    eos = [("c-rd", "confluent"), ("c", "kafka-python")]
    interval = f"{EOS_INTERVAL_S:g}s"
    # target 3's floor (the default client): a no-model relay in transactions of the same interval, plain and
    # loaded to the exactly-once worker's CPU, around that worker's row
    eos_relay = f"{CONTENDERS['r-rd-eos']} ({EOS_INTERVAL_S:g} s)"
    plans.append(LatencyPlan(f"r-rd-eos@{interval}", "relay", f"{eos_relay}, at half the worker's max", "confluent",
                             at_least_once=False, interval_s=EOS_INTERVAL_S, of="c-rd"))
    for key, client in eos:
        plans.append(LatencyPlan(f"{key}@{interval}", "worker",
                                 f"{CONTENDERS[key]} (commit_interval_s {EOS_INTERVAL_S:g})", client,
                                 at_least_once=False, interval_s=EOS_INTERVAL_S, of=key))
        if key == "c-rd":
            plans.append(LatencyPlan(f"r-rd-eos@{interval}-loaded", "relay",
                                     f"{eos_relay}; loaded to the worker's CPU, at half the worker's max",
                                     "confluent", at_least_once=False, interval_s=EOS_INTERVAL_S, of="c-rd",
                                     loaded_as=f"c-rd@{interval}"))
    # the same at a light load: what the commit costs when the worker is far from its maximum
    plans.append(LatencyPlan(f"r-rd-eos@{interval}@500", "relay", f"{eos_relay}, at {LOW_RATE:,.0f} events/s",
                             "confluent", at_least_once=False, interval_s=EOS_INTERVAL_S, rate=LOW_RATE))
    plans.append(LatencyPlan(f"c-rd@{interval}@500", "worker",
                             f"{CONTENDERS['c-rd']} (commit_interval_s {EOS_INTERVAL_S:g}), at {LOW_RATE:,.0f} "
                             "events/s", "confluent", at_least_once=False, interval_s=EOS_INTERVAL_S, rate=LOW_RATE))
    if not latency_only:
        plans.insert(0, LatencyPlan("b", "plain", CONTENDERS["b"], "kafka-python", of="b"))
        for key, client in eos:
            plans.append(LatencyPlan(f"{key}@1s", "worker", f"{CONTENDERS[key]} (commit_interval_s 1.0, default)",
                                     client, at_least_once=False, of=key))
    return plans


def median_run(runs: list[LatencyResult]) -> LatencyResult:
    """The run of median p99 (of an even count, the higher of the middle two: the report errs on the slow side)."""
    ordered = sorted(runs, key=lambda r: r.p99_ms)
    return ordered[len(ordered) // 2]


def _spread(values: list[float], unit: str = "x", digits: int = 2) -> str:
    """"median of N paired runs: a, b, c" when there is more than one value, else ""."""
    if len(values) < 2:
        return ""
    return f"median of {len(values)} runs: " + ", ".join(f"{v:.{digits}f}{unit}" for v in values) + "; "


@dataclass(slots=True)
class Outcome:
    """Everything one run measured, and where and how."""

    config: Config
    command: str
    machine: dict[str, Any]
    versions: dict[str, str]
    started_utc: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    load_before: tuple[float, float, float] = field(default_factory=os.getloadavg)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0
    #: model -> contender key -> runs
    throughput: dict[str, dict[str, list[Measured]]] = field(default_factory=dict)
    #: key -> the run of median p99 (the only run, for the rows measured once)
    latency: dict[str, LatencyResult] = field(default_factory=dict)
    #: key -> every run of the rows measured ``repeat`` times (the target rows of target 3)
    latency_runs: dict[str, list[LatencyResult]] = field(default_factory=dict)
    #: per transport, one worker then two on the 4-partition topic, ``repeat`` times
    scale: dict[str, list[ScaleResult]] = field(default_factory=dict)
    #: per transport, one worker on a 1-partition topic (the same events), once per repeat, just before the
    #: repeat's runs on 4 partitions
    scale_single: dict[str, list[ScaleResult]] = field(default_factory=dict)
    #: per transport and repeat, the floor: one plain group relay, then one and two loaded with the CPU per event
    #: the repeat's one worker spent beyond the plain relay's (``scale_burn_us``)
    scale_floor: dict[str, list[ScaleResult]] = field(default_factory=dict)
    scale_burn_us: dict[str, list[float]] = field(default_factory=dict)
    #: the broker's JIT CPU seconds in each unmeasured warm-up round of the latency stage
    latency_warmup_jit_s: list[float] = field(default_factory=list)
    #: per model, the broker's JIT CPU seconds in each unmeasured warm-up round of its throughput turns
    throughput_warmup_jit_s: dict[str, list[float]] = field(default_factory=dict)
    #: the broker's JIT CPU seconds in each unmeasured warm-up round of the scale stage
    scale_warmup_jit_s: list[float] = field(default_factory=list)
    memory: dict[str, MemoryResult] = field(default_factory=dict)
    #: per profiled worker (:data:`PROFILED`'s keys), pyinstrument's listings and the profiled run
    profile: dict[str, dict[str, str]] = field(default_factory=dict)
    profiled: dict[str, Measured] = field(default_factory=dict)

    # --- running --------------------------------------------------------------------------------------------

    def run(self, bench: Bench) -> None:
        """Every stage of the plan, in order."""
        stages = self.config.stages
        if "throughput" in stages:
            for model in (m for m in MODELS_IN_ORDER if m in self.config.models):
                keys = {"logreg": ("a", "b", "c", "c-alos", "c-rd", "c-rd-alos", "t"),
                        "arf": ("a", "b", "c", "c-rd", "c-ckl")}.get(model, ("a", "b", "c", "c-rd"))
                self._throughput(bench, model, keys)
        if "latency" in stages:
            if "logreg" not in self.throughput:
                self._throughput(bench, "logreg", ("c", "c-alos", "c-rd", "c-rd-alos") if self.config.latency_only
                                 else ("b", "c", "c-alos", "c-rd", "c-rd-alos"))
            self._latency(bench)
        if "scale" in stages:
            self._scale(bench)
        if "memory" in stages:
            n = self.config.memory_events
            for client in CLIENTS:
                log(f"memory: one worker (logreg, {client}) over {n:,} events, produced while it runs")
                self.memory[client] = bench.memory("logreg", n, client)
        if "profile" in stages:
            self._profile(bench)

    def _throughput(self, bench: Bench, model: str, keys: tuple[str, ...]) -> None:
        n = self.config.events(model)
        topic, _ = bench.topics()
        log(f"throughput {model}: producing {n:,} events")
        bench.produce(topic, n)
        runs = self.throughput.setdefault(model, {})
        for key in keys:  # the tables list the contenders in this order, whatever order they ran in
            runs.setdefault(key, [])
        self._warm_up_throughput(bench, model, keys, topic, n)
        for turn in range(self.config.turns(model)):
            for key in turn_order(model, keys, turn):
                label = CONTENDERS[key]
                measured = self._run_contender(bench, model, key, topic, n)
                runs[key].append(measured)
                log(f"  {model} {label}: {measured.rate:,.0f} events/s, {measured.cpu_per_1k:.3f} CPU s/1k, "
                    f"peak RSS {measured.usage.peak_rss_mib:.0f} MiB")

    @staticmethod
    def _run_contender(bench: Bench, model: str, key: str, topic: str, n: int) -> Measured:
        """One throughput run of contender ``key`` over the ``n`` events on ``topic``."""
        if key == "a":
            return bench.bare(model, n)
        contender = {"b": "plain", "t": "transport"}.get(key, "worker")
        return bench.kafka_contender(contender, model, topic, n, label=CONTENDERS[key],
                                     at_least_once=key.endswith("alos"), client=CLIENT_OF.get(key, "kafka-python"),
                                     checkpoint_in_loop=key == "c-ckl")

    def _warm_up_throughput(self, bench: Bench, model: str, keys: tuple[str, ...], topic: str, n: int) -> None:
        """Unmeasured runs of the Kafka contenders of ``model``'s ratio target until the broker's JIT has settled.

        Each measured contender gets a fresh topic, group and transactional id, and a broker that has just served
        another model's runs still compiles paths these runs take (0.2 to 1.4 CPU s in ARF worker runs of about
        6 s, on the CPUs the model's loop shares): a model's first turns measured the broker's warm-up more than
        the contenders (docs/benchmarks.md). Rounds of one run of each until a round's runs saw less than
        ``THROUGHPUT_WARM_JIT_S`` CPU s of JIT, at most ``Config.throughput_warmup_rounds``.
        """
        kafka = [key for key in TARGET_PAIRS.get(model, ()) if key in keys and key != "a"]
        if not kafka:
            return

        def run_round() -> tuple[float, str]:
            measured = [self._run_contender(bench, model, key, topic, n) for key in kafka]
            return (sum(m.broker_jit_s for m in measured),
                    ", ".join(f"{m.label} {m.rate:,.0f} events/s" for m in measured))

        warm_up(model, self.config.throughput_warmup_rounds, THROUGHPUT_WARM_JIT_S, run_round,
                self.throughput_warmup_jit_s.setdefault(model, []))

    def rate(self, model: str, key: str) -> float | None:
        runs = self.throughput.get(model, {}).get(key)
        return statistics.median(r.rate for r in runs) if runs else None

    def paired_ratios(self, model: str, key: str, base: str) -> list[float]:
        """``key``'s rate over ``base``'s, repeat by repeat (the runs of one repeat ran one after the other, so
        a machine that slows down between repeats moves both sides of a ratio alike)."""
        runs, bases = self.throughput.get(model, {}).get(key, []), self.throughput.get(model, {}).get(base, [])
        return [r.rate / b.rate for r, b in zip(runs, bases, strict=False) if b.rate > 0]

    def scale_ratios(self, client: str) -> list[float]:
        """Two workers over one, repeat by repeat."""
        runs = self.scale.get(client, [])
        return [two.rate / one.rate for one, two in zip(runs[0::2], runs[1::2], strict=False) if one.rate > 0]

    def partition_ratios(self, client: str) -> list[float]:
        """One worker on 4 partitions over the same worker on 1 partition, repeat by repeat."""
        singles, runs = self.scale_single.get(client, []), self.scale.get(client, [])
        return [four.rate / one.rate for one, four in zip(singles, runs[0::2], strict=False) if one.rate > 0]

    def _latency_rate(self, plan: LatencyPlan) -> float | None:
        """The plan's paced rate: fixed, or its fraction of the worker's maximum (None: no maximum measured)."""
        if plan.rate is not None:
            return plan.rate
        max_rate = self.rate("logreg", plan.of or "")
        return None if max_rate is None else plan.fraction * max_rate

    def _warm_up_latency(self, bench: Bench, plans: list[LatencyPlan]) -> None:
        """Unmeasured rounds of the latency rows' shapes until the broker's JIT has settled.

        As in the scale stage (:meth:`_warm_up_scale`): the first paced runs of each client and mode make the
        broker compile new paths (small produce and fetch requests, transactions, read-committed fetches) inside
        the runs' windows, on the CPUs the contenders share. One short run of each shape (contender, client, mode)
        at its highest rate per round, until a round's windows hold less than ``LATENCY_WARM_JIT_S`` CPU s of JIT.
        """
        shapes: dict[tuple[str, str, bool], tuple[LatencyPlan, float]] = {}
        for plan in plans:
            rate = self._latency_rate(plan)
            if rate is None or plan.loaded_as is not None:
                continue
            shape = (plan.contender, plan.client, plan.at_least_once)  # the intervals share the broker's paths
            if shape not in shapes or rate > shapes[shape][1]:
                shapes[shape] = (plan, rate)
        def run_round() -> tuple[float, str]:
            jit, p99s = 0.0, []
            for plan, rate in shapes.values():
                result = bench.paced(plan.contender, "logreg", rate, self.config.latency_warmup_seconds,
                                     label=f"warm-up: {plan.label}", at_least_once=plan.at_least_once,
                                     commit_interval_s=plan.interval_s, client=plan.client)
                jit += result.broker_jit_s
                p99s.append(f"{result.p99_ms:.0f}")
            return jit, f"{len(shapes)} runs, p99 ms: {', '.join(p99s)}"

        warm_up("latency", self.config.latency_warmup_rounds, LATENCY_WARM_JIT_S, run_round,
                self.latency_warmup_jit_s)

    def _latency(self, bench: Bench) -> None:
        seconds = self.config.latency_seconds
        plans = latency_plans(self.config.latency_only)
        self._warm_up_latency(bench, plans)
        # the rows of the targets run ``repeat`` times, interleaved; the others once
        repeated = [plan for plan in plans if plan.key in LATENCY_REPEATED]
        rounds = [plans] + [repeated] * (self.config.repeat - 1)
        for round_plans in rounds:
            for plan in round_plans:
                rate = self._latency_rate(plan)
                if rate is None:
                    continue
                burn_us = self.burn_us(plan, rate)
                if plan.loaded_as is not None and burn_us is None:
                    continue
                log(f"latency: {plan.label} ({rate:,.0f} events/s for {seconds:.0f} s"
                    + (f", {burn_us:.0f} us CPU per record" if burn_us is not None else "") + ")")
                result = bench.paced(plan.contender, "logreg", rate, seconds, label=plan.label,
                                     at_least_once=plan.at_least_once, commit_interval_s=plan.interval_s,
                                     client=plan.client, burn_us=burn_us)
                runs = self.latency_runs.setdefault(plan.key, [])
                runs.append(result)
                self.latency[plan.key] = median_run(runs)
                log(f"  p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms ({result.received}/{result.sent} "
                    f"read), {_cpu(result)}, broker JIT {result.broker_jit_s:.2f} CPU s")

    def burn_us(self, plan: LatencyPlan, rate: float) -> float | None:
        """For a loaded relay: the CPU per record its row's last run used beyond the last plain relay's at that
        rate, in microseconds (None: not a loaded relay, or nothing to load it to)."""
        if plan.loaded_as is None:
            return None
        loaded = self.latency_runs.get(plan.loaded_as)
        floor = self.latency_runs.get(plan.key.removesuffix("-loaded"))
        if not loaded or not floor:
            return None
        return extra_cpu_us(loaded[-1], floor[-1], rate)

    def _scale(self, bench: Bench) -> None:
        n = self.config.scale_events
        topic, _ = bench.topics(partitions=4)
        single, _ = bench.topics(partitions=1)
        log(f"scale: producing {n:,} events on a 4-partition topic and the same on a 1-partition topic")
        bench.produce(topic, n)
        bench.produce(single, n)
        self._warm_up_scale(bench, topic, single)
        for _ in range(self.config.repeat):
            for client in CLIENTS:
                result = bench.scale("logreg", single, 1, client, partitions=1, scope=SCALE_SCOPE)
                self.scale_single.setdefault(client, []).append(result)
                log(f"  {client}, 1 worker, 1 partition ({SCALE_SCOPE} scope): {result.rate:,.0f} events/s")
                for workers in (1, 2):
                    result = bench.scale("logreg", topic, workers, client, partitions=4, scope=SCALE_SCOPE)
                    self.scale.setdefault(client, []).append(result)
                    log(f"  {client}, {workers} worker(s), 4 partitions ({SCALE_SCOPE} scope): "
                        f"{result.rate:,.0f} events/s")
                self._scale_floor(bench, topic, client)

    def _warm_up_scale(self, bench: Bench, topic: str, single: str) -> None:
        """Unmeasured rounds of the scale runs until the broker's JIT has settled.

        A broker just started spends whole CPU seconds compiling (the JVM's JIT) in its first runs of the workers'
        requests (transactions, fetches of several partitions, two clients' request versions), inside the runs'
        windows for the first rounds: a measured run that shares the 2 CPUs with the compilers says more about the
        JVM's warm-up than about the workers (docs/benchmarks.md). Rounds of the measured runs' shapes until the
        compilers used less than ``SCALE_WARM_JIT_S`` CPU seconds inside the windows of a round's runs, at most
        ``Config.scale_warmup_rounds`` rounds.
        """
        def run_round() -> tuple[float, str]:
            rates, jit = [], 0.0
            for client in CLIENTS:
                for events_topic, workers, partitions in ((single, 1, 1), (topic, 1, 4), (topic, 2, 4)):
                    result = bench.scale("logreg", events_topic, workers, client, partitions=partitions,
                                         scope=SCALE_SCOPE)
                    rates.append(f"{client} {workers}w/{partitions}p {result.rate:,.0f}")
                    jit += result.broker_jit_s
            return jit, f"events/s: {', '.join(rates)}"

        warm_up("scale", self.config.scale_warmup_rounds, SCALE_WARM_JIT_S, run_round, self.scale_warmup_jit_s)

    def _scale_floor(self, bench: Bench, topic: str, client: str) -> None:
        """The machine's floor for the scale ratio, right after the workers' runs: group relays that spend the CPU
        per event one worker spent beyond what the relay itself costs, one and then two of them."""
        plain = bench.scale("logreg", topic, 1, client, partitions=4, contender="group-relay")
        one_worker = self.scale[client][-2]
        burn_us = max(0.0, (_cpu_per_event(one_worker) - _cpu_per_event(plain)) * 1e6)
        floor = self.scale_floor.setdefault(client, [])
        floor.append(plain)
        self.scale_burn_us.setdefault(client, []).append(burn_us)
        log(f"  {client}, 1 relay, 4 partitions: {plain.rate:,.0f} events/s; loading relays with {burn_us:.0f} us "
            "CPU per event (the worker's beyond the relay's)")
        for relays in (1, 2):
            result = bench.scale("logreg", topic, relays, client, partitions=4, contender="group-relay",
                                 burn_us=burn_us)
            floor.append(result)
            log(f"  {client}, {relays} loaded relay(s), 4 partitions: {result.rate:,.0f} events/s")

    def scale_floor_ratios(self, client: str) -> list[float]:
        """Two loaded relays over one, repeat by repeat (the floor of :meth:`scale_ratios`)."""
        runs = self.scale_floor.get(client, [])
        return [two.rate / one.rate for one, two in zip(runs[1::3], runs[2::3], strict=False) if one.rate > 0]

    def _profile(self, bench: Bench) -> None:
        import json
        import tempfile

        n = self.config.profile_events
        topic, _ = bench.topics()
        bench.produce(topic, n)
        for key, (model, client) in PROFILED.items():
            if model == "mlp" and "mlp" not in self.config.models:
                continue
            log(f"profile: the worker ({model}, exactly-once, {client}) under pyinstrument over {n:,} events")
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False, dir=bench.work_dir) as handle:
                path = Path(handle.name)
            self.profiled[key] = bench.kafka_contender("worker", model, topic, n, label="profiled worker",
                                                       profile=path, client=client)
            self.profile[key] = json.loads(path.read_text())

    def finish(self, seconds: float) -> None:
        self.seconds = seconds
        self.load_after = os.getloadavg()


# --- environment --------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU count and model, memory, kernel."""
    cpu_model = "unknown"
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model, "memory_gib": round(mem_kib / 1024 / 1024, 1),
            "kernel": platform.release()}


def versions() -> dict[str, str]:
    """Python, the libraries that matter here, the broker and Redis."""
    from services.stack.kafka_server import kafka_version

    found = {"python": platform.python_version()}
    for package in ("river", "torch", "kafka-python", "orjson", "pydantic", "redis", "prometheus-client"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    try:
        found["Kafka broker"] = kafka_version()
    except Exception as exc:
        found["Kafka broker"] = f"unknown ({exc})"
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
        found["Redis server"] = next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), out.strip())
    except OSError:
        found["Redis server"] = "unknown"
    return found


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# --- markdown -----------------------------------------------------------------------------------------------


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base <= 0:
        return "n/a"
    return f"{value / base:.2f}x"


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "**missed**")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def targets(outcome: Outcome) -> list[list[str]]:
    """Issue 13's targets (1-6) and issue 6's scale and memory: what was measured, as a ratio of the same run,
    and whether it is met."""
    rows: list[list[str]] = latency_targets(outcome)
    for key in ("c", "c-rd"):
        worker, plain = outcome.rate("logreg", key), outcome.rate("logreg", "b")
        if worker is not None and plain is not None:
            pairs = outcome.paired_ratios("logreg", key, "b")
            ratio = statistics.median(pairs) if pairs else worker / plain
            default = ", the default client" if CLIENT_OF[key] == DEFAULT_CLIENT else ""
            rows.append([f"4. logreg: worker (exactly-once, everything on; {CLIENT_OF[key]}{default}) vs plain "
                         "loop (b)",
                         f">= {TARGET_LOGREG_VS_PLAIN}x",
                         f"{ratio:.2f}x ({_spread(pairs)}medians {worker:,.0f} vs {plain:,.0f} events/s; one worker: "
                         f"{worker:,.0f} events/s)",
                         _verdict(ratio >= TARGET_LOGREG_VS_PLAIN) if default else
                         ("within" if ratio >= TARGET_LOGREG_VS_PLAIN else "below")])
    for key in ("c", "c-rd", "c-ckl"):
        arf_worker, arf_bare = outcome.rate("arf", key), outcome.rate("arf", "a")
        if arf_worker is not None and arf_bare is not None:
            pairs = outcome.paired_ratios("arf", key, "a")
            ratio = statistics.median(pairs) if pairs else arf_worker / arf_bare
            measured = f"{ratio:.2f}x ({_spread(pairs)}medians {arf_worker:,.0f} vs {arf_bare:,.0f} events/s)"
            if key == "c-ckl":
                rows.append(["5. the same (kafka-python) with checkpoints in the poll loop, "
                             "`checkpoint.background: false` (reference)", f">= {TARGET_ARF_VS_BARE}x", measured,
                             "within" if ratio >= TARGET_ARF_VS_BARE else "below"])
            else:
                default = ", the default client" if CLIENT_OF[key] == DEFAULT_CLIENT else ""
                rows.append([f"5. ARF: worker ({CLIENT_OF[key]}{default}) vs bare River loop (a)",
                             f">= {TARGET_ARF_VS_BARE}x", measured,
                             _verdict(ratio >= TARGET_ARF_VS_BARE) if default else
                             ("within" if ratio >= TARGET_ARF_VS_BARE else "below")])
    for key in ("c-rd", "c"):
        mlp_worker, mlp_bare = outcome.rate("mlp", key), outcome.rate("mlp", "a")
        if mlp_worker is not None and mlp_bare is not None:
            pairs = outcome.paired_ratios("mlp", key, "a")
            ratio = statistics.median(pairs) if pairs else mlp_worker / mlp_bare
            profiled = key == "c-rd" and "mlp" in outcome.profile
            rows.append([f"6. torch MLP: worker (exactly-once, {CLIENT_OF[key]}) vs the bare torch loop (a)",
                         "report (profile if below 0.8x)",
                         f"{ratio:.2f}x ({_spread(pairs)}medians {mlp_worker:,.0f} vs {mlp_bare:,.0f} events/s)"
                         + ("; profiled below, \"Profile of the worker (mlp, ...)\"" if profiled else ""),
                         "reported"])
    for client, runs in outcome.scale.items():
        pairs = outcome.scale_ratios(client)
        if pairs:
            ratio = statistics.median(pairs)
            one = statistics.median(r.rate for r in runs[0::2])
            two = statistics.median(r.rate for r in runs[1::2])
            floors = outcome.scale_floor_ratios(client)
            spread = _spread(floors).removesuffix("; ")
            floor = (f"; the machine's floor, 2 loaded relays vs 1: {statistics.median(floors):.2f}x"
                     + (f" ({spread})" if spread else "") if floors else "")
            rows.append([f"issues 6 and 12: 2 workers vs 1 worker ({client}), 4 partitions, `sync.scope: "
                         f"{runs[0].scope}`", f">= {TARGET_SCALE}x",
                         f"{ratio:.2f}x ({_spread(pairs)}medians {two:,.0f} vs {one:,.0f} events/s{floor})",
                         _verdict(ratio >= TARGET_SCALE)])
        singles = outcome.scale_single.get(client, [])
        pairs = outcome.partition_ratios(client)
        if pairs:
            ratio = statistics.median(pairs)
            four = statistics.median(r.rate for r in runs[0::2])
            one = statistics.median(r.rate for r in singles)
            rows.append([f"issue 12: 1 worker on 4 partitions vs on 1 partition ({client}), `sync.scope: "
                         f"{runs[0].scope}`", f">= {TARGET_SCALE_PARTITIONS}x",
                         f"{ratio:.2f}x ({_spread(pairs)}medians {four:,.0f} vs {one:,.0f} events/s)",
                         _verdict(ratio >= TARGET_SCALE_PARTITIONS)])
    for client, memory in outcome.memory.items():
        first, last, peak, growth = memory_summary(memory)
        events = memory.result.events
        flat = growth <= FLAT_TOLERANCE
        note = "" if events >= 1_000_000 else f" (over {events:,} events, not 1,000,000)"
        rows.append([f"issue 6: resident memory flat over a long run ({client})",
                     f"flat (<= {FLAT_TOLERANCE:.0%} growth)",
                     f"{first:.0f} -> {last:.0f} MiB (max {peak:.0f}), {growth:+.1%}{note}",
                     _verdict(flat) if events >= 1_000_000 else _verdict(flat) + " (shorter run)"])
    return rows


def _runs(outcome: Outcome, key: str) -> str:
    p99s = [r.p99_ms for r in outcome.latency_runs.get(key, [])]
    return f" ({_spread(p99s, ' ms', 1).rstrip('; ')})" if len(p99s) > 1 else ""


def _paired(outcome: Outcome, worker_key: str, floor_key: str) -> str:
    """The worker's p99 over the floor's, run by run of the same round (the rows run interleaved), and their
    median: a slow spell of the machine shows in both runs of its round ("" with fewer than 2 rounds)."""
    workers, floors = outcome.latency_runs.get(worker_key, []), outcome.latency_runs.get(floor_key, [])
    ratios = [w.p99_ms / f.p99_ms for w, f in zip(workers, floors, strict=False) if f.p99_ms > 0]
    if len(ratios) < 2:
        return ""
    return (f"; paired by round: {', '.join(f'{r:.2f}x' for r in ratios)}, median "
            f"{statistics.median(ratios):.2f}x")


def latency_targets(outcome: Outcome) -> list[list[str]]:
    """Issue 13's latency targets: the worker against the relay floor of the same client and run."""
    rows: list[list[str]] = []
    for client, relay, worker in (("confluent", "r-rd", "c-rd-alos"), ("kafka-python", "r", "c-alos")):
        default = " (default client)" if client == DEFAULT_CLIENT else ""
        floor, got = outcome.latency.get(f"{relay}@500"), outcome.latency.get(f"{worker}@500")
        if floor is not None and got is not None:
            p50_ratio, p99_ratio = got.p50_ms / floor.p50_ms, got.p99_ms / floor.p99_ms
            met = (p50_ratio <= TARGET_LOW_P50_VS_FLOOR and p99_ratio <= TARGET_LOW_P99_VS_FLOOR
                   and got.p99_ms <= TARGET_LOW_P99_MS)
            rows.append([f"1. at-least-once, logreg, {LOW_RATE:,.0f} events/s, {client}{default}: worker vs relay "
                         "floor (same client, same run)",
                         f"p50 <= {TARGET_LOW_P50_VS_FLOOR:g}x, p99 <= {TARGET_LOW_P99_VS_FLOOR:g}x and "
                         f"<= {TARGET_LOW_P99_MS:g} ms",
                         f"p50 {got.p50_ms:.1f} vs {floor.p50_ms:.1f} ms = {p50_ratio:.2f}x; p99 {got.p99_ms:.1f}"
                         f"{_runs(outcome, f'{worker}@500')} vs {floor.p99_ms:.1f}{_runs(outcome, f'{relay}@500')} "
                         f"ms = {p99_ratio:.2f}x",
                         _verdict(met) if default else ("within" if met else "outside")])
    for client, relay, worker in (("confluent", "r-rd", "c-rd-alos"), ("kafka-python", "r", "c-alos")):
        floor, got = outcome.latency.get(f"{relay}@half"), outcome.latency.get(f"{worker}@half")
        if floor is not None and got is not None:
            ratio = got.p99_ms / floor.p99_ms
            loaded = outcome.latency.get(f"{relay}@half-loaded")
            context = "" if loaded is None else (
                f"; the relay loaded to the worker's CPU ({_cpu(loaded)}; the worker {_cpu(got)}, the "
                f"relay {_cpu(floor)}): p99 {loaded.p99_ms:.1f}{_runs(outcome, f'{relay}@half-loaded')} ms = "
                f"{loaded.p99_ms / floor.p99_ms:.2f}x the floor, and the worker {got.p99_ms / loaded.p99_ms:.2f}x it")
            rows.append([f"2. at-least-once, logreg, half the worker's max ({got.rate:,.0f} events/s), {client}: "
                         "worker p99 vs relay floor p99", f"<= {TARGET_HALF_P99_VS_FLOOR:g}x",
                         f"{got.p99_ms:.1f}{_runs(outcome, f'{worker}@half')} vs {floor.p99_ms:.1f}"
                         f"{_runs(outcome, f'{relay}@half')} ms = {ratio:.2f}x "
                         f"(p50 {got.p50_ms:.1f} vs {floor.p50_ms:.1f} ms"
                         f"{_paired(outcome, f'{worker}@half', f'{relay}@half')}){context}",
                         _verdict(ratio <= TARGET_HALF_P99_VS_FLOOR)])
    for key, client in (("c-rd", "confluent"), ("c", "kafka-python")):
        for interval, suffix in ((EOS_INTERVAL_S, ""), (EOS_INTERVAL_S, "@500"), (1.0, "")):
            eos_key = f"{key}@{interval:g}s{suffix}"
            eos = outcome.latency.get(eos_key)
            if eos is None:
                continue
            intervals = eos.p99_ms / (1000 * interval)
            target = client == DEFAULT_CLIENT and interval == EOS_INTERVAL_S and not suffix
            rows.append([f"3. exactly-once ({client}{', the default client' if client == DEFAULT_CLIENT else ''}), "
                         f"transaction interval {interval:g} s, at {eos.rate:,.0f} events/s",
                         f"p99 <= {TARGET_EOS_INTERVALS:g}x the interval" if target else "report vs the interval",
                         f"p99 {eos.p99_ms:.0f}{_runs(outcome, eos_key)} ms = {intervals:.2f}x the interval (p50 "
                         f"{eos.p50_ms:.0f} ms){_eos_floor(outcome, eos, interval, suffix)}",
                         _verdict(intervals <= TARGET_EOS_INTERVALS) if target else "reported"])
    return rows


def _cpu(result: LatencyResult) -> str:
    """A paced run's CPU, and its main thread's when measured: "0.77 CPU, main thread 0.55"."""
    main = "" if math.isnan(result.main_cpu) else f", main thread {result.main_cpu:.2f}"
    return f"{result.cpu:.2f} CPU{main}"


def _eos_floor(outcome: Outcome, eos: LatencyResult, interval: float, suffix: str) -> str:
    """Target 3's floor beside an exactly-once row of the same interval and rate: the exactly-once relay, and the
    same relay loaded to the worker's CPU ("" when not measured)."""
    key = f"r-rd-eos@{interval:g}s"
    floor = outcome.latency.get(key + suffix)
    if floor is None or floor.rate != eos.rate:
        return ""
    text = (f"; the exactly-once relay floor: p99 {floor.p99_ms:.0f}{_runs(outcome, key + suffix)} ms = "
            f"{floor.p99_ms / (1000 * interval):.2f}x the interval, the worker {eos.p99_ms / floor.p99_ms:.2f}x it")
    loaded = outcome.latency.get(f"{key}-loaded") if not suffix else None
    if loaded is not None:
        text += (f"; loaded to the worker's CPU ({_cpu(loaded)}; the worker {_cpu(eos)}, the relay "
                 f"{_cpu(floor)}): p99 {loaded.p99_ms:.0f}{_runs(outcome, f'{key}-loaded')} ms = "
                 f"{loaded.p99_ms / (1000 * interval):.2f}x the interval, the worker {eos.p99_ms / loaded.p99_ms:.2f}x "
                 "it")
    return text


def extra_cpu_us(worker: LatencyResult, relay: LatencyResult, rate: float) -> float | None:
    """The CPU per record, in microseconds, that a worker's run used beyond a relay's at ``rate``: the larger of the
    difference of the processes' CPU and that of their main threads (None: not measured).

    A kafka-python client's network thread takes whatever CPU the GIL leaves it, so its process uses about the same
    CPU whatever its loop does; the loop's work shows in the main thread only. A librdkafka client's threads run
    outside the GIL: there the processes' difference is the larger one.
    """
    differences = [worker.cpu - relay.cpu, worker.main_cpu - relay.main_cpu]
    measured = [difference for difference in differences if not math.isnan(difference)]
    if not measured:
        return None
    return max(0.0, *measured) / rate * 1e6


def memory_summary(memory: MemoryResult) -> tuple[float, float, float, float]:
    """RSS after the first 10% of the run, at the end, the maximum, and the growth from first to last."""
    steady = memory.steady()
    if not steady:
        nan = float("nan")
        return nan, nan, nan, nan
    first, last, peak = steady[0], steady[-1], max(steady)
    return first, last, peak, (last - first) / first


def render(outcome: Outcome) -> str:
    """The generated part of docs/benchmarks.md, between the markers."""
    c = outcome.config
    m, v = outcome.machine, outcome.versions
    out: list[str] = [BEGIN, ""]
    out += ["## The run", ""]
    kind = "a **--quick smoke run** (too few events for stable figures)" if c.quick else (
        "a **--latency-only** run (the latency targets only)" if c.latency_only else
        "a **--scale-only** run (the scale targets only)" if c.scale_only else "a full run")
    out += [f"- **When**: {outcome.started_utc}, {kind}, {outcome.seconds / 60:.1f} minutes including the "
            "start and stop of Kafka and Redis.",
            f"- **Command**: `{outcome.command}` (`make bench` runs `.venv/bin/python -m bench`).",
            f"- **Machine**: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB memory, Linux "
            f"{m['kernel']}. Kafka (one KRaft node, 1 GiB heap), Redis, the contender and the load generator "
            "all share these CPUs.",
            f"- **Load**: load average {outcome.load_before[0]:.2f} (1 min) when the run started, "
            f"{outcome.load_after[0]:.2f} when it ended.",
            "- **Versions**: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
            f"- **Events**: the `{SOURCE}` source (River's Phishing, 9 numeric features, inline labels), the same "
            "events for every contender of a model.", ""]
    rows = targets(outcome)
    if rows:
        out += ["## Targets (issues 6, 12 and 13), as ratios measured in this run", ""]
        out += [*_table(["target", "goal", "measured", "verdict"], rows), ""]
    if outcome.throughput:
        out += ["## Throughput", "",
                "Events per second from the first event received to the last one processed with its output "
                "durable (flushed and committed, or the transaction committed); the worker's Redis checkpoints "
                "keep their configured cadence (`checkpoint.every_events` 5,000 / `every_seconds` 10) inside "
                "that window. CPU seconds are the contender "
                "process's own (all threads) within that window, split into the main thread (the loop, the steps, "
                "the model) and the others (kafka-python's IO threads, the metrics endpoint; from `/proc`, in "
                "clock ticks); the broker's CPU in the same window is shown apart. Peak RSS is the process's "
                "maximum resident set (`os.wait4`). "
                + (f"Median of {c.repeat} runs per contender ({c.arf_repeat} for the ARF), the contenders taking "
                   "turns (every contender once, then again; in each turn the two contenders of a model's target "
                   "run first, back to back, which of them first alternating); the targets take the median of the "
                   "ratios of runs of the same turn."
                   if c.repeat > 1 else "One run per contender.")
                + " Before a model's turns, unmeasured runs of its target's Kafka contenders (logreg: the plain "
                "loop and the confluent worker; ARF: the confluent worker) until the broker's JIT compilers used "
                f"less than {THROUGHPUT_WARM_JIT_S} CPU s during a round (at most {c.throughput_warmup_rounds} "
                "rounds); this run's rounds: "
                + ("; ".join(f"{model} " + ", ".join(f"{jit:.2f}" for jit in jits)
                             for model, jits in outcome.throughput_warmup_jit_s.items() if jits) or "none")
                + " JIT CPU s. The column \"broker JIT CPU s\" is what the compilers used during a contender's "
                "runs (median).", ""]
        for model in MODELS_IN_ORDER:
            runs = outcome.throughput.get(model)
            if not runs:
                continue
            bare, plain = outcome.rate(model, "a"), outcome.rate(model, "b")
            out += [f"### {MODEL_TITLES[model]} ({runs[next(iter(runs))][0].result.events:,} events)", ""]
            table_rows = []
            for key, measured in runs.items():
                rate = outcome.rate(model, key)
                cpu = statistics.median(r.cpu_per_1k for r in measured)
                broker = statistics.median(r.broker_cpu_per_1k for r in measured)
                jit = statistics.median(r.broker_jit_s for r in measured)
                rss = max(r.usage.peak_rss_mib for r in measured)
                table_rows.append([CONTENDERS[key], f"{rate:,.0f}", _ratio(rate, bare), _ratio(rate, plain),
                                   f"{cpu:.3f}", _threads(measured), "-" if key == "a" else f"{broker:.3f}",
                                   f"{jit:.2f}", f"{rss:.0f}"])
            header = ["contender", "events/s", "vs (a)", "vs (b)", "CPU s / 1k events",
                      "of which main thread / other threads", "broker CPU s / 1k", "broker JIT CPU s",
                      "peak RSS MiB"]
            out += [*_table(header, table_rows), ""]
        costs = [[MODEL_TITLES[model], f"{run.result.extra['snapshot_ms']:.1f}",
                  f"{run.result.extra['snapshot_kib']:,.0f}", f"{run.result.extra['memory_bytes_ms']:.1f}"]
                 for model in MODELS_IN_ORDER
                 for run in outcome.throughput.get(model, {}).get("a", [])[-1:] if "snapshot_ms" in run.result.extra]
        if costs:
            out += ["### What the model's state costs the worker", "",
                    "Measured on each model after the last bare run (so trained on the same events): one "
                    "checkpoint snapshot (taken every `checkpoint.every_events` / `every_seconds`, then written to "
                    "Redis) and one evaluation of the model-memory gauge (at every commit).", ""]
            out += [*_table(["model", "snapshot ms", "snapshot KiB", "memory gauge ms"], costs), ""]
    if outcome.latency:
        out += ["## End-to-end latency (logreg)", "",
                "A paced producer (librdkafka) sends events at half the contender's maximum throughput of this run "
                "(measured above; for reference also at a quarter and a tenth of it); latency runs from just "
                "before `send()` to the moment a `read_committed` consumer (librdkafka) of the predictions topic "
                "receives the prediction. The paced producer and that reader run in the benchmark's own process, "
                "on the same CPUs as the contender and the "
                f"broker. Each run sends for {WARMUP_S:g} s of warm-up (not measured: connections, producer ids and "
                f"fetch sessions settle), then for {c.latency_seconds:g} s that are measured. "
                + (f"The rows of targets 1 to 3 (the floors, the workers, the loaded relays, and the exactly-once "
                   f"relay and worker of the default client at 0.1 s) run {c.repeat} times, interleaved with each "
                   "other; their row shows the run of median p99. " if c.repeat > 1 else "")
                + "CPU is the contender's (seconds per second, all its threads, and its main thread: the loop) over "
                "the paced run. The relay "
                "loaded to the worker's CPU spends, before producing each polled chunk, the CPU per record that the "
                "worker used beyond the relay in the runs just before it (the larger of the difference of the "
                "processes' CPU and that of their main threads: a kafka-python client's network thread takes what "
                "CPU the GIL leaves it, so there only the main thread shows the loop's work): the floor of any "
                "process that loads these 2 CPUs as the worker does (the broker, the paced producer and the reader "
                "share them). "
                "The exactly-once relay floor (target 3) produces each polled chunk inside a transaction and, every "
                f"{EOS_INTERVAL_S:g} s from the previous commit's start, adds the offsets and commits it in its loop "
                "(producer linger 1 ms, the worker's default); it too runs plain and loaded to the exactly-once "
                "worker's CPU. "
                "The two right-hand columns split each latency at the prediction record's timestamp (when the "
                "contender called `send()` for it). Before the measured rows, unmeasured rounds of one short run "
                f"({c.latency_warmup_seconds:g} s after the warm-up) of each shape of the rows (relay and worker of "
                "each client, at-least-once and exactly-once, at the highest rate of the shape) until the broker's "
                f"JIT compilers used less than {LATENCY_WARM_JIT_S} CPU s in a round's windows (at most "
                f"{c.latency_warmup_rounds} rounds): a broker's first paced runs of each client and mode compile new "
                "paths inside the measured windows. This run's rounds: "
                + (", ".join(f"{jit:.2f}" for jit in outcome.latency_warmup_jit_s) or "none") + " JIT CPU s; the "
                "column \"broker JIT CPU s\" is what the compilers used during each row's run of median p99.", ""]
        lrows = [[r.label, f"{r.rate:,.0f}", f"{r.cpu:.2f} / {r.main_cpu:.2f}", f"{r.received:,}/{r.sent:,}",
                  f"{r.p50_ms:.1f}",
                  f"{r.p99_ms:.1f}",
                  ", ".join(f"{run.p99_ms:.1f}" for run in outcome.latency_runs.get(key, [r])),
                  f"{r.max_ms:.1f}", f"{r.to_send_p50_ms:.1f} / {r.to_send_p99_ms:.1f}",
                  f"{r.to_read_p50_ms:.1f} / {r.to_read_p99_ms:.1f}", f"{r.broker_jit_s:.2f}"]
                 for key, r in outcome.latency.items()]
        out += _table(["contender", "rate (events/s)", "CPU / of which main thread", "predictions read", "p50 ms",
                       "p99 ms",
                       "p99 ms of each run",
                       "max ms", "send -> prediction sent, p50 / p99 ms", "prediction sent -> read, p50 / p99 ms",
                       "broker JIT CPU s"],
                      lrows)
        out += ["", "With exactly-once on, a prediction is readable only once its transaction commits; the "
                "worker commits every `worker.commit_interval_s` seconds or `worker.commit_every_events` "
                "events, whichever comes first, so p99 follows the interval.", ""]
    if outcome.scale:
        scope = next(iter(outcome.scale.values()))[0].scope
        out += [f"## Horizontal scale (logreg, exactly-once, `sync.scope: {scope}`)", "",
                f"{c.scale_events:,} events already on a 4-partition topic, and the same events on a 1-partition "
                f"topic; the workers run in `sync.scope: {scope}` (one model for the whole group: each worker "
                "syncs it with the others at `sync.every_events` / `sync.every_s`, each sync a checkpoint). The "
                "workers of one group keep their partitions paused until the group has formed and split the "
                "partitions, then start together. Events/s from the first event processed by any worker to the "
                "last one processed and committed. Syncs, their time (deltas, merges and views, "
                "`streamlearn_sync_seconds`) and bytes (`streamlearn_sync_bytes`, published / read) are summed "
                "over the group's workers. Before the measured runs, unmeasured rounds of the same runs (each "
                "transport: one worker on 1 partition, one on 4, two on 4) until the broker's JIT compilers used less "
                f"than {SCALE_WARM_JIT_S} CPU s in the windows of a round's runs (at most {c.scale_warmup_rounds} "
                "rounds): a broker just started spends CPU seconds compiling in its first runs of the workers' "
                "requests, on the CPUs the workers share. This run's rounds: "
                + (", ".join(f"{jit:.2f}" for jit in outcome.scale_warmup_jit_s) or "none") + " JIT CPU s; the "
                "column \"broker JIT CPU s\" is what the compilers used during each measured run."
                + (f" Per repeat: one worker on 1 partition, one on 4, two on 4, one after the other; {c.repeat} "
                   f"repeats, and each target takes the median of the {c.repeat} ratios of runs of the same "
                   "repeat." if c.repeat > 1 else ""), ""]
        srows = []
        for client, scale_runs in outcome.scale.items():
            singles = outcome.scale_single.get(client, [])
            for index, s in enumerate(scale_runs):
                repeat = index // 2
                single = singles[repeat].rate if repeat < len(singles) else None
                one = scale_runs[index - index % 2].rate
                if index % 2 == 0 and repeat < len(singles):
                    srows.append(_scale_row(client, repeat, singles[repeat], single, one))
                srows.append(_scale_row(client, repeat, s, single, one))
        out += _table(["transport", "repeat", "partitions", "workers", "events", "seconds", "events/s",
                       "vs 1 worker, 1 partition", "vs 1 worker, 4 partitions", "syncs", "sync ms",
                       "sync KiB published / read", "broker JIT CPU s", "per worker"], srows)
        if outcome.scale_floor:
            out += ["", "The machine's floor for the same group, right after each repeat's workers: group relays "
                    "(`python -m bench.runner group-relay`: the worker's own Kafka transport, no steps; each record "
                    "produced as it came, flush and commit once a second), first one plain, then one and two that "
                    "spend per event the CPU the repeat's one worker on 4 partitions spent beyond the plain "
                    "relay's. Two loaded relays over one is the ratio this machine gives a group doing the "
                    "worker's work per event, without the worker's code.", ""]
            frows = []
            for client, floor_runs in outcome.scale_floor.items():
                burns = outcome.scale_burn_us.get(client, [])
                for index, relay in enumerate(floor_runs):
                    floor_repeat, step = index // 3, index % 3
                    burn = burns[floor_repeat] if step and floor_repeat < len(burns) else 0.0
                    alike = floor_runs[index - 1].rate if step == 2 else relay.rate
                    frows.append([client, str(floor_repeat + 1), "plain" if step == 0 else f"{burn:.0f} us",
                                  str(relay.workers), f"{relay.events:,}", f"{relay.seconds:.2f}",
                                  f"{relay.rate:,.0f}", _ratio(relay.rate, alike) if step else "",
                                  f"{1e6 * _cpu_per_event(relay):.0f}"])
            out += _table(["transport", "repeat", "relay", "relays", "events", "seconds", "events/s",
                           "vs 1 relay alike", "CPU us per event"], frows)
        out += ["", f"This machine has {m['nproc']} CPUs, shared by the workers, the broker and Redis.", ""]
    if outcome.memory:
        out += ["## Resident memory over a long run (logreg, exactly-once)", "",
                "One worker per transport over the events of the row (a producer sends them while it runs), its "
                "RSS sampled every 0.5 s from `/proc` from its first event on (`--memory-events` sets the count; "
                "the default is the issue's 1,000,000).", ""]
        mrows = []
        for client, mem in outcome.memory.items():
            first, last, peak, growth = memory_summary(mem)
            total = mem.samples[-1][0] if mem.samples else 0.0
            marks = []
            for fraction in (0.1, 0.25, 0.5, 0.75, 1.0):
                at = [rss for t, rss in mem.samples if t >= fraction * total]
                marks.append(f"{at[0]:.0f}" if at else "n/a")
            mrows.append([client, f"{mem.result.events:,} at {mem.result.rate:,.0f}/s", *marks, f"{peak:.0f}",
                          f"{growth:+.1%} ({last - first:+.1f} MiB)"])
        header = ["transport", "events", "RSS (MiB) after 10% of the run", "25%", "50%", "75%", "end",
                  "max (after 10%)", "growth"]
        out += [*_table(header, mrows), ""]
    for key, profile in outcome.profile.items():
        model, client = PROFILED.get(key, ("logreg", key))
        prof = outcome.profiled.get(key)
        why = (" Issue 13 asks for it while the MLP worker is below 0.8x the bare torch loop (target 6 above)."
               if model == "mlp" else "")
        out += [f"## Profile of the worker ({model}, exactly-once, {client})", "",
                f"pyinstrument, main thread (the poll loop and the steps; the client library's own threads are "
                f"not sampled) over {c.profile_events:,} events"
                + (f" ({prof.rate:,.0f} events/s under the profiler)." if prof else ".") + why, "",
                "The call tree (library frames folded by pyinstrument; seconds of wall time):", "", "```"]
        out += [*_tree(profile.get("tree", ""), 70), "```", "", "Functions by own time (top 25):", "", "```"]
        out += [*_flat(profile.get("flat_self", ""), 25), "```", ""]
    out += [END]
    return "\n".join(out) + "\n"


def _cpu_per_event(s: ScaleResult) -> float:
    """CPU seconds per event of a scale run, over its processes."""
    return sum(r.cpu_s for r in s.reports) / max(s.events, 1)


def _scale_row(client: str, repeat: int, s: ScaleResult, single: float | None, one: float) -> list[str]:
    """One row of the scale table; ``single`` and ``one``: the rates of one worker on 1 and on 4 partitions of the
    same repeat."""
    return [client, str(repeat + 1), str(s.partitions), str(s.workers), f"{s.events:,}", f"{s.seconds:.2f}",
            f"{s.rate:,.0f}", _ratio(s.rate, single), _ratio(s.rate, one), f"{s.sync_total('syncs'):.0f}",
            f"{1000 * s.sync_total('sync_s'):.1f}",
            f"{s.sync_total('sync_bytes_published') / 1024:,.1f} / {s.sync_total('sync_bytes_read') / 1024:,.1f}",
            f"{s.broker_jit_s:.2f}",
            "; ".join(f"{r.extra.get('partitions')}: {r.events:,} events in {r.seconds:.2f} s" for r in s.reports)]


def _threads(runs: list[Measured]) -> str:
    """Median CPU s per 1,000 events of the main thread and of all other threads (kafka-python's IO threads,
    the metrics endpoint); "-" for a single-threaded contender."""
    splits = []
    for run in runs:
        threads = run.result.extra.get("thread_cpu_s")
        if not threads:
            return "-"
        main = threads.get("MainThread", 0.0)
        per_k = 1000.0 / max(run.result.events, 1)
        splits.append((main * per_k, (sum(threads.values()) - main) * per_k))
    return f"{statistics.median(m for m, _ in splits):.3f} / {statistics.median(o for _, o in splits):.3f}"


def _tree(text: str, top: int) -> list[str]:
    """pyinstrument's call tree without its banner: the duration line, then the first ``top`` lines."""
    lines = text.splitlines()
    duration = next((line.split("Duration:", 1)[1].strip() for line in lines if "Duration:" in line), "")
    start = next((i for i, line in enumerate(lines) if re.match(r"^\d+\.\d+ ", line)), len(lines))
    body = [line.rstrip() for line in lines[start:] if line.strip()]
    return ([f"Duration: {duration}"] if duration else []) + body[:top]


def _flat(text: str, top: int) -> list[str]:
    """The first ``top`` entries of pyinstrument's flat listing, without its banner."""
    body = [line.rstrip() for line in text.splitlines() if re.match(r"^\s*\d+\.\d+ ", line)]
    return body[:top]


TEMPLATE_HEAD = """# Benchmarks

`make bench` (that is, `.venv/bin/python -m bench`) measures, in one run and on the same events:

- **(a)** the bare model loop, no Kafka: River `predict_one` then `learn_one` over the event dicts, or the torch
  learner's own mini-batch loop (`TorchLearner.process`, chunks of 500 rows, batch size 64);
- **(b)** a plain kafka-python + River loop as the tutorials write it: iterate a `KafkaConsumer`, `json.loads`,
  `predict_one`, `learn_one`, `producer.send(json.dumps(...))`, then `producer.flush()` and `consumer.commit()`
  every second or 10,000 events (the worker's default commit policy; same model, same prequential order);
- **(t)** for reference, kafka-python alone at its best (batch polls, orjson, one `send` per record, flush
  then commit; no model): what any kafka-python consumer-producer pays per event before doing any work;
- **(r)** the latency floor, with each client: a relay with no model (consume, produce the record to a second
  topic, flush and commit once a second), tuned for latency as issue 13 describes it (librdkafka: `poll` then
  `consume(n, 0)`, linger 0; kafka-python: `poll(timeout_ms=50)`, `fetch_max_wait_ms` 5, linger 0). It runs in
  the same run and at the same rates as the at-least-once worker of the same client (500 events/s and half the
  worker's maximum), and the latency targets are ratios to it;
- **(c)** streamlearn's `Worker` (`services/worker/worker.py`) with its settings from `shared/settings.py`:
  validation, cleaning, metrics endpoint, drift monitoring, checkpoints to Redis and exactly-once
  transactions on (at-least-once where marked).

Models: River `StandardScaler` + `LogisticRegression` (the worker's preprocessing prefix), River
`ARFClassifier(n_models=10)`, and the torch MLP (`kind: torch.mlp`, batch size 64, CPU). The benchmark starts its
own Kafka and Redis on free ports in a temporary directory (as the tests do) and stops them at the end; every
contender is a separate process (`python -m bench.runner ...`). `--quick` is a smoke run of a few seconds per
scenario; the event counts of each scenario are flags (`python -m bench --help`). `make bench-latency`
(`python -m bench --latency-only`) runs only the latency targets' rows (the floor and the worker of each client at
500 events/s and at half the worker's maximum, exactly-once at 0.1 s) after one short throughput run per worker for
its maximum: a few minutes; it prints its report and leaves this file alone. `make bench-scale`
(`python -m bench --scale-only`) runs only the scale scenario (in `sync.scope: group`, each transport, 3 repeats:
one worker on a 1-partition topic, then one and two workers on a 4-partition topic, the same events) and issue 12's
two throughput targets; it too prints its report and leaves this file alone. `python -m bench.txn_costs` times
each step of an exactly-once commit with each client; `python -m bench.latency_stages` splits a paced run's
latency by stage (the worker's loop traced call by call, the relay beside it, optionally an earlier checkout of
the code with `--before`). Benchmarks are not tests:
they report. Every number in the results comes from the run they describe; the analysis after them
quotes that run (and, where it says so, earlier runs of the same command).

"""

TEMPLATE_TAIL = """
## Analysis

(Written from the figures above after a run; kept when the results are regenerated.)
"""


def write_doc(path: Path, generated: str) -> None:
    """Replace the generated part of ``path`` (or write the whole document the first time)."""
    if path.exists() and BEGIN in (text := path.read_text()) and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        path.write_text(head + generated.rstrip("\n") + tail)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEMPLATE_HEAD + generated + TEMPLATE_TAIL)
