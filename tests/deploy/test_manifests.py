"""What the orchestrators are told: probes, ports, stop timeouts, users and secrets in the
Kubernetes manifests, the ACI template and the ECS task definition."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_support import ROOT, load_yaml, load_yaml_all

from nexus_actors.config import Config

KUBERNETES = ROOT / "deploy" / "kubernetes"
DEFAULTS = {meta.env: default for _, meta, default in Config.settings()}


def drain_timeout(env: dict[str, str]) -> float:
    """The NEXUS_DRAIN_TIMEOUT a container gets: its environment, else the default."""
    return float(env.get("NEXUS_DRAIN_TIMEOUT", DEFAULTS["NEXUS_DRAIN_TIMEOUT"]))


# --- Kubernetes ------------------------------------------------------------------------------


def manifest(name: str) -> Any:
    return load_yaml((KUBERNETES / name).read_text())


def server_container(deployment: Any) -> Any:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def plain_env(container: Any) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_kustomization_lists_the_manifests_but_not_the_secret_example() -> None:
    kustomization = manifest("kustomization.yaml")
    assert kustomization["resources"] == ["deployment.yaml", "service.yaml", "pdb.yaml"]
    assert manifest("secret.example.yaml")["kind"] == "Secret"


def test_kubernetes_probes_check_health_and_ready_on_the_server_port() -> None:
    container = server_container(manifest("deployment.yaml"))
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": 5000, "protocol": "TCP"}
    assert plain_env(container)["PORT"] == "5000"
    for probe, path in [("livenessProbe", "/health"), ("startupProbe", "/health"),
                        ("readinessProbe", "/ready")]:
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    # Start-up may wait NEXUS_DB_STARTUP_TIMEOUT for the database before it listens.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > \
        DEFAULTS["NEXUS_DB_STARTUP_TIMEOUT"]


def test_kubernetes_grace_period_covers_the_pre_stop_pause_and_the_drain() -> None:
    deployment = manifest("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(deployment)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    drain = drain_timeout(plain_env(container))
    assert pod["terminationGracePeriodSeconds"] > drain
    assert pod["terminationGracePeriodSeconds"] >= pause + drain + 5


def test_kubernetes_runs_one_non_root_replica_started_before_the_old_one_stops() -> None:
    deployment = manifest("deployment.yaml")
    assert deployment["spec"]["replicas"] == 1
    # Rooms move between processes (leases): the new pod may overlap the old one.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["automountServiceAccountToken"] is False
    security = server_container(deployment)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    resources = server_container(deployment)["resources"]
    assert resources["requests"]["cpu"]
    assert resources["limits"]["memory"]


def test_kubernetes_database_url_comes_from_the_secret() -> None:
    container = server_container(manifest("deployment.yaml"))
    env = {e["name"]: e for e in container["env"]}
    assert env["DATABASE_URL"] == {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {
        "name": "nexus-actors", "key": "DATABASE_URL"}}}
    assert env["METRICS_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    example = manifest("secret.example.yaml")
    assert example["metadata"]["name"] == "nexus-actors"
    assert "CHANGE-ME" in example["stringData"]["DATABASE_URL"]


def test_kubernetes_service_and_budget_select_the_server_pods() -> None:
    labels = manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    service = manifest("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    budget = manifest("pdb.yaml")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_kustomization_renders_with_kubectl(tmp_path: Path) -> None:
    """The overlay kubernetes.sh writes, rendered by kustomize: the Secret's hashed name
    reaches the Deployment, the image and the namespace are set."""
    shutil.copytree(KUBERNETES, tmp_path / "base")
    (tmp_path / "secret.env").write_text("DATABASE_URL=postgresql://u:p@db/nexus\n")
    (tmp_path / "kustomization.yaml").write_text(
        "namespace: tabletop\nresources: [base]\n"
        "secretGenerator: [{name: nexus-actors, envs: [secret.env]}]\n"
        "images: [{name: nexus-actors, newName: 'registry.example/nexus-actors:2.0'}]\n")
    rendered = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True,
                              text=True, timeout=60, check=True).stdout
    objects = {o["kind"]: o for o in load_yaml_all(rendered)}
    assert set(objects) == {"Secret", "Service", "Deployment", "PodDisruptionBudget"}
    assert all(o["metadata"]["namespace"] == "tabletop" for o in objects.values())
    secret_name = objects["Secret"]["metadata"]["name"]
    assert secret_name.startswith("nexus-actors-")
    container = server_container(objects["Deployment"])
    assert container["image"] == "registry.example/nexus-actors:2.0"
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert refs == {secret_name}


# --- Azure Container Instances ---------------------------------------------------------------


def aci_container() -> Any:
    group = load_yaml((ROOT / "deploy/azure/aci.yaml").read_text())
    (container,) = group["properties"]["containers"]
    return group, container["properties"]


def test_aci_probes_check_health_and_ready_on_the_published_port() -> None:
    group, spec = aci_container()
    assert group["properties"]["ipAddress"]["ports"] == [{"protocol": "TCP", "port": 5000}]
    assert group["properties"]["ipAddress"]["type"] == "Public"
    assert spec["ports"] == [{"protocol": "TCP", "port": 5000}]
    assert spec["livenessProbe"]["httpGet"]["path"] == "/health"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert spec[probe]["httpGet"]["port"] == 5000
    # No start-up probe on ACI: liveness waits out start-up (database wait included).
    assert spec["livenessProbe"]["initialDelaySeconds"] >= DEFAULTS["NEXUS_DB_STARTUP_TIMEOUT"]


def test_aci_database_url_and_metrics_token_are_secure_values() -> None:
    _, spec = aci_container()
    env = {e["name"]: e for e in spec["environmentVariables"]}
    assert env["DATABASE_URL"] == {"name": "DATABASE_URL", "secureValue": "{{DATABASE_URL}}"}
    assert set(env["METRICS_AUTH_TOKEN"]) == {"name", "secureValue"}
    assert env["PORT"]["value"] == "5000"
    assert drain_timeout({k: e.get("value", "") for k, e in env.items()}) == 10


def test_aci_pulls_with_an_identity_not_a_password() -> None:
    group, _ = aci_container()
    (credentials,) = group["properties"]["imageRegistryCredentials"]
    assert set(credentials) == {"server", "identity"}
    assert group["identity"]["type"] == "UserAssigned"
    assert group["properties"]["restartPolicy"] == "Always"


# --- ECS task definition ---------------------------------------------------------------------


def test_ecs_task_gets_the_database_url_from_secrets_manager() -> None:
    task = json.loads((ROOT / "deploy/aws/task-definition.json").read_text())
    (container,) = task["containerDefinitions"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert "DATABASE_URL" not in env
    assert container["secrets"] == [{"name": "DATABASE_URL",
                                     "valueFrom": "{{DATABASE_URL_SECRET_ARN}}"}]
    assert container["portMappings"][0]["containerPort"] == 5000
    assert env["PORT"] == "5000"
    assert container["stopTimeout"] > drain_timeout(env)
    assert container["user"].split(":")[0] != "0"
    assert container["readonlyRootFilesystem"] is True
    assert container["linuxParameters"]["initProcessEnabled"] is True
    assert task["requiresCompatibilities"] == ["FARGATE"]
