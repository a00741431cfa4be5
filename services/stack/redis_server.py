"""A Redis server with append-only persistence, on loopback."""

from __future__ import annotations

from pathlib import Path

from services.stack.process import DEPLOY_DIR, LOOPBACK, ManagedServer, port_accepts
from services.stack.tools import require_executable

REDIS_CONFIG = DEPLOY_DIR / "redis" / "redis-local.conf"


class RedisServer(ManagedServer):
    """``redis-server`` with ``appendonly yes`` / ``appendfsync everysec``; data kept across ``stop()``/``start()``."""

    name = "redis"

    def __init__(
        self, state_dir: Path | str, *, port: int = 6379, start_timeout_s: float = 30.0, stop_timeout_s: float = 30.0,
        die_with_parent: bool = False,
    ) -> None:
        super().__init__(
            state_dir, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s, die_with_parent=die_with_parent
        )
        self.port = port

    @property
    def address(self) -> str:
        return self.url

    @property
    def url(self) -> str:
        """The client URL (database 0)."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def ports(self) -> dict[str, int]:
        return {"redis": self.port}

    def _command(self) -> list[str]:
        redis_server = require_executable("redis-server", "install it with `apt-get install -y redis-server`")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [redis_server, str(REDIS_CONFIG), "--port", str(self.port), "--bind", LOOPBACK,
                "--dir", str(self.data_dir)]

    def _probe(self) -> bool:
        if not port_accepts(self.port):
            return False
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()
