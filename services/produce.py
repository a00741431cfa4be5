"""``streamlearn produce``: send a user's own CSV or JSON Lines rows to the events topic, validated row by row.

Each row becomes an Event (docs/contract.md): flags name the columns (or fields) of the id, key, timestamp and label,
and every other column is a feature. Rows are read one at a time, so a file of any size is sent in bounded memory.
A row the worker would refuse is reported with its line number on standard error and skipped; the others are sent.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, TextIO

import orjson
from kafka.errors import KafkaError

from shared.client import DeliveryError, EventCheck, EventProducer, InvalidRecord, encode_event, encode_label
from shared.kafka.clients import security_options
from shared.settings import KafkaSettings, LimitSettings, Settings, SettingsError, load_settings
from shared.steps.semantics import rules_for

Format = Literal["csv", "jsonl"]
LabelTarget = Literal["inline", "topic"]

#: exit statuses
EXIT_OK = 0
EXIT_INVALID_ROWS = 1
EXIT_USAGE = 2
#: Kafka cannot be reached or did not acknowledge some records
EXIT_DELIVERY = 3
EXIT_INTERRUPTED = 130

_EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


class UsageError(ValueError):
    """The command cannot run at all (a missing column, an unknown format): exit status 2."""


@dataclass(frozen=True, slots=True)
class Columns:
    """Which column (CSV) or field (JSON Lines) holds the id, key, timestamp and label; every other is a feature.

    A CSV column named by a flag (``explicit``) must be in the header, and a JSON Lines row must have an id field
    named by a flag; a key, time or label that is absent (or empty) is left out of the event. Without an id
    column, each row gets the id ``<id_prefix>-<line number>``.
    """

    id: str = "id"
    key: str = "key"
    ts: str = "ts"
    label: str = "label"
    id_prefix: str = "row"
    explicit: frozenset[str] = frozenset()

    @property
    def reserved(self) -> frozenset[str]:
        return frozenset({self.id, self.key, self.ts, self.label})


def csv_value(text: str | None) -> Any:
    """A CSV cell as a JSON value: empty is missing (null), ``true``/``false`` booleans, numbers, else the text."""
    if text is None or text == "":
        return None
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)  # NaN and infinity too: the contract then refuses the row and says why
    return text


def _identifier(value: Any) -> Any:
    # ids and keys are strings in the contract; an integer id in the user's data is taken as its decimal text
    return str(value) if type(value) is int else value


def build_event(record: dict[str, Any], line: int, columns: Columns,
                convert: Callable[[Any], Any] | None) -> dict[str, Any]:
    """The event of one row (``record``: column -> value); raises :class:`InvalidRecord` for a missing field."""
    value = (lambda v: v) if convert is None else convert
    if columns.id in columns.explicit and columns.id not in record:
        raise InvalidRecord("schema", f"no field {columns.id!r} (the id)")
    event: dict[str, Any] = {}
    event["id"] = _identifier(record[columns.id]) if columns.id in record else f"{columns.id_prefix}-{line}"
    ts = value(record.get(columns.ts))
    if ts is not None:
        event["ts"] = ts
    key = record.get(columns.key)
    if key is not None and key != "":
        event["key"] = _identifier(key)
    nested = record.get("features")
    if convert is None and isinstance(nested, dict) and "features" not in columns.reserved:
        event["features"] = nested
    else:
        event["features"] = {name: value(v) for name, v in record.items() if name not in columns.reserved}
    label = value(record.get(columns.label))
    if label is not None:
        event["label"] = label
    return event


def _text_fields(record: dict[str, Any]) -> None:
    for name, text in record.items():
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRecord("invalid_utf8", f"column {name!r} is not valid UTF-8") from None


@dataclass(slots=True)
class Row:
    """One row read from the input: its event, or why it cannot be one."""

    line: int
    event: dict[str, Any] | None = None
    error: str | None = None


class ByteCounter:
    """Lines of a binary stream as text (invalid UTF-8 kept as surrogates, refused per row); counts bytes read."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        for raw in self._stream:
            self.bytes_read += len(raw)
            yield raw.decode("utf-8", errors="surrogateescape")


def csv_rows(lines: Iterable[str], columns: Columns, *, delimiter: str = ",") -> Iterator[Row]:
    """The rows of a CSV with a header line; raises :class:`UsageError` for a missing header or column."""
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise UsageError("the input is empty: expected a CSV header line") from None
    except csv.Error as exc:
        raise UsageError(f"the CSV header cannot be read: {exc}") from None
    if not header:
        raise UsageError("the first line is empty: expected a CSV header line")
    header[0] = header[0].removeprefix("\ufeff")
    if len(set(header)) != len(header):
        raise UsageError(f"the CSV header names a column twice: {header}")
    missing = sorted(name for name in columns.explicit if name not in header)
    if missing:
        raise UsageError(f"no column {', '.join(map(repr, missing))} in the CSV header {header}")
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Row(reader.line_num, error=f"not valid CSV: {exc}")
            continue
        line = reader.line_num
        if not fields:
            continue
        if len(fields) != len(header):
            yield Row(line, error=f"expected {len(header)} fields as in the header, got {len(fields)}")
            continue
        record = dict(zip(header, fields, strict=True))
        try:
            _text_fields(record)
            yield Row(line, event=build_event(record, line, columns, csv_value))
        except InvalidRecord as exc:
            yield Row(line, error=exc.reason)


