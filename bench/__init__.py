"""Benchmarks: ``python -m bench`` measures the bare model loop, a plain kafka-python loop and the worker."""
