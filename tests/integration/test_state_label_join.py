"""LabelJoin on a real Redis: joined, held then joined, duplicate, late, orphan, bounds, one join per label."""

from __future__ import annotations

import threading

import pytest
import redis

from shared.state.label_join import LabelJoin, PendingPrediction

pytestmark = pytest.mark.integration


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _join(client: redis.Redis, clock: ManualClock, **kwargs: object) -> LabelJoin:
    options: dict = {"ttl_s": 60.0, "max_entries": 1000, "early_label_ttl_s": 30.0, "clock": clock, **kwargs}
    return LabelJoin(client, "sltest", "g", **options)


def _pending(event_id: str, offset: int = 0) -> PendingPrediction:
    return PendingPrediction(
        event_id=event_id, topic="events", partition=2, offset=offset,
        features={"amount": 12.5, "country": "FR", "flag": True, "missing": None}, key=f"user-{offset % 3}",
        event_ts=1_699_999_999.5, outputs={"logreg": {"prediction": True, "proba": {"true": 0.8}}},
    )


def test_a_label_joins_its_prediction_once(redis_client: redis.Redis) -> None:
    join = _join(redis_client, ManualClock())
    assert join.put_pending([_pending("e1", 1), _pending("e2", 2)]).joined == []
    assert join.size() == 2
    result = join.resolve_labels([("e1", True, 1_700_000_001.0)])
    assert [(j.pending, j.label, j.label_ts) for j in result.joined] == [(_pending("e1", 1), True, 1_700_000_001.0)]
    assert result.held == result.duplicates == result.late == []
    assert join.size() == 1
    again = join.resolve_labels([("e1", False, None)])
    assert again.joined == [] and again.duplicates == ["e1"]


def test_duplicate_label_in_the_same_batch(redis_client: redis.Redis) -> None:
    join = _join(redis_client, ManualClock())
    join.put_pending([_pending("e1")])
    result = join.resolve_labels([("e1", 1, None), ("e1", 0, None)])
    assert [j.label for j in result.joined] == [1]
    assert result.duplicates == ["e1"]


def test_an_early_label_is_held_then_joined_by_put_pending(redis_client: redis.Redis) -> None:
    clock = ManualClock()
    join = _join(redis_client, clock)
    result = join.resolve_labels([("e9", "spam", 5.0)])
    assert result.held == ["e9"] and result.joined == []
    assert join.sizes().held == 1
    assert join.resolve_labels([("e9", "ham", 6.0)]).duplicates == ["e9"], "a second label for a held event"
    clock.now += 10
    put = join.put_pending([_pending("e9", 9), _pending("e10", 10)])
    assert [(j.pending.event_id, j.label, j.label_ts) for j in put.joined] == [("e9", "spam", 5.0)]
    assert join.sizes().held == 0
    assert join.size() == 1, "the joined prediction is not stored, the other one is"
    assert join.resolve_labels([("e9", "spam", 5.0)]).duplicates == ["e9"]


def test_a_re_sent_event_after_its_join_is_not_stored_again(redis_client: redis.Redis) -> None:
    join = _join(redis_client, ManualClock())
    join.put_pending([_pending("e1", 1)])
    join.resolve_labels([("e1", True, None)])
    put = join.put_pending([_pending("e1", 7)])
    assert put.already_joined == ["e1"] and put.joined == []
    assert join.size() == 0


def test_an_id_already_pending_keeps_its_first_entry(redis_client: redis.Redis) -> None:
    join = _join(redis_client, ManualClock())
    join.put_pending([_pending("e1", 1)])
    join.put_pending([PendingPrediction("e1", "events", 2, 1, {}, None, None, {})])
    assert join.resolve_labels([("e1", 1, None)]).joined[0].pending == _pending("e1", 1)


def test_an_event_record_read_again_gets_its_join_back_each_time_with_the_label_position(
    redis_client: redis.Redis,
) -> None:
    join = _join(redis_client, ManualClock())
    join.resolve_labels([("early", "yes", 3.0)], [("labels", 2, 10)])
    first = join.put_pending([_pending("early", 5), _pending("later", 6)])
    assert [(j.pending.event_id, j.label_position, j.again) for j in first.joined] == [
        ("early", ("labels", 2, 10), False)]
    join.resolve_labels([("later", "no", 4.0)], [("labels", 2, 11)])
    for _ in range(2):  # every time the record is read again (a restore, then a rebalance), while the join lives
        replay = join.put_pending([_pending("early", 5), _pending("later", 6)])
        again = {(j.pending.event_id, j.label, j.label_position, j.again) for j in replay.joined}
        assert again == {("early", "yes", ("labels", 2, 10), True), ("later", "no", ("labels", 2, 11), True)}
    assert join.size() == 0
    assert join.put_pending([_pending("early", 9)]).already_joined == ["early"], "another record, same id"