def jsonl_rows(lines: Iterable[str], columns: Columns) -> Iterator[Row]:
    """The rows of a JSON Lines input: one object per line, either flat (every other field a feature) or an event
    with a ``features`` object; blank lines are skipped."""
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = orjson.loads(text.encode("utf-8"))
        except UnicodeEncodeError:
            yield Row(line, error="not valid UTF-8")
            continue
        except orjson.JSONDecodeError as exc:
            try:
                record = json.loads(text)  # NaN and Infinity: the contract names them precisely
            except ValueError:
                yield Row(line, error=f"not valid JSON: {exc}")
                continue
        if not isinstance(record, dict):
            yield Row(line, error=f"a JSON {type(record).__name__}, expected an object")
            continue
        try:
            yield Row(line, event=build_event(record, line, columns, None))
        except InvalidRecord as exc:
            yield Row(line, error=exc.reason)


class Progress:
    """A one-line progress bar on a stream: the share of the file read when its size is known, else a count."""

    def __init__(self, stream: TextIO, total_bytes: int | None, enabled: bool) -> None:
        self._stream = stream
        self._total = total_bytes
        self.enabled = enabled
        self._started = time.monotonic()
        self._last = 0.0
        self._shown = False

    def update(self, sent: int, bytes_read: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last < 0.2):
            return
        self._last = now
        rate = sent / max(now - self._started, 1e-9)
        if self._total:
            width = 30
            share = min(bytes_read / self._total, 1.0)
            done = int(width * share)
            text = f"[{'#' * done}{'-' * (width - done)}] {share:4.0%}  {sent:,} events  {rate:,.0f}/s"
        else:
            text = f"{sent:,} events  {rate:,.0f}/s"
        self._stream.write("\r\033[K" + text + ("\n" if final else ""))
        self._stream.flush()
        self._shown = not final

    def clear(self) -> None:
        """Erase the bar before another message is written to the same stream."""
        if self.enabled and self._shown:
            self._stream.write("\r\033[K")
            self._shown = False


@dataclass(slots=True)
class ProduceStats:
    """What a run sent and skipped."""

    sent: int = 0
    labels: int = 0
    invalid: int = 0
    seconds: float = 0.0
    invalid_lines: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


#: at most this many line numbers of invalid rows are kept (for the caller; all are reported on stderr)
_MAX_KEPT_LINES = 1000


def produce_rows(
    rows: Iterable[Row],
    producer: EventProducer | None,
    *,
    limits: LimitSettings,
    labels: LabelTarget = "inline",
    check: EventCheck | None = None,
    rate: float = 0.0,
    source_name: str = "<stdin>",
    errors: TextIO = sys.stderr,
    progress: Progress | None = None,
    bytes_read: Callable[[], int] = lambda: 0,
) -> ProduceStats:
    """Validate and send ``rows`` (``producer`` None: validate only); invalid rows are reported and skipped."""
    stats = ProduceStats()
    started = time.monotonic()
    for row in rows:
        reason = row.error
        encoded: tuple[bytes, bytes] | None = None
        label_value: bytes | None = None
        if row.event is not None:
            event = row.event
            try:
                if labels == "topic" and "label" in event:
                    label = event.pop("label")
                    encoded = encode_event(event, limits, check)
                    label_value = encode_label({"id": event["id"], "label": label, "ts": time.time()})
                else:
                    encoded = encode_event(event, limits, check)
            except InvalidRecord as exc:
                reason = exc.reason
        if encoded is None:
            stats.invalid += 1
            if len(stats.invalid_lines) < _MAX_KEPT_LINES:
                stats.invalid_lines.append(row.line)
            if progress is not None:
                progress.clear()
            errors.write(f"streamlearn produce: {source_name}, line {row.line}: {reason}; row skipped\n")
            errors.flush()
            continue
        if rate > 0:
            delay = started + stats.sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        key, value = encoded
        if producer is not None:
            producer.send_encoded(producer.events_topic, key, value)
            if label_value is not None:
                producer.send_encoded(producer.labels_topic, key, label_value)
        stats.sent += 1
        stats.labels += label_value is not None
        if progress is not None:
            progress.update(stats.sent, bytes_read())
    if producer is not None:
        producer.flush()
    stats.seconds = time.monotonic() - started
    if progress is not None:
        progress.update(stats.sent, bytes_read(), final=True)
    return stats


def detect_format(path: str, given: str | None) -> Format:
    """``--format``, else the file's extension; standard input defaults to JSON Lines."""
    if given is not None:
        return "csv" if given == "csv" else "jsonl"
    if path == "-":
        return "jsonl"
    fmt = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot tell the format of {path} from its extension: pass --format csv or jsonl")
    return fmt


def _settings(config: str | None) -> Settings | None:
    return None if config is None else load_settings(config)


