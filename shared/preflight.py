"""Start-up checks: Kafka and Redis answer, or the worker says which address failed and what to check, in one line.

Without them an unreachable broker ended in a 30-second wait and a ``KafkaTimeoutError`` traceback. Every failure is
a :class:`~shared.startup.StartupError`, which the CLI prints alone and exits with status 3; checks of TLS and
credentials raise the same error.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import redis

from shared.settings import KafkaSettings, RedisSettings
from shared.startup import StartupError
from shared.state.connection import redis_client


def redacted_url(url: str) -> str:
    """``url`` without its user name and password: ``scheme://host:port/db``."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit():
        raise StartupError(f"refusing to start: kafka.bootstrap_servers has {address!r}, expected host:port")
    return host.strip("[]"), int(port)


def check_kafka(kafka: KafkaSettings, timeout_s: float) -> None:
    """One bootstrap server accepts a TCP connection within ``timeout_s`` in all, or :class:`StartupError`."""
    addresses = [a.strip() for a in kafka.bootstrap_servers.split(",") if a.strip()]
    deadline = time.monotonic() + timeout_s
    failures: list[str] = []
    for address in addresses:
        host, port = _host_port(address)
        try:
            socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())).close()
            return
        except OSError as exc:
            failures.append(f"{address} ({exc.strerror or type(exc).__name__})")
    raise StartupError(
        f"cannot reach Kafka at {', '.join(failures)} within {timeout_s:g} s (kafka.bootstrap_servers): check the "
        f"address and port, that the broker runs, and that its listener speaks kafka.security_protocol="
        f"{kafka.security_protocol}"
    )


def check_redis(settings: RedisSettings, timeout_s: float) -> None:
    """Redis answers PING within ``timeout_s`` with the configured credentials and TLS, or :class:`StartupError`."""
    where = redacted_url(settings.url.get_secret_value())
    client = redis_client(settings, timeout_s=timeout_s)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise StartupError(f"Redis at {where} refused the credentials in redis.url ({exc}): check the user name "
                           "and password (or the ACL user's rights)") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "NOPERM" in str(exc):
            raise StartupError(f"Redis at {where} refused the connection ({exc}): check the password or ACL user "
                               "in redis.url") from None
        raise StartupError(f"Redis at {where} answered PING with an error ({exc})") from None
    except redis.RedisError as exc:
        reason = str(exc).rstrip(".")
        raise StartupError(f"cannot reach Redis at {where} within {timeout_s:g} s (redis.url): {reason}; check the "
                           "host, port and scheme (rediss:// for TLS), and that Redis runs") from None
    finally:
        client.close()
