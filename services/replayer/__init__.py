"""The replayer: streams a dataset or a synthetic stream into the events topic."""

from services.replayer.replay import ReplayStats, event_record, replay

__all__ = ["ReplayStats", "event_record", "replay"]
