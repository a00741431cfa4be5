"""The ``streamlearn`` command: stack | worker | replay | demo."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _worker(args: argparse.Namespace) -> int:
    from services.worker import Worker
    from shared.settings import SettingsError, load_settings
    from shared.startup import STARTUP_EXIT_CODE, StartupError

    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"streamlearn worker: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("streamlearn").info("settings: %s", settings.masked_dump())
    worker = Worker(settings)
    worker.install_signal_handlers()
    try:
        worker.run(max_seconds=args.max_seconds)
    except StartupError as exc:
        print(f"streamlearn worker: {exc}", file=sys.stderr)
        return STARTUP_EXIT_CODE
    return 0


def _replay(args: argparse.Namespace) -> int:
    from services.replayer import DelayedLabelPlan, replay
    from shared.datasets import SOURCES

    if args.list:
        for name, (info, _) in sorted(SOURCES.items()):
            print(f"{name:16} {info.task:11} {info.description}")
        return 0
    if args.source is None:
        print("streamlearn replay: a SOURCE is required (see --list)", file=sys.stderr)
        return 2
    try:
        plan = DelayedLabelPlan(max_delay=args.max_delay, window=min(50, args.max_delay)) \
            if args.labels == "delayed" else None
        stats = replay(
            args.source, bootstrap_servers=args.bootstrap, topic=args.topic, rate=args.rate,
            limit=args.limit, seed=args.seed, drift_at=args.drift_at,
            labels="none" if args.no_labels else args.labels, labels_topic=args.labels_topic, delayed=plan,
            progress=not args.quiet,
        )
    except ValueError as exc:
        print(f"streamlearn replay: {exc}", file=sys.stderr)
        return 2
    labels = f" and {stats.labels} delayed labels" if stats.labels else ""
    print(f"sent {stats.sent} events{labels} in {stats.seconds:.1f} s ({stats.rate:,.0f}/s)", file=sys.stderr)
    return 0


def _stack(args: argparse.Namespace) -> int:
    from services.stack import run_stack_command

    return run_stack_command(
        args.action, state_dir=args.state_dir, kafka_port=args.kafka_port, controller_port=args.controller_port,
        redis_port=args.redis_port, prometheus_port=args.prometheus_port, scrape_interval_s=args.scrape_interval,
    )


def _demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    return run_demo(seconds=args.seconds, rate=args.rate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamlearn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="start, stop or inspect the local Kafka, Redis and Prometheus")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--state-dir", default=None, help="where the servers keep data (default .streamlearn/stack)")
    stack.add_argument("--kafka-port", type=int, default=None, help="default 9092")
    stack.add_argument("--controller-port", type=int, default=None, help="KRaft controller, default 9093")
    stack.add_argument("--redis-port", type=int, default=None, help="default 6379")
    stack.add_argument("--prometheus-port", type=int, default=None, help="default 9090")
    stack.add_argument("--scrape-interval", type=float, default=None, help="Prometheus scrape interval, seconds")
    stack.set_defaults(func=_stack)

    worker = sub.add_parser("worker", help="run a worker of the consumer group")
    worker.add_argument("--config", required=True, help="YAML settings file (STREAMLEARN_* variables override it)")
    worker.add_argument("--max-seconds", type=float, default=None, help="stop (and drain) after this long")
    worker.set_defaults(func=_worker)

    rep = sub.add_parser("replay", help="stream a dataset or synthetic stream into the events topic")
    rep.add_argument("source", nargs="?", help="a source name (see --list)")
    rep.add_argument("--list", action="store_true", help="list the sources")
    rep.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    rep.add_argument("--topic", default="events")
    rep.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    rep.add_argument("--limit", type=int, default=None, help="number of events (bounded datasets are cycled)")
    rep.add_argument("--seed", type=int, default=42)
    rep.add_argument("--drift-at", type=int, default=None, help="position of the concept drift (drift sources)")
    rep.add_argument("--no-labels", action="store_true", help="leave the label out of the events")
    rep.add_argument("--labels", choices=["inline", "none", "delayed"], default="inline",
                     help="delayed: events without labels, labels on --labels-topic 1 to --max-delay events later")
    rep.add_argument("--labels-topic", default="labels")
    rep.add_argument("--max-delay", type=int, default=500, help="delayed labels: at most this many events late")
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    rep.set_defaults(func=_replay)

    demo = sub.add_parser("demo", help="start the stack and a worker, replay a drifting stream, show live accuracy")
    demo.add_argument("--seconds", type=float, default=60.0)
    demo.add_argument("--rate", type=float, default=300.0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
