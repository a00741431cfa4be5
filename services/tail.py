"""``streamlearn tail``: follow the predictions, the shadow predictions or the dead letters, as a table or JSON Lines.

Reads committed records only (what a transactional worker has committed), from the end by default or from the
start (``--from-beginning``), without joining a consumer group. ``--limit`` and ``--timeout`` make it stop by
itself; otherwise it follows until interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import Any, Literal, TextIO

import orjson
from kafka.errors import KafkaError
from pydantic import ValidationError

from shared.client import RawRecord, TopicReader, dead_letter_from_record
from shared.contract import DeadLetter, Prediction
from shared.kafka.clients import security_options
from shared.settings import KafkaSettings, SettingsError, load_settings

Stream = Literal["predictions", "shadow", "dead-letters"]

EXIT_OK = 0
EXIT_SHORT = 1
EXIT_USAGE = 2
EXIT_KAFKA = 3
EXIT_INTERRUPTED = 130


def _cell(value: object, width: int) -> str:
    text = "-" if value is None else str(value)
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.ljust(width)


def _clock(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch_s)) + f".{int(epoch_s * 1000) % 1000:03d}"


def _confidence(prediction: Prediction) -> str:
    if prediction.score is not None:
        return f"score {prediction.score:.4g}"
    if prediction.proba:
        chosen = orjson.dumps(prediction.prediction).decode().strip('"')
        probability = prediction.proba.get(chosen, max(prediction.proba.values()))
        return f"p {probability:.3f}"
    return "-"


PREDICTION_HEADER = (
    f"{'TIME':12} {'MODEL':12} {'KEY':16} {'ID':24} {'PREDICTION':12} {'CONFIDENCE':13} {'LATENCY':>9}  VERSION"
)
DEAD_LETTER_HEADER = f"{'TIME':12} {'CODE':17} {'SOURCE':28} {'KEY':16} ERROR"


def prediction_row(prediction: Prediction) -> str:
    """One line of the predictions table."""
    shown = orjson.dumps(prediction.prediction).decode() if not isinstance(prediction.prediction, str) \
        else prediction.prediction
    return (
        f"{_clock(prediction.ts):12} {_cell(prediction.model, 12)} {_cell(prediction.key, 16)} "
        f"{_cell(prediction.id, 24)} {_cell(shown, 12)} {_cell(_confidence(prediction), 13)} "
        f"{prediction.latency_ms:7.1f}ms  {prediction.model_version}"
    )


def dead_letter_row(letter: DeadLetter, timestamp_ms: int) -> str:
    """One line of the dead-letters table (the error in full, last)."""
    source = f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
    return (
        f"{_clock(timestamp_ms / 1000):12} {_cell(letter.error_code, 17)} {_cell(source, 28)} "
        f"{_cell(letter.key, 16)} {letter.error}"
    )


def render(
    records: Iterator[RawRecord], stream: Stream, *, json_lines: bool, model: str | None, key: str | None,
    limit: int | None, out: TextIO, errors: TextIO,
) -> int:
    """Write the records that pass the filters to ``out``; how many were written."""
    written = 0
    if limit is not None and limit <= 0:
        return 0
    header_due = not json_lines
    wanted_key = None if key is None else key.encode("utf-8")
    for record in records:
        if wanted_key is not None and record.key != wanted_key:
            continue
        try:
            if stream == "dead-letters":
                letter = dead_letter_from_record(record)
                line = letter.model_dump_json() if json_lines else dead_letter_row(letter, record.timestamp_ms)
            else:
                prediction = Prediction.model_validate_json(record.value or b"")
                if model is not None and prediction.model != model:
                    continue
                line = (record.value or b"").decode("utf-8") if json_lines else prediction_row(prediction)
        except (ValidationError, ValueError) as exc:
            reason = str(exc).splitlines()[0]
            errors.write(f"streamlearn tail: {record.topic}[{record.partition}]@{record.offset} skipped: {reason}\n")
            continue
        if header_due:
            out.write((DEAD_LETTER_HEADER if stream == "dead-letters" else PREDICTION_HEADER) + "\n")
            header_due = False
        out.write(line + "\n")
        out.flush()
        written += 1
        if limit is not None and written >= limit:
            break
    return written


def run(args: argparse.Namespace) -> int:
    """The ``tail`` subcommand."""
    stream: Stream = args.stream
    if stream == "dead-letters" and args.model is not None:
        print("streamlearn tail: --model filters predictions; dead letters have no model", file=sys.stderr)
        return EXIT_USAGE
    try:
        kafka = load_settings(args.config).kafka if args.config else KafkaSettings()
    except SettingsError as exc:
        print(f"streamlearn tail: {exc}", file=sys.stderr)
        return EXIT_USAGE
    topics = kafka.topics
    topic = args.topic or {"predictions": topics.predictions, "shadow": topics.shadow_predictions,
                           "dead-letters": topics.dead_letters}[stream]
    options: dict[str, Any] = security_options(kafka)
    try:
        with TopicReader(args.bootstrap or kafka.bootstrap_servers, topic, from_beginning=args.from_beginning,
                         **options) as reader:
            where = "the start" if args.from_beginning else "the end"
            print(f"streamlearn tail: reading {topic} from {where}", file=sys.stderr, flush=True)
            written = render(
                reader.records(timeout_s=args.timeout), stream, json_lines=args.json, model=args.model,
                key=args.key, limit=args.limit, out=sys.stdout, errors=sys.stderr,
            )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except KafkaError as exc:
        print(f"streamlearn tail: {exc}", file=sys.stderr)
        return EXIT_KAFKA
    except BrokenPipeError:
        return EXIT_OK  # `streamlearn tail ... | head`
    if args.limit is not None and written < args.limit:
        print(f"streamlearn tail: {written} of {args.limit} records from {topic} within {args.timeout} s",
              file=sys.stderr)
        return EXIT_SHORT
    return EXIT_OK


def add_parser(sub: Any) -> None:
    """Register ``tail`` on the ``streamlearn`` subcommands."""
    parser = sub.add_parser(
        "tail", help="follow the predictions, shadow predictions or dead letters (table or JSON Lines)",
        description=__doc__.replace("``", "`"), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stream", choices=["predictions", "shadow", "dead-letters"],
                        help="predictions (the champion), shadow (every other model) or dead-letters")
    parser.add_argument("--json", action="store_true",
                        help="JSON Lines: each prediction as published, each dead letter with its headers")
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest record, not the end")
    parser.add_argument("--model", default=None, help="only this model's predictions")
    parser.add_argument("--key", default=None, help="only records with this Kafka key (the event's key, else its id)")
    parser.add_argument("--limit", type=int, default=None,
                        help="stop after this many records (exit status 1 if fewer came before --timeout)")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--config", default=None, help="worker settings (YAML): Kafka servers, security, topics")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default 127.0.0.1:9092)")
    parser.add_argument("--topic", default=None, help="read this topic instead of the stream's configured one")
    parser.set_defaults(func=run)
