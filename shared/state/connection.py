"""The Redis client every part of the worker uses, built from :class:`~shared.settings.RedisSettings`.

The URL gives the address, the database and possibly a user and password (``redis://user:pass@host:port/0``);
``username``/``password`` override those; a ``rediss://`` URL turns on TLS, verified against ``ssl_ca_certs``
with an optional client certificate.
"""

from __future__ import annotations

from typing import Any

import redis

from shared.settings import RedisSettings


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
