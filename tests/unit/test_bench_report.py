"""The benchmark's report: ratios against baselines of the same run, verdicts, and a kept analysis section."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import config_from, parse_args
from bench.common import RunResult
from bench.report import BEGIN, END, Config, Outcome, median_run, render, targets, write_doc
from bench.suite import LatencyResult, Measured, MemoryResult, ScaleResult, Usage, percentile


def _measured(contender: str, model: str, events: int, seconds: float, cpu_s: float = 1.0) -> Measured:
    result = RunResult(contender, model, events=events, started=100.0, finished=100.0 + seconds, cpu_s=cpu_s)
    return Measured(contender, result, Usage(0, cpu_s + 1.0, 150.0), broker_cpu_s=0.5)


def _outcome() -> Outcome:
    outcome = Outcome(config=Config(), command=".venv/bin/python -m bench", machine={
        "nproc": 2, "cpu_model": "test CPU", "memory_gib": 8.0, "kernel": "test"}, versions={"python": "3.11"})
    outcome.throughput["logreg"] = {
        "a": [_measured("bare", "logreg", 10_000, 0.5)],
        "b": [_measured("plain", "logreg", 10_000, 2.0)],
        "c": [_measured("worker", "logreg", 10_000, 1.0)],
        "c-rd": [_measured("worker", "logreg", 10_000, 0.8)],
    }
    outcome.throughput["arf"] = {
        "a": [_measured("bare", "arf", 1_000, 1.0)],
        "c-rd": [_measured("worker", "arf", 1_000, 1.25)],
    }
    outcome.throughput["mlp"] = {
        "a": [_measured("bare", "mlp", 1_000, 1.0)],
        "c-rd": [_measured("worker", "mlp", 1_000, 2.0)],
    }
    # the relay floor and the worker of the default client at 500 events/s: 2x at p50, 1.5x at p99, 6 ms
    outcome.latency["r-rd@500"] = LatencyResult("relay", 500.0, 1000, 1000, None, 1.0, 4.0, 9.0)
    outcome.latency["c-rd-alos@500"] = LatencyResult("alos", 500.0, 1000, 1000, None, 2.0, 6.0, 30.0)
    # kafka-python at half max: 4x the floor's p99
    outcome.latency["r@half"] = LatencyResult("relay", 3_000.0, 1000, 1000, None, 5.0, 20.0, 30.0)
    outcome.latency["c-alos@half"] = LatencyResult("alos", 3_000.0, 1000, 1000, None, 9.0, 80.0, 90.0)
    outcome.latency["c-rd@0.1s"] = LatencyResult("eos", 5_000.0, 1000, 1000, 0.1, 90.0, 140.0, 160.0)
    outcome.scale["kafka-python"] = [
        ScaleResult(1, [RunResult("worker", "logreg", 4_000, 0.0, 1.0)], 0.0),
        ScaleResult(2, [RunResult("worker", "logreg", 2_000, 0.0, 0.6), RunResult("worker", "logreg", 2_000, 0.1,
                                                                                    0.65)], 0.0),
    ]
    samples = [(float(t), 100.0 + (5.0 if t > 1 else 0.0)) for t in range(20)]
    outcome.memory["kafka-python"] = MemoryResult(RunResult("worker", "logreg", 1_000_000, 0.0, 100.0), samples,
                                                  Usage(0, 1.0, 110))
    return outcome


def test_targets_are_ratios_of_the_same_run() -> None:
    rows: dict[str, list[str]] = {}
    for row in targets(_outcome()):
        rows.setdefault(row[0][:2], row)  # the first row of each target
    assert "= 2.00x" in rows["1."][2] and "= 1.50x" in rows["1."][2] and rows["1."][3] == "**met**"
    assert "= 4.00x" in rows["2."][2] and rows["2."][3] == "**missed**"
    assert "1.40x the interval" in rows["3."][2] and rows["3."][3] == "**met**"
    default = [row for row in targets(_outcome()) if row[0].startswith("4.") and "the default client" in row[0]]
    assert default and "2.50x" in default[0][2] and default[0][3] == "**met**"  # 12,500 vs 5,000 events/s
    plain = [row for row in targets(_outcome()) if row[0].startswith("4.") and "kafka-python" in row[0]]
    assert plain and "2.00x" in plain[0][2] and plain[0][3] == "within"  # 5,000 vs 2,500 events/s
    assert "0.80x" in rows["5."][2] and rows["5."][3] == "**missed**"  # 800 vs 1,000 events/s
    assert "0.50x" in rows["6."][2] and rows["6."][3] == "reported"
    scale = next(row for row in targets(_outcome()) if row[0].startswith("issues 6 and 12: 2 workers"))
    assert "1.54x" in scale[2] and scale[3] == "**missed**"  # 4,000 in 0.65 s vs 4,000 in 1 s
    memory = next(row for row in targets(_outcome()) if row[0].startswith("issue 6: resident"))
    assert memory[3] == "**met**"  # 105 -> 105 MiB after the first 10%


def test_render_has_every_section_between_the_markers() -> None:
    markdown = render(_outcome())
    assert markdown.startswith(BEGIN) and markdown.rstrip().endswith(END)
    for heading in ("## Targets", "## Throughput", "## End-to-end latency", "## Horizontal scale",
                    "## Resident memory"):
        assert heading in markdown
    assert "| (b) plain kafka-python + River loop | 5,000 |" in markdown
    assert "test CPU" in markdown and "`.venv/bin/python -m bench`" in markdown


def test_write_doc_keeps_the_text_after_the_results(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    write_doc(doc, f"{BEGIN}\nfirst\n{END}\n")
    doc.write_text(doc.read_text().replace("(Written from the figures", "Our analysis. (Written from the figures"))
    write_doc(doc, f"{BEGIN}\nsecond\n{END}\n")
    text = doc.read_text()
    assert "second" in text and "first" not in text and "Our analysis." in text and text.count(BEGIN) == 1


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def test_repeated_runs_give_paired_ratios_and_median_runs() -> None:
    outcome = _outcome()
    # three turns: the machine slows down in the last one, for both contenders alike
    outcome.throughput["arf"] = {
        "a": [_measured("bare", "arf", 1_000, s) for s in (1.0, 1.0, 2.0)],
        "c-rd": [_measured("worker", "arf", 1_000, s) for s in (1.05, 1.2, 2.1)],
    }
    arf = next(row for row in targets(outcome) if row[0].startswith("5. ARF"))
    # per turn 0.95x, 0.83x, 0.95x: median 0.95x (the ratio of medians would be 1,000/1,052 ... 833/1,000)
    assert arf[2].startswith("0.95x (median of 3 runs: 0.95x, 0.83x, 0.95x;") and arf[3] == "**met**"

    one = ScaleResult(1, [RunResult("worker", "logreg", 4_000, 0.0, 1.0)], 0.0)
    slow_one = ScaleResult(1, [RunResult("worker", "logreg", 4_000, 0.0, 2.0)], 0.0)
    two = ScaleResult(2, [RunResult("worker", "logreg", 4_000, 0.0, 0.6)], 0.0)
    slow_two = ScaleResult(2, [RunResult("worker", "logreg", 4_000, 0.0, 1.2)], 0.0)
    outcome.scale["kafka-python"] = [one, two, slow_one, slow_two, one, ScaleResult(2, [
        RunResult("worker", "logreg", 4_000, 0.0, 0.8)], 0.0)]
    scale = next(row for row in targets(outcome) if row[0].startswith("issues 6 and 12: 2 workers"))
    assert scale[2].startswith("1.67x (median of 3 runs: 1.67x, 1.67x, 1.25x;") and scale[3] == "**met**"

    outcome.latency_runs["c-alos@half"] = [LatencyResult("alos", 3_000.0, 1000, 1000, None, 5.0, p99, 40.0)
                                           for p99 in (30.0, 22.0, 24.0)]
    outcome.latency["c-alos@half"] = median_run(outcome.latency_runs["c-alos@half"])
    latency = next(row for row in targets(outcome) if row[0].startswith("2.") and "kafka-python" in row[0])
    assert latency[2].startswith("24.0 (median of 3 runs: 30.0 ms, 22.0 ms, 24.0 ms) vs 20.0 ms = 1.20x")
    assert latency[3] == "**met**"
    assert "| 24.0 | 30.0, 22.0, 24.0 |" in render(outcome)
    outcome.latency["c-alos@half"].cpu, outcome.latency["c-alos@half"].main_cpu = 0.84, 0.52
    assert "| alos | 3,000 | 0.84 / 0.52 |" in render(outcome), "the latency table gives the main thread's CPU"


def test_one_worker_on_four_partitions_against_one_partition_in_group_scope() -> None:
    outcome = _outcome()
    # per repeat: 1 partition 4,000 events in 1.0 s; 4 partitions 4,000 in 1.0 s, then in 1.25 s
    single = ScaleResult(1, [RunResult("worker", "logreg", 4_000, 0.0, 1.0, extra={
        "partitions": [0], "syncs": 2, "sync_s": 0.004, "sync_bytes_published": 2048, "sync_bytes_read": 0})],
        0.0, partitions=1)
    outcome.scale_single["kafka-python"] = [single]
    scale = next(row for row in targets(outcome) if row[0].startswith("issues 6 and 12: 2 workers"))
    assert "`sync.scope: group`" in scale[0]
    partitions = next(row for row in targets(outcome) if row[0].startswith("issue 12: 1 worker on 4 partitions"))
    assert partitions[1] == ">= 0.9x" and partitions[2].startswith("1.00x") and partitions[3] == "**met**"
    outcome.scale_single["kafka-python"] = [ScaleResult(1, [RunResult("worker", "logreg", 4_000, 0.0, 0.8)], 0.0,
                                                        partitions=1)]
    partitions = next(row for row in targets(outcome) if row[0].startswith("issue 12: 1 worker on 4 partitions"))
    assert partitions[2].startswith("0.80x") and partitions[3] == "**missed**"  # 4,000 vs 5,000 events/s

    outcome.scale_single["kafka-python"] = [single]
    markdown = render(outcome)
    assert "## Horizontal scale (logreg, exactly-once, `sync.scope: group`)" in markdown
    # the 1-partition row comes first in its repeat, with its ratio to one worker on 4 partitions and its syncs
    assert "| kafka-python | 1 | 1 | 1 | 4,000 | 1.00 | 4,000 | 1.00x | 1.00x | 2 | 4.0 | 2.0 / 0.0 |" in markdown
    assert "| kafka-python | 1 | 4 | 2 | 4,000 | 0.65 | 6,154 | 1.54x | 1.54x | 0 |" in markdown


def test_scale_only_runs_the_scale_stage_alone() -> None:
    config = config_from(parse_args(["--scale-only", "--scale-events", "2000", "--repeat", "1"]))
    assert config.scale_only and config.stages == ("scale",) and config.scale_events == 2_000
    assert config.repeat == 1 and not config.latency_only
    assert config_from(parse_args(["--scale-only"])).repeat == 3


def test_the_loaded_relay_spends_the_cpu_the_worker_used_beyond_the_relay() -> None:
    from bench.report import latency_plans

    outcome = _outcome()
    plans = {plan.key: plan for plan in latency_plans(latency_only=True)}
    loaded = plans["r-rd@half-loaded"]
    assert loaded.contender == "relay" and loaded.loaded_as == "c-rd-alos@half" and loaded.client == "confluent"
    keys = [plan.key for plan in latency_plans(latency_only=True)]
    assert keys.index("r-rd@half-loaded") > keys.index("c-rd-alos@half") > keys.index("r-rd@half")
    assert outcome.burn_us(loaded, 9_000.0) is None, "nothing measured yet: no loaded run"
    relay = LatencyResult("relay", 9_000.0, 1000, 1000, None, 1.0, 4.0, 9.0, cpu=0.15)
    worker = LatencyResult("alos", 9_000.0, 1000, 1000, None, 4.0, 30.0, 60.0, cpu=0.78)
    outcome.latency_runs["r-rd@half"], outcome.latency_runs["c-rd-alos@half"] = [relay], [worker]
    assert outcome.burn_us(loaded, 9_000.0) == pytest.approx((0.78 - 0.15) / 9_000 * 1e6)  # 70 us per record
    assert outcome.burn_us(plans["r-rd@half"], 9_000.0) is None, "the plain relay spends nothing"
    worker.cpu = 0.1
    assert outcome.burn_us(loaded, 9_000.0) == 0.0, "never negative"


def test_the_loaded_relay_takes_the_main_threads_difference_when_it_is_the_larger() -> None:
    """kafka-python's network thread fills what the GIL leaves: the processes use the same CPU, their loops do
    not."""
    from bench.report import extra_cpu_us

    relay = LatencyResult("relay", 6_000.0, 1000, 1000, None, 4.0, 13.0, 20.0, cpu=0.82, main_cpu=0.25)
    worker = LatencyResult("alos", 6_000.0, 1000, 1000, None, 13.0, 80.0, 90.0, cpu=0.82, main_cpu=0.61)
    assert extra_cpu_us(worker, relay, 6_000.0) == pytest.approx((0.61 - 0.25) / 6_000 * 1e6)  # 60 us per record
    worker.cpu = 1.30
    assert extra_cpu_us(worker, relay, 6_000.0) == pytest.approx((1.30 - 0.82) / 6_000 * 1e6), "the larger one"
    relay.main_cpu = worker.main_cpu = float("nan")
    assert extra_cpu_us(worker, relay, 6_000.0) == pytest.approx((1.30 - 0.82) / 6_000 * 1e6), "main not measured"
    relay.cpu = float("nan")
    assert extra_cpu_us(worker, relay, 6_000.0) is None


def test_the_half_max_row_reports_the_loaded_relay_beside_the_floor() -> None:
    outcome = _outcome()
    outcome.latency["r@half"].cpu, outcome.latency["c-alos@half"].cpu = 0.30, 0.80
    outcome.latency["r@half"].main_cpu, outcome.latency["c-alos@half"].main_cpu = 0.20, 0.60
    outcome.latency["r@half-loaded"] = LatencyResult("loaded", 3_000.0, 1000, 1000, None, 6.0, 40.0, 50.0, cpu=0.81,
                                                     main_cpu=0.59)
    row = next(row for row in targets(outcome) if row[0].startswith("2.") and "kafka-python" in row[0])
    assert "= 4.00x" in row[2] and row[3] == "**missed**", "the target stays the ratio to the plain floor"
    assert ("(0.81 CPU, main thread 0.59; the worker 0.80 CPU, main thread 0.60, the relay 0.30 CPU, main thread "
            "0.20)") in row[2]
    assert "p99 40.0 ms = 2.00x the floor, and the worker 2.00x it" in row[2]


def test_the_half_max_row_pairs_the_runs_of_each_round_and_keeps_its_verdict() -> None:
    outcome = _outcome()
    relays = [LatencyResult("relay", 3_000.0, 1000, 1000, None, 5.0, p99, 30.0) for p99 in (5.0, 25.0, 6.0)]
    workers = [LatencyResult("alos", 3_000.0, 1000, 1000, None, 9.0, p99, 90.0) for p99 in (140.0, 26.0, 11.0)]
    outcome.latency_runs["r@half"], outcome.latency["r@half"] = relays, median_run(relays)
    outcome.latency_runs["c-alos@half"], outcome.latency["c-alos@half"] = workers, median_run(workers)
    row = next(row for row in targets(outcome) if row[0].startswith("2.") and "kafka-python" in row[0])
    assert "26.0 (median of 3 runs: 140.0 ms, 26.0 ms, 11.0 ms) vs 6.0" in row[2]
    assert "paired by round: 28.00x, 1.04x, 1.83x, median 1.83x" in row[2]
    assert "= 4.33x" in row[2] and row[3] == "**missed**", "the verdict stays the ratio of the median runs"
    outcome.latency_runs["r@half"] = relays[:1]
    row = next(row for row in targets(outcome) if row[0].startswith("2.") and "kafka-python" in row[0])
    assert "paired" not in row[2], "one round: nothing to pair"


def test_the_exactly_once_target_takes_the_median_of_its_runs() -> None:
    from bench.report import LATENCY_REPEATED

    assert "c-rd@0.1s" in LATENCY_REPEATED
    outcome = _outcome()
    runs = [LatencyResult("eos", 5_000.0, 1000, 1000, 0.1, 60.0, p99, 400.0) for p99 in (386.0, 124.0, 140.0)]
    outcome.latency_runs["c-rd@0.1s"], outcome.latency["c-rd@0.1s"] = runs, median_run(runs)
    row = next(row for row in targets(outcome) if row[0].startswith("3.") and "confluent" in row[0])
    assert "p99 140 (median of 3 runs: 386.0 ms, 124.0 ms, 140.0 ms) ms = 1.40x" in row[2] and row[3] == "**met**"


def test_the_exactly_once_target_reports_the_exactly_once_relay_beside_the_interval() -> None:
    from bench.report import LATENCY_REPEATED, latency_plans

    plans = latency_plans(latency_only=True)
    keys = [plan.key for plan in plans]
    assert keys.index("r-rd-eos@0.1s") < keys.index("c-rd@0.1s") < keys.index("r-rd-eos@0.1s-loaded")
    relay = next(plan for plan in plans if plan.key == "r-rd-eos@0.1s")
    assert (relay.contender, relay.at_least_once, relay.interval_s, relay.of) == ("relay", False, 0.1, "c-rd")
    assert {"r-rd-eos@0.1s", "r-rd-eos@0.1s-loaded"} <= set(LATENCY_REPEATED)
    outcome = _outcome()
    eos = outcome.latency["c-rd@0.1s"]
    eos.cpu = 0.75
    outcome.latency["r-rd-eos@0.1s"] = LatencyResult("eos relay", eos.rate, 1000, 1000, 0.1, 60.0, 120.0, 130.0,
                                                     cpu=0.25)
    outcome.latency["r-rd-eos@0.1s-loaded"] = LatencyResult("loaded", eos.rate, 1000, 1000, 0.1, 70.0, 175.0, 180.0,
                                                            cpu=0.74)
    row = next(row for row in targets(outcome) if row[0].startswith("3.") and "confluent" in row[0])
    assert row[3] == "**met**", "the verdict stays the worker's p99 against the interval"
    assert "the exactly-once relay floor: p99 120 ms = 1.20x the interval, the worker 1.17x it" in row[2]
    assert ("(0.74 CPU; the worker 0.75 CPU, the relay 0.25 CPU): p99 175 ms = 1.75x the interval, the worker 0.80x "
            "it") in row[2]
    outcome.latency["r-rd-eos@0.1s"] = LatencyResult("other rate", 500.0, 1000, 1000, 0.1, 60.0, 120.0, 130.0)
    row = next(row for row in targets(outcome) if row[0].startswith("3.") and "confluent" in row[0])
    assert "relay floor" not in row[2], "a floor of another rate is no floor"


def test_a_marked_block_is_replaced_in_place_or_appended_under_its_heading(tmp_path: Path) -> None:
    from bench.common import write_marked_block

    doc = tmp_path / "models.md"
    doc.write_text("# Models\n\nintro\n", encoding="utf-8")
    write_marked_block(doc, "table", "| a |", "Generated")
    assert doc.read_text(encoding="utf-8") == "# Models\n\nintro\n\n## Generated\n\n<!-- table:start -->\n| a |\n" \
        "<!-- table:end -->\n"
    doc.write_text(doc.read_text(encoding="utf-8") + "\nafter\n", encoding="utf-8")
    write_marked_block(doc, "table", "| b |", "Generated")
    text = doc.read_text(encoding="utf-8")
    assert "| b |" in text and "| a |" not in text and text.count("## Generated") == 1 and text.endswith("\nafter\n")


def test_the_scale_target_row_gives_the_loaded_relays_floor_of_the_same_run() -> None:
    outcome = _outcome()
    relay = [RunResult("group-relay", "logreg", 4_000, 0.0, 0.2, cpu_s=0.1)]
    loaded_one = [RunResult("group-relay", "logreg", 4_000, 0.0, 1.0, cpu_s=0.4)]
    loaded_two = [RunResult("group-relay", "logreg", 2_000, 0.0, 0.8, cpu_s=0.2),
                  RunResult("group-relay", "logreg", 2_000, 0.0, 0.8, cpu_s=0.2)]
    outcome.scale_floor["kafka-python"] = [ScaleResult(1, relay, 0.0), ScaleResult(1, loaded_one, 0.0),
                                           ScaleResult(2, loaded_two, 0.0)]
    outcome.scale_burn_us["kafka-python"] = [75.0]
    assert outcome.scale_floor_ratios("kafka-python") == [pytest.approx(1.25)]
    scale = next(row for row in targets(outcome) if row[0].startswith("issues 6 and 12: 2 workers"))
    assert "the machine's floor, 2 loaded relays vs 1: 1.25x" in scale[2]
    markdown = render(outcome)
    assert "| kafka-python | 1 | 75 us | 2 | 4,000 | 0.80 | 5,000 | 1.25x | 100 |" in markdown


class _PacedRecorder:
    """Stands in for ``Bench.paced``: records each call; the broker's JIT falls by ``jit_per_round``."""

    def __init__(self, jit_by_round: list[float], shapes: int) -> None:
        self.calls: list[tuple[str, str, bool, float | None, float, float]] = []
        self._jit_by_round, self._shapes = jit_by_round, shapes

    def paced(self, contender: str, model: str, rate: float, seconds: float, *, label: str,
              at_least_once: bool = False, commit_interval_s: float | None = None,
              client: str = "kafka-python") -> LatencyResult:
        round_ = len(self.calls) // self._shapes
        self.calls.append((contender, client, at_least_once, commit_interval_s, rate, seconds))
        result = LatencyResult(label, rate, 100, 100, commit_interval_s, 1.0, 2.0, 3.0)
        result.broker_jit_s = self._jit_by_round[round_] / self._shapes
        return result


