"""Sharing what the workers of a consumer group learn (``sync.scope: group``)."""
