"""A periodic checkpoint held between its snapshot and its write (docs/architecture.md, "Commit semantics").

The worker snapshots a due checkpoint at the commit, in the loop, and writes it once the commit's outputs are
durable (delivered, or their transaction committed): no flush or transaction wait in the loop.
"""

from __future__ import annotations

from tests.unit.test_checkpoint_budget import TP, make

OTHER = ("events", 1)


def test_the_snapshot_is_taken_at_hold_and_written_later_and_no_checkpoint_is_due_meanwhile() -> None:
    checkpointer, clock, store, _, _ = make(0.0002, every_events=100, every_seconds=10.0)
    checkpointer.account(100)
    assert checkpointer.due() and checkpointer.can_hold({TP: 100})
    checkpointer.hold({TP: 100})
    assert store.saved == []
    checkpointer.account(500)
    clock.now += 20.0
    assert not checkpointer.due(), "one checkpoint at a time: the held one is written first"
    assert checkpointer.write_held()
    assert [states[TP].next_offset for states in store.saved] == [100]
    assert checkpointer.due()  # the 500 events since the snapshot


def test_a_dropped_partition_is_not_written_and_dropping_everything_frees_the_cadence() -> None:
    checkpointer, _, store, _, _ = make(0.0002, every_events=100, every_seconds=10.0)
    checkpointer.hold({TP: 10})
    checkpointer.drop_held([OTHER])  # not held: nothing changes
    checkpointer.drop_held([TP])
    assert checkpointer.write_held() and store.saved == []
    checkpointer.account(100)
    assert checkpointer.due()


def test_a_failed_write_backs_off() -> None:
    checkpointer, clock, store, _, _ = make(0.0002, every_events=100, every_seconds=10.0)
    checkpointer.hold({TP: 10})
    store.fail = True
    assert not checkpointer.write_held()
    assert not checkpointer.healthy
    checkpointer.account(100)
    assert not checkpointer.due()  # backing off
    clock.now += 1.0
    assert checkpointer.due()


def test_an_expensive_snapshot_of_a_fork_safe_model_goes_to_a_forked_child_instead_of_being_held() -> None:
    checkpointer, _, _, _, _ = make(0.05, background_min_ms=20.0)
    assert checkpointer.save({TP: 0})  # 50 ms of snapshot, measured
    assert checkpointer.can_hold({TP: 0}), "a model a child may not snapshot is always taken in the loop"
    for learner in checkpointer._models.sets[TP].learners.values():
        learner.kind = "river"  # type: ignore[misc]
    assert not checkpointer.can_hold({TP: 0})
    checkpointer.last_snapshot_s = 0.001
    assert checkpointer.can_hold({TP: 0})
