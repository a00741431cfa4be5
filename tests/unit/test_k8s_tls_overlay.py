"""deploy/k8s-tls: the overlay's variables are real settings, its secrets are mounted where the settings point."""

from __future__ import annotations

import secrets
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from shared.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "k8s-tls"
BASE = ROOT / "deploy" / "k8s"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    kustomization = _load(OVERLAY / "kustomization.yaml")
    assert (OVERLAY / kustomization["resources"][0]).resolve() == BASE
    (patch,) = kustomization["patches"]
    spec: dict[str, Any] = _load(OVERLAY / patch["path"])["spec"]["template"]["spec"]
    return spec


def test_the_overlay_patches_the_base_deployment(pod: dict[str, Any]) -> None:
    patch = _load(OVERLAY / "deployment-tls.yaml")
    base = _load(BASE / "deployment.yaml")
    assert patch["metadata"]["name"] == base["metadata"]["name"]
    (container,) = pod["containers"]
    (base_container,) = base["spec"]["template"]["spec"]["containers"]
    assert container["name"] == base_container["name"]
    assert pod["securityContext"]["fsGroup"] == base["spec"]["template"]["spec"]["securityContext"]["runAsUser"]


def test_the_variables_make_valid_tls_and_scram_settings(
    pod: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (container,) = pod["containers"]
    for variable in container["env"]:
        assert variable["name"].startswith("STREAMLEARN_")
        value = variable.get("value") or f"from-secret-{secrets.token_hex(4)}"
        monkeypatch.setenv(variable["name"], value)
    # the base secret's variables, as docs/deploy.md says to set them for TLS
    monkeypatch.setenv("STREAMLEARN_REDIS__URL", "rediss://redis:6380/0")
    monkeypatch.setenv("STREAMLEARN_HMAC_KEY", secrets.token_hex(32))
    config = tmp_path / "worker.yaml"
    config.write_text(_load(BASE / "configmap.yaml")["data"]["worker.yaml"], encoding="utf-8")
    settings = load_settings(config)
    assert settings.kafka.security_protocol == "SASL_SSL" and settings.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.kafka.sasl_password is not None and settings.redis.password is not None
    mounts = {PurePosixPath(m["mountPath"]): m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in (settings.kafka.ssl_cafile, settings.redis.ssl_ca_certs):
        assert path is not None
        volume = volumes[mounts[PurePosixPath(path).parent]]
        assert volume["secret"]["secretName"].startswith("streamlearn-"), "certificates come from a secret"
        assert volume["secret"]["defaultMode"] == 0o440


def test_passwords_come_from_secrets(pod: dict[str, Any]) -> None:
    (container,) = pod["containers"]
    by_name = {variable["name"]: variable for variable in container["env"]}
    for name in ("STREAMLEARN_KAFKA__SASL_PASSWORD", "STREAMLEARN_REDIS__PASSWORD"):
        assert "value" not in by_name[name] and "secretKeyRef" in by_name[name]["valueFrom"]
