"""The streamlearn worker: a consumer-group member that cleans, predicts, learns and publishes."""

from services.worker.worker import Worker

__all__ = ["Worker"]
