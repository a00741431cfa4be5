"""The ``streamlearn`` command: stack | worker | replay | produce | tail | dashboard | demo."""

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
    except StartupError as exc:  # also a refused TLS or SASL set-up (KafkaSecurityError, RedisSecurityError)
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
    bootstrap, client_options = args.bootstrap or "127.0.0.1:9092", {}
    if args.config is not None:  # the worker's settings file: its Kafka address and security (TLS, SASL)
        from shared.kafka.clients import security_options
        from shared.settings import SettingsError, load_settings

        try:
            kafka = load_settings(args.config).kafka
        except SettingsError as exc:
            print(f"streamlearn replay: {exc}", file=sys.stderr)
            return 2
        bootstrap, client_options = args.bootstrap or kafka.bootstrap_servers, security_options(kafka)
    try:
        plan = DelayedLabelPlan(max_delay=args.max_delay, window=min(50, args.max_delay)) \
            if args.labels == "delayed" else None
        stats = replay(
            args.source, bootstrap_servers=bootstrap, topic=args.topic, rate=args.rate,
            limit=args.limit, seed=args.seed, drift_at=args.drift_at,
            labels="none" if args.no_labels else args.labels, labels_topic=args.labels_topic, delayed=plan,
            progress=not args.quiet, client_options=client_options,
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
        dashboard_port=args.dashboard_port,
    )


def _demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    return run_demo(seconds=args.seconds, rate=args.rate)


def _dashboard(args: argparse.Namespace) -> int:
    import contextlib

    from services.dashboard import DashboardServer, build_spec

    try:
        spec = build_spec(metric=args.metric, rate_window=args.rate_window, refresh_s=args.refresh,
                          quality_window=args.quality_window)
        server = DashboardServer(args.prometheus, host=args.host, port=args.port, spec=spec)
    except (ValueError, OSError) as exc:
        print(f"streamlearn dashboard: {exc}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"streamlearn dashboard: listening on {args.host}: the page has no login; anyone who reaches this "
              "address can read the metrics", file=sys.stderr)
    print(f"dashboard: {server.url}  (reading {server.prometheus_url}; Ctrl-C stops)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamlearn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="start, stop or inspect the local Kafka, Redis, Prometheus and dashboard")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--state-dir", default=None, help="where the servers keep data (default .streamlearn/stack)")
    stack.add_argument("--kafka-port", type=int, default=None, help="default 9092")
    stack.add_argument("--controller-port", type=int, default=None, help="KRaft controller, default 9093")
    stack.add_argument("--redis-port", type=int, default=None, help="default 6379")
    stack.add_argument("--prometheus-port", type=int, default=None, help="default 9090")
    stack.add_argument("--scrape-interval", type=float, default=None, help="Prometheus scrape interval, seconds")
    stack.add_argument("--dashboard-port", type=int, default=None, help="the live dashboard, default 8050")
    stack.set_defaults(func=_stack)

    worker = sub.add_parser("worker", help="run a worker of the consumer group")
    worker.add_argument("--config", required=True, help="YAML settings file (STREAMLEARN_* variables override it)")
    worker.add_argument("--max-seconds", type=float, default=None, help="stop (and drain) after this long")
    worker.set_defaults(func=_worker)

    rep = sub.add_parser("replay", help="stream a dataset or synthetic stream into the events topic")
    rep.add_argument("source", nargs="?", help="a source name (see --list)")
    rep.add_argument("--list", action="store_true", help="list the sources")
    rep.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default 127.0.0.1:9092)")
    rep.add_argument("--config", default=None,
                     help="a worker's YAML settings: its kafka section gives the servers, TLS and SASL")
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

    from services import produce, tail

    produce.add_parser(sub)
    tail.add_parser(sub)

    demo = sub.add_parser("demo", help="start the stack and a worker, replay a drifting stream, show live accuracy")
    demo.add_argument("--seconds", type=float, default=60.0)
    demo.add_argument("--rate", type=float, default=300.0)
    demo.set_defaults(func=_demo)

    dash = sub.add_parser("dashboard", help="serve the live dashboard (reads Prometheus) on loopback")
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    dash.add_argument("--port", type=int, default=8050, help="default 8050 (0: any free port)")
    dash.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    dash.add_argument("--metric", default="accuracy", help="quality metric to chart (accuracy, f1, roc_auc, ...)")
    dash.add_argument("--rate-window", default="30s", help="PromQL window of the rate() panels")
    dash.add_argument("--quality-window", default="1m",
                      help="PromQL window of the rolling group-wide accuracy, MAE or RMSE")
    dash.add_argument("--refresh", type=float, default=2.0, help="seconds between refreshes of the page")
    dash.set_defaults(func=_dashboard)
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
