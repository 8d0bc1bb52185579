"""The scale-out deployment files: HAProxy's configuration, compose's scaled profile and the
Kubernetes multi-replica variant. The configuration is also what the scale-out tests run
(tests/integration/test_scaleout.py renders it for their ports)."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_support import ROOT, lint, load_yaml, load_yaml_all, tool

from nexus_actors.config import Config
from nexus_actors.testing.cluster import haproxy_path, render_haproxy

HAPROXY = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
SCALED = ROOT / "deploy" / "kubernetes-scaled"
DEFAULTS = Config()


def haproxy_lines() -> list[str]:
    return [line.strip() for line in HAPROXY.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 0.001}[unit]


# --- HAProxy --------------------------------------------------------------------------------


@pytest.mark.skipif(haproxy_path() is None, reason="needs haproxy (apt-get install haproxy)")
def test_haproxy_accepts_the_configuration(tmp_path: Path) -> None:
    rendered = tmp_path / "haproxy.cfg"
    rendered.write_text(render_haproxy(HAPROXY.read_text(), port=18080, servers=[15001, 15002],
                                       stats=tmp_path / "stats.sock"))
    for path in (HAPROXY, rendered):
        result = subprocess.run([str(haproxy_path()), "-c", "-f", str(path)],
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_balances_on_the_room_code_with_consistent_hashing() -> None:
    lines = haproxy_lines()
    assert "balance hash var(txn.room)" in lines
    assert "hash-type consistent" in lines
    # Every way a URL names a room sets the key; a create without a code sets none.
    for param in ("host", "join", "reconnect"):
        assert any(line.startswith(f"http-request set-var(txn.room) url_param({param}),upper")
                   for line in lines), param


def test_haproxy_checks_readiness_and_keeps_websockets_open_past_the_heartbeat() -> None:
    lines = haproxy_lines()
    assert "option httpchk GET /ready" in lines
    assert "http-check expect status 200" in lines
    assert "option forwardfor" in lines
    assert "option redispatch" in lines
    timeouts = {line.split()[1]: seconds(line.split()[2]) for line in lines
                if line.startswith("timeout ")}
    assert timeouts["tunnel"] > DEFAULTS.heartbeat_interval + DEFAULTS.heartbeat_timeout
    assert timeouts["client"] > DEFAULTS.heartbeat_interval
    assert timeouts["server"] > DEFAULTS.heartbeat_interval


def test_haproxys_servers_are_the_compose_scaled_profiles() -> None:
    servers = [line.split()[2] for line in haproxy_lines() if line.startswith("server ")]
    services = load_yaml((ROOT / "compose.yaml").read_text())["services"]
    assert servers == ["server:5000", "server-2:5000", "server-3:5000"]
    for address in servers:
        assert address.split(":")[0] in services


def test_rendering_for_tests_changes_only_the_address_servers_and_limits(
        tmp_path: Path) -> None:
    rendered = render_haproxy(HAPROXY.read_text(), port=18080, servers=[15001, 15002],
                              stats=tmp_path / "s.sock").splitlines()
    original = HAPROXY.read_text().splitlines()
    changed = set(rendered) - set(original)
    assert changed == {"    bind 127.0.0.1:18080", "    server nexus-1 127.0.0.1:15001",
                       "    server nexus-2 127.0.0.1:15002", "    maxconn 4000",
                       f"    stats socket {tmp_path / 's.sock'} mode 600 level admin"}
    with pytest.raises(ValueError, match="no bind"):
        render_haproxy("global\nbackend x\n    server a b:1\n", port=1, servers=[2],
                       stats=tmp_path / "s")


# --- compose, scaled profile ------------------------------------------------------------------


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = load_yaml((ROOT / "compose.yaml").read_text())["services"]
    return services


def test_the_scaled_profile_adds_two_servers_like_the_first_and_haproxy() -> None:
    services = compose_services()
    first = services["server"]
    assert "profiles" not in first  # the default: one server, as before
    for name in ("server-2", "server-3"):
        other = services[name]
        assert other["profiles"] == ["scaled"]
        assert other["ports"] == []  # reached through HAProxy (or relayed to)
        for key in ("image", "environment", "env_file", "depends_on", "healthcheck",
                    "stop_grace_period", "read_only", "cap_drop"):
            assert other[key] == first[key], (name, key)
    proxy = services["haproxy"]
    assert proxy["profiles"] == ["scaled"]
    assert proxy["image"].startswith("docker.io/library/haproxy:")
    assert "./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in \
        proxy["volumes"]
    assert proxy["ports"] == ["${NEXUS_SCALED_PORT:-8080}:8080"]


def test_the_servers_trust_exactly_haproxys_fixed_address() -> None:
    compose = load_yaml((ROOT / "compose.yaml").read_text())
    address = compose["services"]["haproxy"]["networks"]["default"]["ipv4_address"]
    [subnet] = [ipaddress.ip_network(c["subnet"])
                for c in compose["networks"]["default"]["ipam"]["config"]]
    assert ipaddress.ip_address(address) in subnet
    for name in ("server", "server-2", "server-3"):
        env = compose["services"][name]["environment"]
        assert env["NEXUS_TRUSTED_PROXIES"] == address


# --- Kubernetes, several replicas -------------------------------------------------------------


needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None,
                                   reason="kubectl is not installed")


def rendered_scaled() -> dict[str, Any]:
    output = subprocess.run(["kubectl", "kustomize", str(SCALED)], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    return {o["kind"]: o for o in load_yaml_all(output)}


@needs_kubectl
def test_the_scaled_variant_renders_to_valid_manifests(tmp_path: Path) -> None:
    output = subprocess.run(["kubectl", "kustomize", str(SCALED)], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    (tmp_path / "scaled.yaml").write_text(output)
    for version in ("1.28.0", "1.37.0"):
        lint([tool("kubernetes-validate", "kubernetes-validate"), "--strict", "--quiet",
              "--kubernetes-version", version, str(tmp_path / "scaled.yaml")],
             f"scaled variant, Kubernetes {version}")


@needs_kubectl
def test_the_scaled_variant_runs_three_replicas_that_can_reach_each_other() -> None:
    objects = rendered_scaled()
    assert set(objects) == {"Service", "Deployment", "PodDisruptionBudget", "Ingress"}
    deployment = objects["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1,
                                                                "maxUnavailable": 0}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = [e["name"] for e in container["env"]]
    assert env.index("POD_IP") < env.index("NEXUS_ADVERTISE_URL")  # defined before use
    values = {e["name"]: e.get("value") for e in container["env"]}
    assert values["NEXUS_ADVERTISE_URL"] == "ws://$(POD_IP):5000"
    assert Config.from_sources({}, {"NEXUS_TRUSTED_PROXIES": values["NEXUS_TRUSTED_PROXIES"],
                                    "NEXUS_LEASE_TTL": values["NEXUS_LEASE_TTL"]})
    assert "DATABASE_URL" in env  # the base's, kept
    assert objects["Service"]["spec"]["type"] == "ClusterIP"
    assert "externalTrafficPolicy" not in objects["Service"]["spec"]


@needs_kubectl
def test_the_scaled_ingress_hashes_on_the_room_code_and_keeps_websockets_open() -> None:
    ingress = rendered_scaled()["Ingress"]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == \
        "$arg_reconnect$arg_join$arg_host"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) > \
            DEFAULTS.heartbeat_interval
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "nexus-actors", "port": {"name": "http"}}
