"""A single-node KRaft Kafka broker run from jars that Maven resolves into a local cache."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from string import Template

from services.stack.process import DEPLOY_DIR, LOOPBACK, REPO_ROOT, ManagedServer, StackError, port_accepts
from services.stack.tools import require_java, require_maven

KAFKA_DEPLOY_DIR = DEPLOY_DIR / "kafka"
DEFAULT_LIB_ROOT = REPO_ROOT / ".streamlearn" / "kafka-lib"


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


class KafkaServer(ManagedServer):
    """Kafka 4.x in KRaft mode, one node that is broker and controller, on loopback.

    Storage is formatted on the first start only; later starts (``stop()`` then ``start()``) keep the data.
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
    ) -> None:
        super().__init__(
            state_dir, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s, die_with_parent=die_with_parent
        )
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

    def ports(self) -> dict[str, int]:
        return {"kafka": self.port, "kafka controller": self.controller_port}

    def _command(self) -> list[str]:
        java = require_java()
        lib = resolve_kafka_jars(self.lib_root)
        properties = self.home / "server.properties"
        template = Template((KAFKA_DEPLOY_DIR / "server.properties.tmpl").read_text())
        properties.write_text(template.substitute(
            port=self.port, controller_port=self.controller_port, log_dir=self.data_dir,
        ))
        self._format_once(java, lib, properties)
        return [
            java, f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DEPLOY_DIR / 'log4j2.xml'}", f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp", f"{lib}/*", "kafka.Kafka", str(properties),
        ]

    def _format_once(self, java: str, lib: Path, properties: Path) -> None:
        if (self.data_dir / "meta.properties").is_file():
            return
        command = [java, "-cp", f"{lib}/*", "kafka.tools.StorageTool", "format", "--standalone",
                   "-t", new_cluster_id(), "-c", str(properties)]
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
                                     request_timeout_ms=5000, bootstrap_timeout_ms=5000)
        except (KafkaError, OSError):
            return False
        try:
            admin.list_topics()
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()
        return True
