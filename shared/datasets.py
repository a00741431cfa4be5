"""Event sources for the replayer, the demo, tests and benchmarks: River-bundled datasets and seeded
synthetic streams with a concept drift at a known position."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from river import datasets
from river.datasets import synth

from shared.learners.base import Features, Target


@dataclass(frozen=True, slots=True)
class Sample:
    """One example of a source: features, label, and the entity key for keyed streams."""

    features: Features
    label: Target
    key: str | None = None


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What a source is, for ``streamlearn replay --list`` and the docs."""

    name: str
    task: str
    description: str


def _river(dataset_cls: Callable[[], object]) -> Callable[[int, int | None], Iterator[Sample]]:
    def iterate(seed: int, drift_at: int | None) -> Iterator[Sample]:
        while True:  # a bounded dataset is replayed again from the start when --limit asks for more
            for x, y in dataset_cls():  # type: ignore[attr-defined]
                yield Sample(dict(x), y)

    return iterate


def _switching(
    before: Callable[[int], Iterator[tuple[dict, object]]],
    after: Callable[[int], Iterator[tuple[dict, object]]],
    default_drift_at: int,
) -> Callable[[int, int | None], Iterator[Sample]]:
    def iterate(seed: int, drift_at: int | None) -> Iterator[Sample]:
        position = default_drift_at if drift_at is None else drift_at
        first = before(seed)
        for x, y in itertools.islice(first, position):
            yield Sample(dict(x), y)  # type: ignore[arg-type]
        for x, y in after(seed + 1):
            yield Sample(dict(x), y)  # type: ignore[arg-type]

    return iterate


def _stationary(gen: Callable[[int], Iterator[tuple[dict, object]]]) -> Callable[[int, int | None], Iterator[Sample]]:
    def iterate(seed: int, drift_at: int | None) -> Iterator[Sample]:
        for x, y in gen(seed):
            yield Sample(dict(x), y)  # type: ignore[arg-type]

    return iterate


def _agrawal(function: int) -> Callable[[int], Iterator[tuple[dict, object]]]:
    return lambda seed: iter(synth.Agrawal(classification_function=function, seed=seed))


def _sea(variant: int) -> Callable[[int], Iterator[tuple[dict, object]]]:
    return lambda seed: iter(synth.SEA(variant=variant, seed=seed))


def _friedman(seed: int) -> Iterator[tuple[dict, object]]:
    return iter(synth.Friedman(seed=seed))


def keyed_sequence(seed: int, drift_at: int | None = None, n_keys: int = 50) -> Iterator[Sample]:
    """A keyed stream whose label depends on the entity's previous events, not on the current one alone.

    Each entity emits a value ``x`` in [-1, 1]; the label is whether the sum of the entity's last three
    values (this one and the two before) is positive. The current event alone predicts it weakly.
    """
    rng = random.Random(seed)
    history: dict[str, list[float]] = {}
    while True:
        key = f"entity-{rng.randrange(n_keys)}"
        value = rng.uniform(-1.0, 1.0)
        past = history.setdefault(key, [])
        past.append(value)
        del past[:-3]
        noise = rng.uniform(-1.0, 1.0)
        yield Sample({"x": round(value, 6), "noise": round(noise, 6)}, sum(past) > 0.0, key)


def label_flip(seed: int, drift_at: int | None = None) -> Iterator[Sample]:
    """Two uniform features; the label is ``x1 + x2 > 1`` until ``drift_at`` (default 2,000), then its opposite.

    An abrupt concept drift that models with long memory (naive Bayes' running class statistics) follow slowly
    and incremental linear models follow quickly: a stream on which the champion has to change.
    """
    rng = random.Random(seed)
    position = 2_000 if drift_at is None else drift_at
    for index in itertools.count():
        x1, x2 = rng.random(), rng.random()
        label = x1 + x2 > 1.0
        yield Sample({"x1": round(x1, 6), "x2": round(x2, 6)}, label if index < position else not label)


SOURCES: dict[str, tuple[SourceInfo, Callable[[int, int | None], Iterator[Sample]]]] = {
    "phishing": (SourceInfo("phishing", "binary", "River's Phishing websites (1,250 rows, cycled)"),
                 _river(datasets.Phishing)),
    "bananas": (SourceInfo("bananas", "binary", "River's Bananas (5,300 rows, cycled)"), _river(datasets.Bananas)),
    "shuttle": (SourceInfo("shuttle", "binary", "River's Shuttle, as an anomaly problem (label 1: anomaly)"),
                _river(datasets.Shuttle)),
    "segment": (SourceInfo("segment", "multiclass", "River's ImageSegments (7 classes, 2,310 rows, cycled)"),
                _river(datasets.ImageSegments)),
    "trump": (SourceInfo("trump", "regression", "River's TrumpApproval (1,001 rows, cycled)"),
              _river(datasets.TrumpApproval)),
    "friedman": (SourceInfo("friedman", "regression", "Friedman #1 synthetic regression"),
                 _stationary(_friedman)),
    "agrawal": (SourceInfo("agrawal", "binary", "Agrawal function 0, no drift"), _stationary(_agrawal(0))),
    "agrawal-drift": (SourceInfo("agrawal-drift", "binary",
                                 "Agrawal switching from function 0 to 2 at --drift-at (default 10,000)"),
                      _switching(_agrawal(0), _agrawal(2), 10_000)),
    "sea": (SourceInfo("sea", "binary", "SEA variant 0, no drift"), _stationary(_sea(0))),
    "sea-drift": (SourceInfo("sea-drift", "binary", "SEA switching from variant 0 to 3 at --drift-at"),
                  _switching(_sea(0), _sea(3), 10_000)),
    "keyed-sequence": (SourceInfo("keyed-sequence", "binary",
                                  "keyed stream whose label depends on the entity's last 3 events"),
                       keyed_sequence),
    "label-flip": (SourceInfo("label-flip", "binary",
                              "x1 + x2 > 1, the label inverted from --drift-at (default 2,000)"), label_flip),
}


def source_names() -> list[str]:
    return sorted(SOURCES)


def iter_source(
    name: str, *, seed: int = 42, limit: int | None = None, drift_at: int | None = None
) -> Iterator[Sample]:
    """The samples of a named source, at most ``limit`` of them."""
    try:
        _, make = SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(source_names())}") from None
    samples = make(seed, drift_at)
    return itertools.islice(samples, limit) if limit is not None else samples
