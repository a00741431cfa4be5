"""Start-up errors: a worker that cannot start says why in one line and exits non-zero (docs/security.md).

Any check that runs before the poll loop (keys, brokers, Redis, TLS files, credentials) raises
:class:`StartupError`; the CLI prints its message alone, with no traceback, and exits with
:data:`STARTUP_EXIT_CODE`.
"""

from __future__ import annotations

#: the exit status of a worker that refused to start (2 is taken by invalid settings)
STARTUP_EXIT_CODE = 3


class StartupError(Exception):
    """The worker cannot start; the message is one line: what is wrong, where, and what to check."""
