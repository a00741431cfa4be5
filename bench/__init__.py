"""Benchmarks: ``python -m bench`` measures the bare model loop, a plain kafka-python loop and the worker."""

from shared.signing_keys import ensure_key_in_environment

# every benchmark runs throw-away workers on temporary state: a random checkpoint key unless one is set
ensure_key_in_environment()