def test_the_latency_warm_up_runs_each_shape_once_per_round_until_the_broker_has_compiled() -> None:
    from bench.report import LATENCY_WARM_JIT_S, latency_plans

    outcome = _outcome()
    outcome.throughput["logreg"]["c-alos"] = [_measured("worker", "logreg", 10_000, 1.0)]  # 10,000 events/s
    outcome.throughput["logreg"]["c-rd-alos"] = [_measured("worker", "logreg", 10_000, 0.5)]  # 20,000 events/s
    plans = latency_plans(latency_only=True)
    # relay and at-least-once worker of each client, exactly-once worker of each client, the exactly-once relay of
    # the default client: 7 shapes
    recorder = _PacedRecorder([4.0, 1.0, LATENCY_WARM_JIT_S / 2, 9.0], shapes=7)
    outcome._warm_up_latency(recorder, plans)  # type: ignore[arg-type]
    assert len(recorder.calls) == 21, "three rounds: the third one's JIT is under the threshold"
    assert outcome.latency_warmup_jit_s == pytest.approx([4.0, 1.0, LATENCY_WARM_JIT_S / 2])
    first_round = recorder.calls[:7]
    assert len({call[:4] for call in first_round}) == 7, "each shape once per round"
    assert ("relay", "confluent", False, 0.1) in {call[:4] for call in first_round}, "the exactly-once relay"
    rates = {(contender, client, alos): rate for contender, client, alos, _, rate, _ in first_round}
    assert rates[("relay", "confluent", True)] == pytest.approx(10_000.0), "each shape at its highest rate"
    assert rates[("worker", "kafka-python", True)] == pytest.approx(5_000.0)
    assert all(seconds == outcome.config.latency_warmup_seconds for *_, seconds in recorder.calls)

    capped = _outcome()
    capped.throughput["logreg"]["c-alos"] = outcome.throughput["logreg"]["c-alos"]
    capped.throughput["logreg"]["c-rd-alos"] = outcome.throughput["logreg"]["c-rd-alos"]
    capped.config = capped.config.replace(latency_warmup_rounds=2)
    recorder = _PacedRecorder([4.0, 1.0, 0.0], shapes=7)
    capped._warm_up_latency(recorder, plans)  # type: ignore[arg-type]
    assert len(recorder.calls) == 14 and capped.latency_warmup_jit_s == pytest.approx([4.0, 1.0])


