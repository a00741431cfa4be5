"""The checkpoint HMAC key of a test session: random, in ``STREAMLEARN_HMAC_KEY`` for every worker it starts.

Imported by ``tests/conftest.py`` before any test, so settings loaded anywhere (in-process workers, workers
started as subprocesses, the benchmarks run by tests) carry a valid key without asking for one.
"""

from __future__ import annotations

from shared.signing_keys import ensure_key_in_environment

TEST_HMAC_KEY: str = ensure_key_in_environment()
