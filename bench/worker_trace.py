"""A trace of the worker's poll loop for the latency diagnostics (``bench.latency_stages``).

Installed on a running :class:`~services.worker.Worker` by ``bench.runner worker --trace PATH``: it times every
call of the loop's parts (the poll, each step, the commit, the exports, ...) and notes, per processed chunk, its
offsets and when it was polled, started and finished; garbage collections are timed through ``gc.callbacks``.
Written as JSON when the worker stops. Every list is bounded (``MAX_ENTRIES``); a trace that hit the bound says so.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: at most this many entries per list (a paced run of 10 s at 10,000 events/s needs a few tens of thousands)
MAX_ENTRIES = 200_000
#: the parts the loop calls itself, one after the other (the others run inside one of them, or on the
#: exactly-once commit's helper thread): their sum and the window give the loop's own remainder
LOOP_PARTS = ("poll", "maybe_commit", "update_champion", "update_gauges", "maybe_pull", "backpressure.apply",
              "score export", "train_if_due", "checkpoint poll")
#: parts that run on the exactly-once commit's helper thread, beside the loop
HELPER_PARTS = ("producer.send_offsets_to_transaction", "producer.commit_transaction", "producer.begin_transaction")


class LoopTrace:
    """Timings of one worker's loop: calls by part, chunks by offsets, collections by generation."""

    def __init__(self) -> None:
        #: part -> [(start, seconds)], wall clock (``time.time()``) for the start
        self.calls: dict[str, list[tuple[float, float]]] = {}
        #: per processed chunk: (partition, first offset, last offset, polled_at, started, finished)
        self.chunks: list[tuple[int, int, int, float, float, float]] = []
        #: per collection: (start, seconds, generation)
        self.collections: list[tuple[float, float, int]] = []
        self.truncated = False
        self._gc_started = 0.0

    def _add(self, entries: list[Any], entry: Any) -> None:
        if len(entries) < MAX_ENTRIES:
            entries.append(entry)
        else:
            self.truncated = True

    def wrap(self, owner: Any, name: str, part: str) -> None:
        """Replace ``owner.name`` (a method) by a timed call of it, noted as ``part`` (nothing when ``owner`` has no
        such method: an older version of the worker)."""
        call: Callable[..., Any] | None = getattr(owner, name, None)
        if call is None:
            return
        entries = self.calls.setdefault(part, [])

        def timed(*args: Any, **kwargs: Any) -> Any:
            started, clock = time.time(), time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self._add(entries, (started, time.perf_counter() - clock))

        setattr(owner, name, timed)

    def chunk(self, records: list[Any], polled_at: float, started: float, finished: float) -> None:
        """Note one processed chunk (its records in offset order per partition)."""
        if records:
            first, last = records[0], records[-1]
            self._add(self.chunks, (first.partition, first.offset, last.offset, polled_at, started, finished))

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self._add(self.collections, (time.time(), time.perf_counter() - self._gc_started, info["generation"]))

    def install(self, worker: Any) -> None:
        """Time the loop's parts of ``worker`` (started: its consumer, committer and steps exist)."""
        self.wrap(worker.consumer, "poll", "poll")
        for step in worker.steps:
            self.wrap(step, "process", f"step {type(step).__name__}")
        for name in ("_maybe_commit", "_update_champion", "_update_gauges", "_maybe_pull"):
            self.wrap(worker, name, name.strip("_"))
        self.wrap(worker.backpressure, "apply", "backpressure.apply")
        self.wrap(worker.score_step, "export", "score export")
        self.wrap(worker.model_step, "train_if_due", "train_if_due")
        if worker.checkpointer is not None:
            self.wrap(worker.checkpointer, "poll", "checkpoint poll")
            self.wrap(worker.checkpointer, "save", "checkpoint save")
            self.wrap(worker.checkpointer, "hold", "checkpoint hold")
            self.wrap(worker.checkpointer, "write_held", "checkpoint write_held")
            self.wrap(worker.checkpointer, "_start_child", "checkpoint fork")
        committer = worker.committer
        for name in ("release", "commit", "commit_when_delivered"):
            self.wrap(committer, name, f"committer.{name}")
        self.wrap(committer._producer, "send", "producer.send")
        # exactly-once: the commit's steps (on the commit's helper thread) and the loop's waits for a commit
        for name in ("send_offsets_to_transaction", "commit_transaction", "begin_transaction"):
            self.wrap(committer._producer, name, f"producer.{name}")
        self.wrap(committer, "_finish_commit", "committer.finish_commit")
        gc.callbacks.append(self.on_gc)

    def write(self, path: Path) -> None:
        if self.on_gc in gc.callbacks:
            gc.callbacks.remove(self.on_gc)
        path.write_text(json.dumps({"calls": self.calls, "chunks": self.chunks, "collections": self.collections,
                                    "truncated": self.truncated}))


def window_breakdown(trace: LoopTrace, start: float, end: float, events: int) -> str:
    """The calls that began in ``[start, end]`` (wall clock), by part: count, seconds and microseconds per event,
    the loop's own parts first (with the remainder of the window they leave: the loop's own code), then the parts
    inside them, then those on the commit's helper thread."""
    window = max(end - start, 1e-9)
    totals = {part: (len(inside), sum(seconds for _, seconds in inside))
              for part, calls in trace.calls.items()
              if (inside := [(began, seconds) for began, seconds in calls if start <= began <= end])}
    top = [p for p in totals if p in LOOP_PARTS or p.startswith("step ")]
    helper = [p for p in totals if p in HELPER_PARTS]
    nested = [p for p in totals if p not in top and p not in helper]
    per_event = 1e6 / max(events, 1)

    def rows(parts: list[str]) -> list[str]:
        ordered = sorted(parts, key=lambda p: -totals[p][1])
        return [f"  {p:<38} {totals[p][0]:>7} calls {totals[p][1]:>8.3f} s {totals[p][1] * per_event:>8.1f} us/event "
                f"{100 * totals[p][1] / window:>5.1f} %" for p in ordered]

    remainder = window - sum(totals[p][1] for p in top)
    collected = sum(seconds for began, seconds, _ in trace.collections if start <= began <= end)
    lines = [f"window {window:.2f} s, {events} events ({events / window:,.0f} events/s)", "the loop's parts:",
             *rows(top), f"  {'(the loop itself: the rest)':<38} {'':>13} {remainder:>8.3f} s "
             f"{remainder * per_event:>8.1f} us/event {100 * remainder / window:>5.1f} %",
             "inside them:", *rows(nested),
             f"  {'garbage collections':<38} {'':>13} {collected:>8.3f} s {collected * per_event:>8.1f} us/event "
             f"{100 * collected / window:>5.1f} %"]
    if helper:
        lines += ["on the commit's helper thread (beside the loop):", *rows(helper)]
    if trace.truncated:
        lines.append(f"(the trace hit its bound of {MAX_ENTRIES} entries a list: later calls are missing)")
    return "\n".join(lines)