def run(args: argparse.Namespace) -> int:
    """The ``produce`` subcommand."""
    try:
        settings = _settings(args.config)
        fmt = detect_format(args.input, args.format)
        if len(args.delimiter) != 1 or args.rate < 0:
            raise UsageError("--delimiter must be one character and --rate at least 0")
    except (SettingsError, UsageError) as exc:
        print(f"streamlearn produce: {exc}", file=sys.stderr)
        return EXIT_USAGE
    explicit = frozenset(
        getattr(args, f"{name}_column") for name in ("id", "key", "ts", "label")
        if getattr(args, f"{name}_column") is not None
    )
    source_name = "<stdin>" if args.input == "-" else args.input
    columns = Columns(
        id=args.id_column or "id", key=args.key_column or "key", ts=args.ts_column or "ts",
        label=args.label_column or "label", explicit=explicit,
        id_prefix=args.id_prefix or ("stdin" if args.input == "-" else Path(args.input).stem),
    )
    limits = settings.limits if settings is not None else LimitSettings()
    try:
        stream: BinaryIO = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"streamlearn produce: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    producer: EventProducer | None = None
    try:
        total = os.fstat(stream.fileno()).st_size if args.input != "-" and stream.seekable() else None
        counter = ByteCounter(stream)
        rows = csv_rows(counter, columns, delimiter=args.delimiter) if fmt == "csv" else jsonl_rows(counter, columns)
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        progress = Progress(sys.stderr, total, show)
        if not args.dry_run:
            producer = _producer(args, settings)
        stats = produce_rows(
            rows, producer, limits=limits, labels=args.labels, rate=args.rate, source_name=source_name,
            # with --config, the rows a worker of that config would dead-letter are refused here too
            check=rules_for(settings).check_event if settings is not None else None,
            progress=progress, bytes_read=lambda: counter.bytes_read,
        )
    except UsageError as exc:
        print(f"streamlearn produce: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DeliveryError, KafkaError) as exc:
        print(f"streamlearn produce: {exc}", file=sys.stderr)
        return EXIT_DELIVERY
    except KeyboardInterrupt:
        print("streamlearn produce: interrupted (the rows validated so far are sent)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if producer is not None:
            producer.close()
        if stream is not sys.stdin.buffer:
            stream.close()
    verb = "checked" if args.dry_run else "sent"
    labels = f" and {stats.labels} labels to {producer.labels_topic}" if producer is not None and stats.labels else ""
    target = f" to {producer.events_topic}" if producer is not None else ""
    print(
        f"streamlearn produce: {verb} {stats.sent} events{target}{labels}, {stats.invalid} invalid rows skipped, "
        f"in {stats.seconds:.1f} s ({stats.rate:,.0f}/s)",
        file=sys.stderr,
    )
    return EXIT_INVALID_ROWS if stats.invalid else EXIT_OK


def _producer(args: argparse.Namespace, settings: Settings | None) -> EventProducer:
    kafka = settings.kafka if settings is not None else KafkaSettings()
    return EventProducer(
        args.bootstrap or kafka.bootstrap_servers,
        events_topic=args.topic or kafka.topics.events, labels_topic=args.labels_topic or kafka.topics.labels,
        limits=settings.limits if settings is not None else None, **security_options(kafka),
    )


def add_parser(sub: Any) -> None:
    """Register ``produce`` on the ``streamlearn`` subcommands."""
    parser = sub.add_parser(
        "produce", help="send your own CSV or JSON Lines rows to the events topic, validated row by row",
        description=__doc__.replace("``", "`"), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", help="a .csv, .jsonl or .ndjson file, or - for standard input")
    parser.add_argument("--format", choices=["csv", "jsonl"], default=None,
                        help="default: from the extension (standard input: jsonl)")
    parser.add_argument("--id-column", default=None,
                        help="column of the event id (default 'id'; when absent: <id-prefix>-<line number>)")
    parser.add_argument("--id-prefix", default=None, help="prefix of generated ids (default: the file's name)")
    parser.add_argument("--key-column", default=None, help="column of the entity key (default 'key', if present)")
    parser.add_argument("--ts-column", default=None,
                        help="column of the event time, epoch seconds or ISO-8601 (default 'ts', if present)")
    parser.add_argument("--label-column", default=None, help="column of the label (default 'label', if present)")
    parser.add_argument("--labels", choices=["inline", "topic"], default="inline",
                        help="inline: the label inside the event; topic: events without it, labels on the labels "
                             "topic (same Kafka key)")
    parser.add_argument("--delimiter", default=",", help="CSV field delimiter")
    parser.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on standard error (default: when it is a terminal)")
    parser.add_argument("--dry-run", action="store_true", help="validate every row, send nothing")
    parser.add_argument("--config", default=None,
                        help="worker settings (YAML): Kafka servers, security, topics and limits")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default 127.0.0.1:9092)")
    parser.add_argument("--topic", default=None, help="events topic (default: events)")
    parser.add_argument("--labels-topic", default=None, help="labels topic (default: labels)")
    parser.set_defaults(func=run)