def test_a_label_record_read_again_gets_its_join_back_each_time(redis_client: redis.Redis) -> None:
    join = _join(redis_client, ManualClock())
    join.put_pending([_pending("e1", 1)])
    label_at = [("labels", 2, 40)]
    first = join.resolve_labels([("e1", True, None)], label_at).joined
    assert [(j.pending, j.label_position, j.again) for j in first] == [(_pending("e1", 1), ("labels", 2, 40), False)]
    assert join.resolve_labels([("e1", True, None)], [("labels", 2, 41)]).duplicates == ["e1"]
    for _ in range(2):
        replay = join.resolve_labels([("e1", True, None)], label_at)
        assert [(j.pending, j.label_position, j.again) for j in replay.joined] == [
            (_pending("e1", 1), ("labels", 2, 40), True)]


def test_a_label_after_the_prediction_expired_is_late(redis_client: redis.Redis) -> None:
    clock = ManualClock()
    join = _join(redis_client, clock, ttl_s=60.0, late_marker_ttl_s=600.0)
    join.put_pending([_pending("e1"), _pending("e2")])
    clock.now += 61
    result = join.resolve_labels([("e1", True, None)])
    assert result.late == ["e1"] and result.joined == []
    assert result.expired == 1, "e2 expired too and was dropped"
    assert join.size() == 0
    assert join.resolve_labels([("e2", True, None)]).late == ["e2"], "told late by its seen marker"
    clock.now += 600
    assert join.resolve_labels([("e2", True, None)]).held == ["e2"], "past the late marker: like an early label"


def test_a_label_after_its_prediction_was_evicted_is_late(redis_client: redis.Redis) -> None:
    clock = ManualClock()
    join = _join(redis_client, clock, max_entries=2)
    join.put_pending([_pending("e1")])
    clock.now += 1
    put = join.put_pending([_pending("e2"), _pending("e3")])
    assert put.evicted == 1
    result = join.resolve_labels([("e1", True, None), ("e3", False, None)])
    assert result.late == ["e1"]
    assert [j.pending.event_id for j in result.joined] == ["e3"]


def test_a_label_whose_event_never_comes_is_an_orphan(redis_client: redis.Redis) -> None:
    clock = ManualClock()
    join = _join(redis_client, clock, early_label_ttl_s=30.0)
    assert join.resolve_labels([("ghost", True, None)]).held == ["ghost"]
    clock.now += 31
    result = join.resolve_labels([("other", True, None)])
    assert result.orphaned == 1 and result.held == ["other"]
    assert join.sizes().held == 1
    put = join.put_pending([_pending("ghost")])
    assert put.joined == [], "the held label expired: the event waits for a new label"
    assert join.size() == 1


def test_flood_of_unlabelled_predictions_stays_bounded(redis_client: redis.Redis) -> None:
    clock = ManualClock()
    join = _join(redis_client, clock, max_entries=100, max_held=50, max_seen=300)
    evicted = 0
    for batch in range(40):
        clock.now += 0.5
        put = join.put_pending([_pending(f"e{batch}-{i}", i) for i in range(50)])
        evicted += put.evicted
        assert join.size() <= 100
    assert join.size() == 100
    assert evicted == 40 * 50 - 100
    orphaned = 0
    for batch in range(5):
        clock.now += 0.5
        result = join.resolve_labels([(f"label-only-{batch}-{i}", 1, None) for i in range(100)])
        orphaned += result.orphaned
        assert join.sizes().held <= 50
    assert orphaned == 5 * 100 - 50
    assert redis_client.zcard("sltest:g:join:seen") == 300
    assert redis_client.zcard("sltest:g:join:joined") <= 100
    newest = join.resolve_labels([(f"e{batch}-{i}", 0, None) for batch in (38, 39) for i in range(50)])
    assert len(newest.joined) == 100, "the newest predictions are the ones kept"


def test_concurrent_resolvers_join_each_label_once(redis_client: redis.Redis, redis_url: str) -> None:
    clock = ManualClock()
    join = _join(redis_client, clock)
    ids = [f"e{i}" for i in range(300)]
    join.put_pending([_pending(event_id, i) for i, event_id in enumerate(ids)])
    joined_counts: list[int] = []

    def resolve() -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            mine = _join(client, clock)
            total = 0
            for start in range(0, len(ids), 25):
                total += len(mine.resolve_labels([(i, 1, None) for i in ids[start:start + 25]]).joined)
            joined_counts.append(total)
        finally:
            client.close()

    threads = [threading.Thread(target=resolve) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(joined_counts) == 3
    assert sum(joined_counts) == len(ids)
    assert join.size() == 0
