"""The Redis client every part of the worker uses, built from :class:`~shared.settings.RedisSettings`.

The URL gives the address, the database and possibly a user and password (``redis://user:pass@host:port/0``);
``username``/``password`` override those; a ``rediss://`` URL turns on TLS, verified against ``ssl_ca_certs``
with an optional client certificate.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis

from shared.settings import RedisSettings
from shared.startup import StartupError


def redis_options(settings: RedisSettings) -> dict[str, Any]:
    """Keyword arguments for ``redis.Redis.from_url`` beyond the URL: credentials and TLS."""
    options: dict[str, Any] = {}
    if settings.username is not None:
        options["username"] = settings.username
    if settings.password is not None:
        options["password"] = settings.password.get_secret_value()
    if settings.url.get_secret_value().startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = settings.ssl_check_hostname
        for option, path in (("ssl_ca_certs", settings.ssl_ca_certs), ("ssl_certfile", settings.ssl_certfile),
                             ("ssl_keyfile", settings.ssl_keyfile)):
            if path is not None:
                options[option] = str(path)
    return options


def redis_client(settings: RedisSettings, *, timeout_s: float = 5.0) -> redis.Redis:
    """A client (raw bytes, no decoding) of the configured Redis; it connects on first use."""
    return redis.Redis.from_url(
        settings.url.get_secret_value(), socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        **redis_options(settings),
    )


class RedisSecurityError(StartupError):
    """Redis refused the configured login or TLS set-up; the message is one line: address, cause, what to check."""


def _refusal(exc: redis.RedisError, tls: bool) -> str | None:
    """What to check for an error that means Redis answered and refused; None for an unreachable server."""
    text = str(exc)
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        return (f"refused the login ({text.rstrip('.')}); check redis.username and redis.password "
                "(or the user and password in redis.url)")
    if "CERTIFICATE_VERIFY_FAILED" in text:
        detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip()
        return f"presented a certificate that is not trusted ({detail}); check redis.ssl_ca_certs"
    if tls and ("WRONG_VERSION_NUMBER" in text or "record layer failure" in text.lower()):
        return "does not speak TLS on this port; check the URL scheme (redis:// for plaintext, rediss:// for TLS)"
    if tls and "SSL" in text:
        return f"refused the TLS handshake ({text}); check redis.ssl_certfile and redis.ssl_keyfile"
    if not tls and ("reset by peer" in text or "closed by server" in text.lower()):
        return ("closed the connection on a plaintext command; it may expect TLS: check the URL scheme "
                "(rediss://) and redis.ssl_ca_certs")
    return None


def check_redis_security(settings: RedisSettings, *, timeout_s: float = 5.0) -> None:
    """Raise :class:`RedisSecurityError` when Redis answers and refuses these credentials or this TLS set-up.

    Returns quietly when a ``PING`` succeeds, and when Redis cannot be reached at all (the worker then predicts
    on and retries its checkpoints, as for any Redis outage).
    """
    url = settings.url.get_secret_value()
    parts = urlsplit(url)
    address = f"{parts.hostname}:{parts.port or 6379}"
    client = redis_client(settings, timeout_s=timeout_s)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = _refusal(exc, url.startswith("rediss://"))
        if reason is not None:
            raise RedisSecurityError(f"Redis at {address} {reason}") from None
    except OSError as exc:  # a file named by ssl_ca_certs/ssl_certfile/ssl_keyfile cannot be read
        raise RedisSecurityError(
            f"Redis at {address}: cannot set up TLS ({exc}); check redis.ssl_ca_certs, redis.ssl_certfile and "
            "redis.ssl_keyfile") from None
    finally:
        client.close()
