"""``bench.worker_trace.window_breakdown``: where a worker's measured window went, by part of its loop."""

from __future__ import annotations

from bench.worker_trace import LoopTrace, window_breakdown


def _row(text: str, part: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(part))


def test_breakdown_counts_calls_in_the_window_and_leaves_the_rest_to_the_loop() -> None:
    trace = LoopTrace()
    trace.calls = {
        "poll": [(9.0, 5.0), (10.0, 0.5), (11.0, 0.5)],  # the first began before the window
        "step ModelStep": [(10.5, 6.0)],
        "maybe_commit": [(17.0, 1.0), (21.0, 1.0)],  # the second began after it
        "checkpoint hold": [(17.1, 0.8)],
        "producer.commit_transaction": [(17.5, 0.25)],
    }
    trace.collections = [(12.0, 0.1, 2), (25.0, 9.9, 2)]
    text = window_breakdown(trace, 10.0, 20.0, events=1000)
    assert "window 10.00 s, 1000 events (100 events/s)" in text
    assert "2 calls    1.000 s   1000.0 us/event  10.0 %" in _row(text, "poll")
    assert "1 calls    6.000 s   6000.0 us/event  60.0 %" in _row(text, "step ModelStep")
    assert "1 calls    1.000 s" in _row(text, "maybe_commit")
    # 10 s of window, 8 s in the loop's own parts: the nested hold and the helper thread's commit are not added
    assert "2.000 s   2000.0 us/event  20.0 %" in _row(text, "(the loop itself")
    lines = text.splitlines()
    assert lines.index("inside them:") < lines.index(_row(text, "checkpoint hold"))
    assert lines.index("on the commit's helper thread (beside the loop):") < lines.index(
        _row(text, "producer.commit_transaction"))
    assert "0.100 s" in _row(text, "garbage collections")


def test_breakdown_says_when_the_trace_was_truncated() -> None:
    trace = LoopTrace()
    trace.calls = {"poll": [(1.0, 0.1)]}
    assert "bound" not in window_breakdown(trace, 0.0, 2.0, events=10)
    trace.truncated = True
    assert "later calls are missing" in window_breakdown(trace, 0.0, 2.0, events=10)
