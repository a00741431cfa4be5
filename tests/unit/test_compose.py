"""docker-compose.yml and the Kubernetes manifests, checked as far as possible without a Docker engine or cluster."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
K8S = ROOT / "deploy" / "k8s"
WORKER_COMMAND_PREFIX = ["streamlearn", "worker", "--config"]


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = _load_yaml(COMPOSE)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency -> condition, for both the list and the mapping form."""
    depends = service.get("depends_on", {})
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends.items()}


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of every bind mount; named volumes are left out."""
    mounts: list[tuple[str, str]] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _worker_settings(config_path: Path, environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a worker would read from this file with exactly this STREAMLEARN_ environment."""
    for name in list(os.environ):
        if name.startswith("STREAMLEARN_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        if name.startswith("STREAMLEARN_") and not value.startswith("${"):
            monkeypatch.setenv(name, value)
    return load_settings(config_path)


def _published_host_ports(service: dict[str, Any]) -> list[str]:
    ports: list[str] = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append(str(port["published"]))
        else:
            parts = str(port).split(":")
            ports.append(parts[-2] if len(parts) >= 2 else parts[-1])
    return ports


def _scraped_targets(config: dict[str, Any]) -> set[tuple[str, int]]:
    """(host, port) pairs Prometheus scrapes: static targets and DNS names with their port."""
    targets: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            targets |= {(name, int(dns["port"])) for name in dns["names"]}
    return targets


# --- docker-compose --------------------------------------------------------------------------------------------

def test_the_expected_services_exist_and_each_has_an_image_or_build(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "redis", "prometheus", "grafana", "worker", "replayer"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert services["redis"]["image"].startswith("redis:7")
    assert (ROOT / services["worker"]["build"]["context"] / services["worker"]["build"]["dockerfile"]).is_file()


def test_dependencies_exist_and_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, condition in _depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck for {name}"
    assert _depends_on(services["worker"])["redis"] == "service_healthy"
    for long_running in ("kafka", "redis", "prometheus", "grafana", "worker"):
        assert services[long_running]["healthcheck"]["test"], long_running


def test_dependencies_have_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, f"dependency cycle through {name}"
        if name in done:
            return
        visiting.add(name)
        for dependency in _depends_on(services[name]):
            visit(dependency)
        visiting.discard(name)
        done.add(name)

    for name in services:
        visit(name)


def test_mounted_host_paths_exist_in_the_repository(services: dict[str, dict[str, Any]]) -> None:
    mounts = [(name, source) for name, service in services.items() for source, _ in _bind_mounts(service)]
    assert mounts
    for name, source in mounts:
        assert not source.startswith("/"), f"{name} mounts an absolute host path {source}"
        assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"
    assert "--appendonly" in _command(services["redis"])


def test_published_host_ports_are_unique(services: dict[str, dict[str, Any]]) -> None:
    ports = [port for service in services.values() for port in _published_host_ports(service)]
    assert len(ports) == len(set(ports)), ports
    assert "3000" in _published_host_ports(services["grafana"])


def test_the_worker_reads_the_mounted_compose_config(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = services["worker"]
    command = _command(worker)
    assert command[:3] == WORKER_COMMAND_PREFIX
    mounts = dict((target, source) for source, target in _bind_mounts(worker))
    assert mounts[command[3]] == "./deploy/config/worker.compose.yaml"
    environment = _environment(worker)
    assert environment["STREAMLEARN_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert environment["STREAMLEARN_REDIS__URL"] == "redis://redis:6379/0"
    settings = _worker_settings(ROOT / mounts[command[3]], environment, monkeypatch)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.redis.url.get_secret_value() == "redis://redis:6379/0"


def test_prometheus_scrapes_the_worker_metrics_port(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = services["worker"]
    command = _command(worker)
    mounts = dict((target, source) for source, target in _bind_mounts(worker))
    settings = _worker_settings(ROOT / mounts[command[3]], _environment(worker), monkeypatch)
    assert settings.metrics.enabled
    assert settings.metrics.host == "0.0.0.0", "a worker bound to loopback cannot be scraped from another container"
    assert ("worker", settings.metrics.port) in _scraped_targets(_load_yaml(PROMETHEUS_CONFIG))
    assert str(settings.metrics.port) in [str(port) for port in worker.get("expose", [])]
    prometheus_mounts = dict((target, source) for source, target in _bind_mounts(services["prometheus"]))
    assert prometheus_mounts["/etc/prometheus"] == "./deploy/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in _command(services["prometheus"])


def test_kafka_init_creates_every_topic_the_worker_uses(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = services["worker"]
    command = _command(worker)
    mounts = dict((target, source) for source, target in _bind_mounts(worker))
    topics = _worker_settings(ROOT / mounts[command[3]], _environment(worker), monkeypatch).kafka.topics
    script = " ".join(_command(services["kafka-init"]))
    created = script.split(" in ", 1)[1].split(";", 1)[0].split()
    assert sorted(created) == sorted(topics.model_dump().values())
    for name in ("worker", "replayer"):
        assert _depends_on(services[name])["kafka-init"] == "service_completed_successfully"


def test_the_replayer_streams_the_drifting_source_to_the_compose_kafka(services: dict[str, dict[str, Any]]) -> None:
    from shared.datasets import SOURCES

    replayer = services["replayer"]
    script = _command(replayer)[-1]  # compose turns "$$" into "$" before the shell sees it
    replay = shlex.split(script.replace("$$", "$").replace("exec ", "", 1))
    assert replay[:3] == ["streamlearn", "replay", "agrawal-drift"]
    assert replay[2] in SOURCES
    assert replay[replay.index("--rate") + 1] == "200"
    assert replay[replay.index("--bootstrap") + 1] == "$STREAMLEARN_KAFKA__BOOTSTRAP_SERVERS"
    assert _environment(replayer)["STREAMLEARN_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_the_kafka_listener_the_workers_use_is_advertised(services: dict[str, dict[str, Any]]) -> None:
    environment = _environment(services["kafka"])
    assert environment["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://kafka:9092" in environment["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert environment["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


# --- Kubernetes ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """kind -> the one manifest of that kind, read through kustomization.yaml."""
    kustomization = _load_yaml(K8S / "kustomization.yaml")
    found: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S / resource).read_text(encoding="utf-8")):
            assert document["kind"] not in found
            found[document["kind"]] = document
    return found


def test_every_manifest_file_is_listed_in_the_kustomization() -> None:
    listed = set(_load_yaml(K8S / "kustomization.yaml")["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_the_deployment_runs_two_probed_scraped_workers(manifests: dict[str, dict[str, Any]]) -> None:
    deployment = manifests["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    port = container["ports"][0]["containerPort"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_deployment_mounts_the_configmap_it_reads(
    manifests: dict[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == WORKER_COMMAND_PREFIX
    config_path = Path(command[3])
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    configmap = manifests["ConfigMap"]
    assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    config_file = tmp_path / config_path.name
    config_file.write_text(configmap["data"][config_path.name], encoding="utf-8")
    settings = _worker_settings(config_file, {}, monkeypatch)
    assert settings.metrics.host == "0.0.0.0"
    assert settings.metrics.port == container["ports"][0]["containerPort"]
    assert pod["terminationGracePeriodSeconds"] > settings.worker.drain_timeout_s


def test_secrets_come_from_the_secret_and_not_from_the_configmap(manifests: dict[str, dict[str, Any]]) -> None:
    (container,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    secret = manifests["Secret"]
    from_secret = {
        variable["name"]: variable["valueFrom"]["secretKeyRef"]
        for variable in container["env"] if "secretKeyRef" in variable.get("valueFrom", {})
    }
    assert set(from_secret) == {"STREAMLEARN_HMAC_KEY", "STREAMLEARN_REDIS__URL"}
    for reference in from_secret.values():
        assert reference["name"] == secret["metadata"]["name"]
        assert reference["key"] in secret["stringData"]
    config = yaml.safe_load(manifests["ConfigMap"]["data"]["worker.yaml"])
    assert "hmac_key" not in config
    assert "url" not in config.get("redis", {})
    run_as = manifests["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert run_as["runAsNonRoot"] is True
    assert f"--uid {run_as['runAsUser']}" in (ROOT / "Dockerfile").read_text(encoding="utf-8")
