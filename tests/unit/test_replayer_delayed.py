"""The replayer's delayed-label schedule, and the settings of dedup, entities and the label join."""

from __future__ import annotations

import pytest

from services.replayer import DelayedLabelPlan, delayed_schedule, label_record
from shared.settings import SettingsError, load_settings
from shared.steps.entities import entity_spec


def test_labels_come_1_to_max_delay_events_after_their_event_shuffled_within_windows() -> None:
    n, plan = 5000, DelayedLabelPlan(min_delay=1, max_delay=500, window=50, unlabelled=0.02, duplicated=0.01)
    windows = delayed_schedule(n, plan, seed=3)
    sent: list[int] = []
    lateness: list[int] = []
    for window in windows:
        sent.extend(window.events)
        originals = [i for i in window.events if sent.count(i) == 1]
        last = max(originals) if originals else max(sent)
        lateness.extend(last - i for i in window.labels)
        assert set(window.labels) <= set(sent), "a label never comes before its event"
    labelled = [i for w in windows for i in w.labels]
    assert sorted(set(sent)) == list(range(n)) and len(sent) - n == pytest.approx(0.01 * n, abs=25)
    assert len(labelled) == len(set(labelled)) == pytest.approx(0.98 * n, abs=40)
    # near the end of the stream labels cannot be later than the last event
    body = [late for late, i in zip(lateness, labelled, strict=True) if i < n - plan.max_delay]
    assert min(body) >= 1 and max(body) <= 500 and max(body) > 400
    assert any(w.labels != sorted(w.labels) for w in windows), "shuffled within windows"
    assert delayed_schedule(n, plan, seed=3)[7].labels == windows[7].labels, "deterministic per seed"


def test_duplicate_labels_are_planned_when_asked() -> None:
    windows = delayed_schedule(2000, DelayedLabelPlan(duplicate_labels=0.05), seed=1)
    labels = [i for w in windows for i in w.labels]
    assert len(labels) - len(set(labels)) == pytest.approx(0.05 * 0.98 * 2000, abs=40)


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"max_delay": 10, "window": 50}, {"unlabelled": 1.5}])
def test_bad_plans_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DelayedLabelPlan(**kwargs)  # type: ignore[arg-type]


def test_a_label_record_carries_the_event_key() -> None:
    key, value = label_record(b"customer-1", "e1", True, ts=1.0)
    assert key == b"customer-1" and value == b'{"id":"e1","label":true,"ts":1.0}'


def test_state_settings_have_bounded_defaults_and_validate() -> None:
    settings = load_settings(None)
    assert settings.dedup.enabled and settings.dedup.max_entries > 0
    assert settings.labels.enabled and settings.labels.max_entries > 0 and settings.labels.ttl_s > 0
    assert not settings.entities.enabled
    with pytest.raises(SettingsError, match="last_n"):
        load_settings(None, entities={"enabled": True, "fields": ["amount"]})
    with pytest.raises(SettingsError, match="ttl_s"):
        load_settings(None, labels={"ttl_s": 0})
    entities = load_settings(None, entities={"enabled": True, "fields": ["amount"], "last_seconds": 60}).entities
    spec = entity_spec(entities)
    assert spec.fields == ("amount",) and spec.last_seconds == 60 and spec.last_n is None
