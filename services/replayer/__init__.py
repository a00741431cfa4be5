"""The replayer: streams a dataset or a synthetic stream into the events topic."""

from services.replayer.replay import (
    DelayedLabelPlan,
    ReplayStats,
    ScheduleWindow,
    delayed_schedule,
    event_record,
    label_record,
    replay,
)

__all__ = [
    "DelayedLabelPlan", "ReplayStats", "ScheduleWindow", "delayed_schedule", "event_record", "label_record", "replay",
]
