"""A single-node KRaft Kafka broker run from jars that Maven resolves into a local cache."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from services.stack.process import DEPLOY_DIR, LOOPBACK, REPO_ROOT, ManagedServer, StackError, port_accepts
from services.stack.tools import require_java, require_maven

KAFKA_DEPLOY_DIR = DEPLOY_DIR / "kafka"
DEFAULT_LIB_ROOT = REPO_ROOT / ".streamlearn" / "kafka-lib"
#: the JVM options Kafka's own ``kafka-run-class.sh`` starts a broker with (``KAFKA_JVM_PERFORMANCE_OPTS``): G1
#: with a 20 ms pause goal. G1's default goal, 200 ms, let young collections stop the broker for 30 to 100 ms
#: on a busy 2-CPU machine, and every fetch with them (docs/benchmarks.md)
KAFKA_JVM_PERFORMANCE_OPTS = (
    "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15", "-Djava.awt.headless=true",
)


def kafka_version(pom: Path = KAFKA_DEPLOY_DIR / "pom.xml") -> str:
    """The broker version pinned in the pom (property ``kafka.version``)."""
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    element = ElementTree.parse(pom).getroot().find("m:properties/m:kafka.version", namespace)
    if element is None or not element.text:
        raise StackError(f"{pom} has no <kafka.version> property")
    return element.text.strip()


def resolve_kafka_jars(lib_root: Path = DEFAULT_LIB_ROOT, pom: Path = KAFKA_DEPLOY_DIR / "pom.xml") -> Path:
    """The directory of broker jars for the pinned version; resolved with Maven on first use, then reused."""
    version = kafka_version(pom)
    target = lib_root / version
    if (target / f"kafka_2.13-{version}.jar").is_file():
        return target
    mvn = require_maven()
    lib_root.mkdir(parents=True, exist_ok=True)
    staging = lib_root / f".{version}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    command = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={staging}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired as exc:
        raise StackError("Maven took over 15 minutes to resolve the Kafka jars; check access to Maven Central") from exc
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        output = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise StackError(
            f"Maven could not resolve Kafka {version} (it needs Maven Central or a filled ~/.m2); "
            f"retry `{' '.join(command)}`:\n{output}"
        )
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise
    return target


def new_cluster_id() -> str:
    """A random cluster id as Kafka writes them: 22 base64url characters, never starting with '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class KafkaTls:
    """A broker whose client listeners all use TLS (deploy/kafka/server-tls.properties.tmpl).

    ``KafkaServer.port`` becomes a SASL_SSL listener (SCRAM-SHA-512, users created at format time) and
    ``ssl_port`` an SSL listener that requires a client certificate signed by the CA in ``truststore``.
    """

    #: PEM: the broker's private key (PKCS#8, unencrypted) followed by its certificate chain
    keystore: Path
    #: PEM: the CA certificate(s) the broker trusts for client certificates (and that clients verify it with)
    truststore: Path
    ssl_port: int
    #: SCRAM-SHA-512 users, name -> password; the first one is used by the readiness probe
    scram_users: Mapping[str, str]

    def __post_init__(self) -> None:
        if not self.scram_users:
            raise StackError("kafka: a TLS broker needs at least one SCRAM user (its readiness probe logs in)")
        for name, password in self.scram_users.items():
            if not name.isalnum() or not password or any(c in password for c in ",[]=\"\n"):
                raise StackError(f"kafka: SCRAM user {name!r}: alphanumeric names and passwords without ,[]=\" only")

    def probe_options(self) -> dict[str, Any]:
        """kafka-python options that log in on the SASL_SSL listener as the first user."""
        name, password = next(iter(self.scram_users.items()))
        return {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": name,
                "sasl_plain_password": password, "ssl_cafile": str(self.truststore)}


class KafkaServer(ManagedServer):
    """Kafka 4.x in KRaft mode, one node that is broker and controller, on loopback.

    Storage is formatted on the first start only; later starts (``stop()`` then ``start()``) keep the data.
    With ``tls`` its client listeners use TLS only (:class:`KafkaTls`); without it, one PLAINTEXT listener.
    """

    name = "kafka"

    def __init__(
        self,
        state_dir: Path | str,
        *,
        port: int = 9092,
        controller_port: int = 9093,
        heap: str = "1G",
        lib_root: Path = DEFAULT_LIB_ROOT,
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
        die_with_parent: bool = False,
        tls: KafkaTls | None = None,
    ) -> None:
        super().__init__(
            state_dir, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s, die_with_parent=die_with_parent
        )
        self.tls = tls
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.lib_root = lib_root

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers string for clients."""
        return self.address

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def client_options(self) -> dict[str, Any]:
        """kafka-python security options that reach this broker (none for a plaintext one)."""
        return self.tls.probe_options() if self.tls is not None else {}

    def ports(self) -> dict[str, int]:
        ports = {"kafka": self.port, "kafka controller": self.controller_port}
        if self.tls is not None:
            ports["kafka ssl"] = self.tls.ssl_port
        return ports

    def jvm_options(self) -> list[str]:
        """The heap and the JVM's options; ``KAFKA_HEAP_OPTS`` and ``KAFKA_JVM_PERFORMANCE_OPTS`` in the environment
        replace them, as they do for Kafka's own scripts."""
        heap = os.environ.get("KAFKA_HEAP_OPTS", f"-Xmx{self.heap} -Xms{self.heap}").split()
        performance = os.environ.get("KAFKA_JVM_PERFORMANCE_OPTS")
        return [*heap, *(performance.split() if performance is not None else KAFKA_JVM_PERFORMANCE_OPTS)]

    def _command(self) -> list[str]:
        java = require_java()
        lib = resolve_kafka_jars(self.lib_root)
        properties = self.home / "server.properties"
        template = Template((KAFKA_DEPLOY_DIR / "server.properties.tmpl").read_text())
        text = template.substitute(port=self.port, controller_port=self.controller_port, log_dir=self.data_dir)
        if self.tls is not None:
            text += "\n" + Template((KAFKA_DEPLOY_DIR / "server-tls.properties.tmpl").read_text()).substitute(
                port=self.port, ssl_port=self.tls.ssl_port, controller_port=self.controller_port,
                keystore=self.tls.keystore, truststore=self.tls.truststore,
            )
        properties.write_text(text)
        self._format_once(java, lib, properties)
        return [
            java, *self.jvm_options(),
            f"-Dlog4j2.configurationFile={KAFKA_DEPLOY_DIR / 'log4j2.xml'}", f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp", f"{lib}/*", "kafka.Kafka", str(properties),
        ]

    def _format_once(self, java: str, lib: Path, properties: Path) -> None:
        if (self.data_dir / "meta.properties").is_file():
            return
        command = [java, "-cp", f"{lib}/*", "kafka.tools.StorageTool", "format", "--standalone",
                   "-t", new_cluster_id(), "-c", str(properties)]
        for name, password in (self.tls.scram_users.items() if self.tls is not None else ()):
            command += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise StackError(f"kafka: formatting {self.data_dir} failed; remove {self.home} and retry:\n{output}")

    def _probe(self) -> bool:
        if not port_accepts(self.port):
            return False
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="streamlearn-stack-probe",
                                     request_timeout_ms=5000, bootstrap_timeout_ms=5000, **self.client_options())
        except (KafkaError, OSError):
            return False
        try:
            admin.list_topics()
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()
        return True
