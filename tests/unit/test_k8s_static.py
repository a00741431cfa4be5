"""deploy/k8s-static: the base workers as a StatefulSet whose pods are static group members under their own names,
checked without a cluster (the same pod as the base Deployment, plus the membership; valid settings)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import KafkaSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "deploy" / "k8s-static"
BASE = ROOT / "deploy" / "k8s"
ADDED = {"STREAMLEARN_KAFKA__GROUP_INSTANCE_ID", "STREAMLEARN_KAFKA__SESSION_TIMEOUT_MS"}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def statefulset() -> dict[str, Any]:
    loaded: dict[str, Any] = _load(STATIC / "statefulset.yaml")
    return loaded


def test_the_overlay_replaces_the_base_deployment_by_the_statefulset_and_its_service() -> None:
    kustomization = _load(STATIC / "kustomization.yaml")
    assert (STATIC / kustomization["resources"][0]).resolve() == BASE
    assert set(kustomization["resources"][1:]) == {path.name for path in STATIC.glob("*.yaml")} - {
        "kustomization.yaml"}
    (patch,) = kustomization["patches"]
    deleted = yaml.safe_load(patch["patch"])
    base = _load(BASE / "deployment.yaml")
    assert deleted["$patch"] == "delete"
    assert (deleted["kind"], deleted["metadata"]["name"]) == (base["kind"], base["metadata"]["name"])


def test_the_pod_is_the_base_deployments_plus_static_membership(statefulset: dict[str, Any]) -> None:
    base = _load(BASE / "deployment.yaml")
    pod, base_pod = statefulset["spec"]["template"], base["spec"]["template"]
    without_added = copy.deepcopy(pod)
    (container,) = without_added["spec"]["containers"]
    container["env"] = [variable for variable in container["env"] if variable["name"] not in ADDED]
    assert without_added == base_pod, "deploy/k8s-static/statefulset.yaml drifted from deploy/k8s/deployment.yaml"
    assert statefulset["spec"]["selector"] == base["spec"]["selector"]
    assert statefulset["spec"]["replicas"] == base["spec"]["replicas"]
    env = {variable["name"]: variable for variable in pod["spec"]["containers"][0]["env"]}
    pod_name = {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["STREAMLEARN_KAFKA__GROUP_INSTANCE_ID"]["valueFrom"] == pod_name
    assert env["STREAMLEARN_KAFKA__TRANSACTIONAL_ID"]["valueFrom"] == pod_name


def test_the_governing_service_is_headless_and_selects_the_pods(statefulset: dict[str, Any]) -> None:
    service = _load(STATIC / "service.yaml")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}


def test_the_membership_settings_are_valid_for_a_pod(
    statefulset: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = {variable["name"]: variable for variable in container["env"]}
    for name in list(os.environ):
        if name.startswith("STREAMLEARN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STREAMLEARN_KAFKA__GROUP_INSTANCE_ID", f"{statefulset['metadata']['name']}-0")
    monkeypatch.setenv("STREAMLEARN_KAFKA__SESSION_TIMEOUT_MS", env["STREAMLEARN_KAFKA__SESSION_TIMEOUT_MS"]["value"])
    config = tmp_path / "worker.yaml"
    config.write_text(_load(BASE / "configmap.yaml")["data"]["worker.yaml"], encoding="utf-8")
    settings = load_settings(config)
    assert settings.kafka.group_instance_id == "streamlearn-worker-0"
    # longer than the base's (a restarted pod must rejoin before the session ends), and within the broker's default
    # bounds (group.min.session.timeout.ms 6 s, group.max.session.timeout.ms 30 min)
    assert KafkaSettings().session_timeout_ms < settings.kafka.session_timeout_ms <= 1_800_000