def test_the_contenders_of_a_ratio_target_run_back_to_back_taking_turns_at_going_first() -> None:
    from bench.report import turn_order

    keys = ("a", "b", "c", "c-rd", "c-ckl")
    assert turn_order("arf", keys, 0) == ["a", "c-rd", "b", "c", "c-ckl"]
    assert turn_order("arf", keys, 1) == ["c-rd", "a", "b", "c", "c-ckl"]
    assert turn_order("arf", keys, 2) == turn_order("arf", keys, 0)
    logreg = ("a", "b", "c", "c-alos", "c-rd", "c-rd-alos", "t")
    assert turn_order("logreg", logreg, 1) == ["c-rd", "b", "a", "c", "c-alos", "c-rd-alos", "t"]
    assert turn_order("logreg", ("c", "c-alos", "c-rd"), 0) == ["c", "c-alos", "c-rd"], "no pair: as given"
    assert turn_order("mlp", ("a", "b", "c", "c-rd"), 1) == ["a", "b", "c", "c-rd"]


class _TurnRecorder:
    """A :class:`Bench` stand-in for the throughput stage: records the contenders in the order they ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def topics(self) -> tuple[str, str]:
        return "events", "predictions"

    def produce(self, topic: str, n: int) -> float:
        return 0.0

    def bare(self, model: str, n: int) -> Measured:
        self.ran.append("a")
        return _measured("bare", model, n, 1.0)

    def kafka_contender(self, contender: str, model: str, topic: str, n: int, *, label: str, at_least_once: bool,
                        client: str, checkpoint_in_loop: bool) -> Measured:
        self.ran.append(label)
        return _measured(contender, model, n, 2.0 if client == "confluent" else 4.0)


def test_the_throughput_stage_pairs_each_turns_runs_and_keeps_the_tables_order() -> None:
    from bench.report import CONTENDERS

    outcome = _outcome()
    outcome.throughput.clear()
    outcome.config = outcome.config.replace(arf_repeat=2, arf_events=100)
    recorder = _TurnRecorder()
    outcome._throughput(recorder, "arf", ("a", "b", "c", "c-rd", "c-ckl"))  # type: ignore[arg-type]
    confluent = CONTENDERS["c-rd"]
    assert recorder.ran[0] == confluent, "one unmeasured run first: the broker compiled nothing during it"
    assert recorder.ran[1:3] == ["a", confluent] and recorder.ran[6:8] == [confluent, "a"]
    assert list(outcome.throughput["arf"]) == ["a", "b", "c", "c-rd", "c-ckl"]
    assert all(len(runs) == 2 for runs in outcome.throughput["arf"].values())
    assert outcome.paired_ratios("arf", "c-rd", "a") == pytest.approx([0.5, 0.5])


def test_the_arf_runs_more_turns_unless_the_repeat_is_given() -> None:
    default = config_from(parse_args([]))
    assert (default.turns("logreg"), default.turns("arf")) == (3, 5)
    assert config_from(parse_args(["--repeat", "2"])).turns("arf") == 2
    assert config_from(parse_args(["--quick"])).turns("arf") == 1


def test_the_mlp_profile_gets_its_own_section_and_the_mlp_row_points_to_it() -> None:
    outcome = _outcome()
    listing = {"tree": "1.000 run  services/worker/worker.py:1", "flat_self": "0.500 process  x.py:1"}
    outcome.profile = {"confluent": listing, "mlp": listing}
    markdown = render(outcome)
    assert "## Profile of the worker (logreg, exactly-once, confluent)" in markdown
    assert "## Profile of the worker (mlp, exactly-once, confluent)" in markdown
    mlp_row = next(line for line in markdown.splitlines() if line.startswith("| 6. torch MLP") and "confluent" in line)
    assert "0.50x" in mlp_row and "profiled below" in mlp_row
    assert "profiled below" not in render(_outcome())


def test_a_models_turns_start_once_the_broker_has_compiled_its_target_contenders_paths() -> None:
    from bench.report import THROUGHPUT_WARM_JIT_S

    class JitRecorder(_TurnRecorder):
        def __init__(self, jits: list[float]) -> None:
            super().__init__()
            self.jits = jits

        def kafka_contender(self, contender: str, model: str, topic: str, n: int, *, label: str,
                            at_least_once: bool, client: str, checkpoint_in_loop: bool) -> Measured:
            measured = super().kafka_contender(contender, model, topic, n, label=label, at_least_once=at_least_once,
                                               client=client, checkpoint_in_loop=checkpoint_in_loop)
            measured.broker_jit_s = self.jits.pop(0) if self.jits else 0.0
            return measured

    from bench.report import CONTENDERS

    outcome = _outcome()
    outcome.throughput.clear()
    outcome.config = outcome.config.replace(arf_repeat=1, arf_events=100)
    recorder = JitRecorder([1.2, 0.5, THROUGHPUT_WARM_JIT_S / 2, 9.0])
    outcome._throughput(recorder, "arf", ("a", "b", "c", "c-rd", "c-ckl"))  # type: ignore[arg-type]
    confluent = CONTENDERS["c-rd"]
    assert recorder.ran[:3] == [confluent] * 3, "three unmeasured runs of the target's worker: the third is quiet"
    assert outcome.throughput_warmup_jit_s["arf"] == pytest.approx([1.2, 0.5, THROUGHPUT_WARM_JIT_S / 2])
    assert recorder.ran[3:5] == ["a", confluent] and all(len(r) == 1 for r in outcome.throughput["arf"].values())

    capped = _outcome()
    capped.throughput.clear()
    capped.config = capped.config.replace(repeat=1, throughput_warmup_rounds=2)
    recorder = JitRecorder([5.0, 5.0, 5.0, 5.0])
    capped._throughput(recorder, "logreg", ("a", "b", "c", "c-rd"))  # type: ignore[arg-type]
    assert recorder.ran[:4] == [CONTENDERS["b"], confluent] * 2, "the plain loop and the worker, two rounds at most"
    assert capped.throughput_warmup_jit_s["logreg"] == pytest.approx([10.0, 10.0])
    assert "mlp" not in capped.throughput_warmup_jit_s
    markdown = render(capped)
    assert "logreg 10.00, 10.00 JIT CPU s" in markdown and "| broker JIT CPU s |" in markdown
