"""Where an exactly-once commit's time goes: ``python -m bench.txn_costs [--bootstrap HOST:PORT]``.

For each client (librdkafka, kafka-python) one transactional producer runs ``--transactions`` transactions of
``--records`` records each, as the worker does at ``worker.commit_interval_s: 0.1``: begin, send, add the consumer
offsets (``send_offsets_to_transaction``), deliver (``flush``), commit (``commit_transaction``); each step is
timed on its own, and a ``read_committed`` reader (librdkafka) notes when the transaction's last record became
readable after the commit returned (the markers and the reader's fetch). Without ``--bootstrap`` it starts its own
Kafka on free ports. Prints a table of p50 / p99 / max per step; docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.suite import percentile
from shared.kafka.admin import ensure_topics

STEPS = ("begin+send", "send_offsets", "flush", "commit", "readable after commit")


@contextlib.contextmanager
def _broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap is not None:
        yield bootstrap
        return
    from services.stack import KafkaServer, free_ports

    with tempfile.TemporaryDirectory(prefix="streamlearn-txn-") as tmp:
        port, controller_port = free_ports(2)
        server = KafkaServer(Path(tmp), port=port, controller_port=controller_port, heap="1G", die_with_parent=True)
        server.start()
        try:
            yield server.bootstrap
        finally:
            server.stop()


class _Reader(threading.Thread):
    """Notes when each transaction's last record (its value names the transaction) becomes readable."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        super().__init__(name="txn-reader", daemon=True)
        self.seen: dict[bytes, float] = {}
        self.halt = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:6]}",
                                   "isolation.level": "read_committed", "fetch.wait.max.ms": 5,
                                   "enable.auto.commit": False})
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])

    def run(self) -> None:
        while not self.halt.is_set():
            message = self._consumer.poll(0.05)
            if message is None or message.error() is not None:
                continue
            now = time.monotonic()
            for record in [message, *self._consumer.consume(1000, 0)]:
                value = record.value() or b""
                if record.error() is None and value.startswith(b"last-"):
                    self.seen.setdefault(value, now)
        self._consumer.close()


def _confluent(bootstrap: str, topic: str, source: str, group: str) -> tuple[Callable[..., Any], dict[str, Any]]:
    from confluent_kafka import Consumer, Producer, TopicPartition

    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"txn-{uuid.uuid4().hex[:6]}",
                         "enable.idempotence": True, "acks": "all", "linger.ms": 1,
                         "delivery.report.only.error": True})
    producer.init_transactions(30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    metadata = consumer.consumer_group_metadata()

    def one(index: int, records: int, times: dict[str, list[float]]) -> float:
        t0 = time.monotonic()
        producer.begin_transaction()
        for i in range(records):
            producer.produce(topic, f"last-{index}".encode() if i == records - 1 else b"x")
        t1 = time.monotonic()
        producer.send_offsets_to_transaction([TopicPartition(source, 0, index * records)], metadata, 30)
        t2 = time.monotonic()
        producer.flush(30)
        t3 = time.monotonic()
        producer.commit_transaction(30)
        t4 = time.monotonic()
        for step, took in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=False):
            times[step].append(1000 * took)
        return t4

    def close() -> None:
        producer.flush(5)
        consumer.close()

    return one, {"close": close}


def _kafka_python(bootstrap: str, topic: str, source: str, group: str) -> tuple[Callable[..., Any], dict[str, Any]]:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata, TopicPartition

    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"txn-{uuid.uuid4().hex[:6]}",
                             enable_idempotence=True, acks="all", linger_ms=1)
    producer.init_transactions()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    metadata = consumer.group_metadata()

    def one(index: int, records: int, times: dict[str, list[float]]) -> float:
        t0 = time.monotonic()
        producer.begin_transaction()
        for i in range(records):
            producer.send(topic, value=f"last-{index}".encode() if i == records - 1 else b"x")
        t1 = time.monotonic()
        producer.send_offsets_to_transaction({TopicPartition(source, 0): OffsetAndMetadata(index * records, "", -1)},
                                             metadata)
        t2 = time.monotonic()
        producer.flush()
        t3 = time.monotonic()
        producer.commit_transaction()
        t4 = time.monotonic()
        for step, took in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=False):
            times[step].append(1000 * took)
        return t4

    def close() -> None:
        producer.close(5)
        consumer.close()

    return one, {"close": close}


def measure(bootstrap: str, client: str, transactions: int, records: int, pause_s: float) -> dict[str, list[float]]:
    """Per step, the milliseconds of each transaction (the first five, warming up, left out)."""
    suffix = uuid.uuid4().hex[:6]
    topic, source = f"txn.out.{suffix}", f"txn.src.{suffix}"
    ensure_topics(bootstrap, {topic: 1, source: 1})
    reader = _Reader(bootstrap, topic)
    reader.start()
    build = _confluent if client == "confluent" else _kafka_python
    one, handles = build(bootstrap, topic, source, f"g-{suffix}")
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    committed: dict[bytes, float] = {}
    try:
        for index in range(transactions):
            committed[f"last-{index}".encode()] = one(index, records, times)
            time.sleep(pause_s)
        deadline = time.monotonic() + 10
        while len(reader.seen) < len(committed) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        reader.halt.set()
        reader.join(5)
        handles["close"]()
    times["readable after commit"] = [1000 * (reader.seen[k] - at) for k, at in committed.items() if k in reader.seen]
    return {step: values[5:] for step, values in times.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.txn_costs", description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", help="an existing broker (default: start one)")
    parser.add_argument("--transactions", type=int, default=100)
    parser.add_argument("--records", type=int, default=300, help="records per transaction (0.1 s at 3,000/s)")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between transactions")
    parser.add_argument("--clients", default="confluent,kafka-python")
    args = parser.parse_args(argv)
    with _broker(args.bootstrap) as bootstrap:
        print(f"{args.transactions} transactions of {args.records} records; ms per step, p50 / p99 / max")
        for client in args.clients.split(","):
            measure(bootstrap, client, 10, args.records, args.pause)  # warm the broker's coordinators up
            times = measure(bootstrap, client, args.transactions, args.records, args.pause)
            cells = [f"{step}: {percentile(v, 50):.1f} / {percentile(v, 99):.1f} / {max(v, default=0):.1f}"
                     for step, v in times.items()]
            print(f"{client:13s} " + "; ".join(cells))


if __name__ == "__main__":
    main()
