"""Send events with the Python client and read the worker's predictions of them (docs/contract.md, "Python client").

Start the local stack and a worker first::

    streamlearn stack up
    streamlearn worker --config deploy/config/worker.example.yaml &
    python examples/produce_and_read.py --n 500

It sends ``--n`` labelled events (a noisy threshold on ``amount``), then follows ``predictions`` until each of them
has its prediction, and prints how often the champion was right over the first and the second half (5% of the
labels are flipped, so about 95% is the best a model can do). Exit status 1 when not every prediction came within
``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence

from shared.client import Event, EventProducer, InvalidRecord, PredictionReader


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--events-topic", default="events")
    parser.add_argument("--predictions-topic", default="predictions")
    parser.add_argument("--n", type=int, default=500, help="events to send")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the predictions")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    run = f"example-{time.time_ns()}"  # ids unique to this run: the worker drops ids it has seen (dedup)
    labels: dict[str, bool] = {}
    # the reader is made first, so that "the end" it starts from comes before the first event's prediction
    with PredictionReader(args.bootstrap, args.predictions_topic) as reader, \
            EventProducer(args.bootstrap, events_topic=args.events_topic) as producer:
        try:
            producer.send_event({"id": f"{run}-bad", "features": {"amount": float("nan")}})
        except InvalidRecord as exc:
            print(f"refused before sending ({exc.code}): {exc}")
        for i in range(args.n):
            amount = rng.uniform(0.0, 100.0)
            event = Event(
                id=f"{run}-{i:06d}", key=f"customer-{i % 10}", ts=time.time(),
                features={"amount": amount, "country": rng.choice(["NL", "FR", "DE"])},
                label=(amount > 50.0) != (rng.random() < 0.05),
            )
            producer.send_event(event)
            labels[event.id] = bool(event.label)
        producer.flush()
        print(f"sent {args.n} events to {args.events_topic}")

        right: dict[str, bool] = {}
        for prediction in reader.predictions(timeout_s=args.timeout):
            if prediction.id in labels and prediction.id not in right:
                right[prediction.id] = prediction.prediction == labels[prediction.id]
                if len(right) == len(labels):
                    break

    ordered = [right[event_id] for event_id in sorted(right)]
    half = len(ordered) // 2
    for name, part in (("first half", ordered[:half]), ("second half", ordered[half:])):
        if part:
            print(f"{name}: {sum(part) / len(part):.1%} right ({len(part)} predictions)")
    print(f"{len(right)} of {len(labels)} predictions read from {args.predictions_topic}")
    return 0 if len(right) == len(labels) else 1


if __name__ == "__main__":
    sys.exit(main())
