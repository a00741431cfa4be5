"""``python -m bench`` (``make bench``): the performance benchmark, written to ``docs/benchmarks.md``.

Measures in one run, on the same events: (a) the bare model loop, (b) a plain kafka-python + River loop and
(c) streamlearn's worker, for three models; then end-to-end latency at half the maximum throughput, a group of
two workers against one (and one worker on 4 partitions against 1, in ``sync.scope: group``), and resident memory
over a long run; and profiles the worker. ``--quick`` is a small smoke run, ``--latency-only`` and ``--scale-only``
run one scenario's targets; none of the three touches the docs unless ``--output`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bench.common import MODELS
from bench.report import Config, Outcome, machine_info, render, versions, write_doc
from bench.suite import Bench, log, started_stack, temp_dir

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
STAGES = ("throughput", "latency", "scale", "memory", "profile")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds, not minutes)")
    parser.add_argument("--latency-only", action="store_true",
                        help="only the latency targets (make bench-latency): the relay floor and the at-least-once "
                             "worker of each client at 500 events/s and at half the worker's max, exactly-once at "
                             "0.1 s; after one short throughput run per worker for its max (a few minutes; "
                             "does not touch the docs unless --output is given)")
    parser.add_argument("--scale-only", action="store_true",
                        help="only the scale scenario (make bench-scale; issue 12's throughput targets): one worker "
                             "on 1 partition, one and two workers on 4 partitions, in sync.scope group, with each "
                             "transport, --repeat times (default 3); does not touch the docs unless --output is "
                             "given")
    parser.add_argument("--events-logreg", type=int, help="events per logistic-regression throughput run")
    parser.add_argument("--events-arf", type=int, help="events per ARF throughput run")
    parser.add_argument("--events-mlp", type=int, help="events per torch MLP throughput run")
    parser.add_argument("--latency-seconds", type=float, help="length of each paced latency run")
    parser.add_argument("--scale-events", type=int, help="events on the 4-partition topic of the scale runs")
    parser.add_argument("--memory-events", type=int, help="events of the long memory run (the issue asks 1,000,000)")
    parser.add_argument("--profile-events", type=int, help="events of the profiled worker run")
    parser.add_argument("--models", default="logreg,arf,mlp", help="comma-separated models of the throughput stage")
    parser.add_argument("--repeat", type=int, help="throughput runs per contender, the median kept (default 3, "
                                                   "5 for the ARF; 1 with --quick)")
    parser.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages of {', '.join(STAGES)}")
    parser.add_argument("--output", type=Path, help=f"the markdown report (default {DOC.relative_to(ROOT)}; "
                                                    "none with --quick)")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    base = Config.smoke() if args.quick else Config()
    if args.latency_only:
        base = base.replace(latency_only=True, stages=("latency",), models=("logreg",), repeat=1,
                            logreg_events=min(base.logreg_events, 20_000))
        if args.only == ",".join(STAGES):
            args.only = "latency"
    if args.scale_only:
        if args.latency_only:
            raise SystemExit("--scale-only and --latency-only are two separate runs")
        base = base.replace(scale_only=True, stages=("scale",), models=("logreg",))
        if args.only == ",".join(STAGES):
            args.only = "scale"
    overrides = {
        "logreg_events": args.events_logreg, "arf_events": args.events_arf, "mlp_events": args.events_mlp,
        "latency_seconds": args.latency_seconds, "scale_events": args.scale_events,
        "memory_events": args.memory_events, "profile_events": args.profile_events,
    }
    stages = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if set(models) - set(MODELS):
        raise SystemExit(f"unknown model(s) in --models; known: {', '.join(MODELS)}")
    repeat = max(1, args.repeat or base.repeat)
    arf_repeat = repeat if args.repeat else base.arf_repeat
    return base.replace(quick=args.quick, repeat=repeat, arf_repeat=arf_repeat, stages=stages, models=models,
                        **{k: v for k, v in overrides.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = config_from(args)
    command = " ".join([".venv/bin/python -m bench", *(argv if argv is not None else sys.argv[1:])]).strip()
    outcome = Outcome(config=config, command=command, machine=machine_info(), versions=versions())
    started = time.monotonic()
    with temp_dir() as tmp:
        log(f"starting Kafka and Redis in {tmp}")
        with started_stack(Path(tmp) / "stack") as stack:
            bench = Bench(stack, Path(tmp))
            try:
                outcome.run(bench)
            finally:
                bench.kill_all()
    outcome.finish(time.monotonic() - started)
    markdown = render(outcome)
    print(markdown)
    output = args.output if args.output is not None else (
        None if args.quick or args.latency_only or args.scale_only else DOC)
    if output is not None:
        write_doc(output, markdown)
        log(f"wrote {output}")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(outcome), default=str, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
