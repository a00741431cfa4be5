"""A Redis server with append-only persistence, on loopback."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from services.stack.process import DEPLOY_DIR, LOOPBACK, ManagedServer, StackError, port_accepts
from services.stack.tools import require_executable

REDIS_CONFIG = DEPLOY_DIR / "redis" / "redis-local.conf"
REDIS_SECURE_TEMPLATE = DEPLOY_DIR / "redis" / "redis-secure.conf.tmpl"


@dataclass(frozen=True)
class RedisSecurity:
    """TLS only (``rediss://``) and ACL users instead of anonymous access (deploy/redis/redis-secure.conf.tmpl)."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    #: ACL users, name -> password; the first one is used by the probe
    users: Mapping[str, str]
    #: the ACL rules of every user after ``on >password`` (default: every key, channel and command)
    rules: str = "~* &* +@all"

    def __post_init__(self) -> None:
        if not self.users:
            raise StackError("redis: a secure Redis needs at least one ACL user")
        for name, password in self.users.items():
            if not name.isalnum() or not password or any(c.isspace() or c in "<>\"'" for c in password):
                raise StackError(f"redis: ACL user {name!r}: alphanumeric names, passwords without spaces or quotes")

    def client_options(self) -> dict[str, Any]:
        """redis-py options that reach this server as the first user."""
        name, password = next(iter(self.users.items()))
        return {"username": name, "password": password, "ssl_ca_certs": str(self.ca_file)}


class RedisServer(ManagedServer):
    """``redis-server`` with ``appendonly yes`` / ``appendfsync everysec``; data kept across ``stop()``/``start()``."""

    name = "redis"

    def __init__(
        self, state_dir: Path | str, *, port: int = 6379, start_timeout_s: float = 30.0, stop_timeout_s: float = 30.0,
        die_with_parent: bool = False, security: RedisSecurity | None = None,
    ) -> None:
        super().__init__(
            state_dir, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s, die_with_parent=die_with_parent
        )
        self.port = port
        self.security = security

    @property
    def address(self) -> str:
        return self.url

    @property
    def url(self) -> str:
        """The client URL (database 0); ``rediss://`` for a TLS server."""
        scheme = "redis" if self.security is None else "rediss"
        return f"{scheme}://{LOOPBACK}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def ports(self) -> dict[str, int]:
        return {"redis": self.port}

    def _command(self) -> list[str]:
        redis_server = require_executable("redis-server", "install it with `apt-get install -y redis-server`")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.security is not None:
            config = self.home / "redis-secure.conf"
            sec = self.security
            config.touch(mode=0o600)  # it holds the users' passwords
            config.write_text(Template(REDIS_SECURE_TEMPLATE.read_text()).substitute(
                base_config=REDIS_CONFIG, port=self.port, cert_file=sec.cert_file, key_file=sec.key_file,
                ca_file=sec.ca_file,
                users="\n".join(f"user {name} on >{password} {sec.rules}" for name, password in sec.users.items()),
            ))
            return [redis_server, str(config), "--bind", LOOPBACK, "--dir", str(self.data_dir)]
        return [redis_server, str(REDIS_CONFIG), "--port", str(self.port), "--bind", LOOPBACK,
                "--dir", str(self.data_dir)]

    def _probe(self) -> bool:
        if not port_accepts(self.port):
            return False
        import redis

        options = self.security.client_options() if self.security is not None else {}
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2, **options)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()
