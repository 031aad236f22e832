"""The deployment files, checked without a container engine or a cluster:

* ``docker-compose.yml`` against the Compose specification's JSON schema (the copy that
  check-jsonschema ships), with the files it mounts present;
* ``deploy/kubernetes`` against the Kubernetes OpenAPI schemas (kubernetes-validate);
* in both, every command names a real sub-command of our services, and every variable
  given to our containers is a setting one of them reads, with a value it accepts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from services.common.auth import AuthSettings
from services.gateway.settings import GatewaySettings
from services.imaging.settings import ImagingSettings
from services.outcomes.settings import OutcomesSettings

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
SETTINGS: dict[str, type[BaseSettings]] = {
    "IMAGING_": ImagingSettings,
    "OUTCOMES_": OutcomesSettings,
    "GATEWAY_": GatewaySettings,
    "AUTH_": AuthSettings,
}
INTERPOLATION = re.compile(r"\$\{([A-Z_]+)(?::?[-?][^}]*)?\}")
DUMMY = "x" * 40


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _check_variables(env: dict[str, str]) -> None:
    """Each of our variables is a field of its settings class, and the values parse."""
    by_class: dict[type[BaseSettings], dict[str, str]] = {}
    for name, value in env.items():
        prefix = next((p for p in SETTINGS if name.startswith(p)), None)
        assert prefix is not None, f"{name} is read by none of the services"
        cls = SETTINGS[prefix]
        field = name[len(prefix) :].lower()
        assert field in cls.model_fields, f"{name}: {cls.__name__} has no field {field!r}"
        by_class.setdefault(cls, {})[name] = INTERPOLATION.sub(DUMMY, str(value))
    for cls, values in by_class.items():
        # Read from the environment, as the service reads them (JSON lists included).
        saved = {name: os.environ.get(name) for name in values}
        os.environ.update(values)
        try:
            cls()  # raises on a value the service would refuse
        finally:
            for name, old in saved.items():
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old


def _check_command(command: list[str]) -> None:
    assert command[:2] == ["python", "-m"] and command[2].startswith("services."), command
    done = subprocess.run(
        [sys.executable, "-m", *command[2:], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, (command, done.stderr[-2000:])


def test_compose_file_follows_the_compose_specification() -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_compose_services_are_wired() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"orthanc", "postgres", "redis", "imaging", "imaging-worker", "outcomes", "gateway"} <= (
        set(services)
    )
    assert (ROOT / "Dockerfile").exists()
    ours = [name for name, s in services.items() if "build" in s]
    assert set(ours) == {"imaging", "imaging-worker", "outcomes", "gateway"}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts a missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        for dependency in service.get("depends_on", {}):
            assert dependency in services
            assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
        if name in ours:
            _check_command(service["command"])
            _check_variables(service["environment"])
    # The Orthanc the compose file runs is configured by the files the tests use.
    orthanc = json.loads((ROOT / "deploy/orthanc/orthanc.json").read_text())
    assert orthanc["DicomModalities"]["spineimg"] == ["SPINEIMG", "imaging", 11112]
    assert orthanc["LuaScripts"] == ["/etc/orthanc/autoroute.lua"]


def _manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("version", ["1.29", "1.32"])
def test_kubernetes_manifests_validate(version: str) -> None:
    for doc in _manifests():
        kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_manifests_are_wired() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (KUBE / resource).exists(), resource
    docs = _manifests()
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    config = by_kind["ConfigMap"]["spine-config"]["data"]
    secret = by_kind["Secret"]["spine-secrets"]["stringData"]
    deployments = by_kind["Deployment"]
    assert set(deployments) == {"imaging", "imaging-worker", "outcomes", "gateway"}
    for deployment in deployments.values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        _check_command(container["command"])
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        refs = {next(iter(ref.values()))["name"] for ref in container.get("envFrom", [])}
        assert refs == {"spine-config", "spine-secrets"}
        prefix = container["command"][2].split(".")[1].upper() + "_"
        shared = {k: v for k, v in (config | secret).items() if k.startswith((prefix, "AUTH_"))}
        _check_variables(shared | env)
    hpa = by_kind["HorizontalPodAutoscaler"]["imaging-worker"]
    assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for service in by_kind["Service"].values():
        selector = service["spec"]["selector"]["app.kubernetes.io/name"]
        assert selector in deployments
