"""A Kafka broker and a Redis that accept TLS only, with SCRAM-SHA-512 and ACL users, from a throw-away CA.

Started by the ``secure_stack`` fixture of the tests that need it (once per module), never by the plaintext
session fixtures, so the rest of the suite does not pay for it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.stack import KafkaServer, RedisServer, free_ports
from services.stack.certificates import LocalPki, make_local_pki
from services.stack.kafka_server import KafkaTls
from services.stack.process import start_all
from services.stack.redis_server import RedisSecurity

KAFKA_USER = "alice"
REDIS_USER = "worker"
#: the worker's Redis user: the keys of the tests' namespaces (``ns.<test>.<id>``), the command categories the
#: state stores use (reads, writes, MULTI/EXEC, Lua scripts, PING), nothing dangerous (FLUSHALL, CONFIG, ...)
REDIS_RULES = "~ns.* resetchannels -@all +@read +@write +@transaction +@scripting +@connection -@dangerous"
#: the broker and Redis are ready in seconds; a busy 2-core machine gets a margin, not minutes
START_TIMEOUT_S = 90.0


@dataclass
class SecureStack:
    """The secure servers, the CA that signed them, an unrelated CA, and the credentials that work."""

    kafka: KafkaServer
    redis: RedisServer
    pki: LocalPki
    #: a second CA that signed nothing the servers present (a client trusting it alone must be refused)
    other_pki: LocalPki
    kafka_password: str
    redis_password: str

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """The SASL_SSL (SCRAM-SHA-512) listener."""
        return self.kafka.bootstrap

    @property
    def ssl_bootstrap(self) -> str:
        """The SSL listener that requires a client certificate."""
        assert self.kafka.tls is not None
        return f"127.0.0.1:{self.kafka.tls.ssl_port}"

    def kafka_settings(self, listener: str = "SASL_SSL") -> dict[str, Any]:
        """``kafka`` settings that reach ``listener`` (SASL_SSL with the user, or SSL with the client certificate)."""
        if listener == "SSL":
            return {"bootstrap_servers": self.ssl_bootstrap, "security_protocol": "SSL",
                    "ssl_cafile": str(self.pki.ca_cert), "ssl_certfile": str(self.pki.client_cert),
                    "ssl_keyfile": str(self.pki.client_key)}
        return {"bootstrap_servers": self.sasl_ssl_bootstrap, "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": KAFKA_USER,
                "sasl_password": self.kafka_password, "ssl_cafile": str(self.pki.ca_cert)}

    def kafka_client_options(self) -> dict[str, Any]:
        """kafka-python options for the test's own clients (reading predictions, producing events)."""
        return self.kafka.client_options()

    def redis_settings(self, namespace: str) -> dict[str, Any]:
        """``redis`` settings that log in over TLS as the ACL user."""
        return {"url": self.redis.url, "namespace": namespace, "username": REDIS_USER,
                "password": self.redis_password, "ssl_ca_certs": str(self.pki.ca_cert)}

    def redis_client_options(self) -> dict[str, Any]:
        assert self.redis.security is not None
        return self.redis.security.client_options()

    def stop(self) -> None:
        self.kafka.stop()
        self.redis.stop()


def start_secure_stack(state_dir: Path) -> SecureStack:
    """Generate the certificates and passwords, start both servers, wait until they accept logins."""
    pki = make_local_pki(state_dir / "pki")
    other_pki = make_local_pki(state_dir / "other-pki", ca_name="unrelated CA")
    kafka_password, redis_password = secrets.token_hex(16), secrets.token_hex(16)
    kafka_port, controller_port, ssl_port, redis_port = free_ports(4)
    kafka = KafkaServer(
        state_dir, port=kafka_port, controller_port=controller_port, heap="384M", die_with_parent=True,
        start_timeout_s=START_TIMEOUT_S,
        tls=KafkaTls(keystore=pki.server_keystore, truststore=pki.ca_cert, ssl_port=ssl_port,
                     scram_users={KAFKA_USER: kafka_password}),
    )
    redis = RedisServer(
        state_dir, port=redis_port, die_with_parent=True, start_timeout_s=START_TIMEOUT_S,
        security=RedisSecurity(cert_file=pki.server_cert, key_file=pki.server_key, ca_file=pki.ca_cert,
                               users={REDIS_USER: redis_password}, rules=REDIS_RULES),
    )
    start_all([kafka, redis])
    return SecureStack(kafka, redis, pki, other_pki, kafka_password, redis_password)
