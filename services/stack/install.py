"""``python -m services.stack.install``: install what the local stack needs (used by ``make demo`` and ``make test``).

Debian's redis-server, prometheus and chromium (the dashboard's browser test) through apt-get when missing, and
the Kafka broker's jars from Maven Central.
"""

from __future__ import annotations

import sys

from services.stack.kafka_server import resolve_kafka_jars
from services.stack.process import StackError
from services.stack.tools import APT_PACKAGES, ensure_installed, require_java, require_maven


def main() -> int:
    """Install or verify every external piece; print one clear line per failure."""
    try:
        ensure_installed(APT_PACKAGES)
        require_java()
        require_maven()
        jars = resolve_kafka_jars()
    except StackError as exc:
        print(f"streamlearn install: {exc}", file=sys.stderr)
        return 1
    print(f"stack prerequisites ready (Kafka jars in {jars})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
