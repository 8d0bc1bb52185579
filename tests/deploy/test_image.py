"""The image and the single-host files: Containerfile, build context, compose.yaml, .env.example.

No container engine runs here: these tests read the files, and run the image's health check
command and its CMD with this machine's Python against a real server process.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from fnmatch import translate
from pathlib import Path

import attrs
import pytest
from deploy_support import ROOT, load_yaml

from nexus_actors.config import Config

DRAIN_TIMEOUT = {meta.env: default for _, meta, default in Config.settings()}[
    "NEXUS_DRAIN_TIMEOUT"]


# --- Containerfile ------------------------------------------------------------------------


@attrs.frozen
class Instruction:
    keyword: str
    argument: str


def instructions() -> list[Instruction]:
    """The Containerfile's instructions, continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n", " ", (ROOT / "Containerfile").read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, argument = line.partition(" ")
            found.append(Instruction(keyword.upper(), argument.strip()))
    return found


def only(keyword: str) -> list[str]:
    return [i.argument for i in instructions() if i.keyword == keyword]


def final_stage() -> list[Instruction]:
    steps = instructions()
    last_from = max(n for n, i in enumerate(steps) if i.keyword == "FROM")
    return steps[last_from:]


def test_the_image_is_multi_stage_on_a_slim_official_python() -> None:
    bases = only("FROM")
    assert len(bases) >= 2
    for base in bases:
        assert re.match(r"docker\.io/library/python:\$\{PYTHON_VERSION\}-slim-\w+", base), base
    assert "AS build" in bases[0]
    assert any(i.keyword == "COPY" and "--from=build" in i.argument for i in final_stage())


def test_the_package_is_installed_without_the_embedded_postgresql() -> None:
    runs = " ".join(only("RUN"))
    assert "pip install --no-cache-dir ." in runs
    assert "embedded" not in runs
    assert "pixeltable" not in runs


def test_the_server_runs_as_a_numeric_non_root_user() -> None:
    users = [i.argument for i in final_stage() if i.keyword == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert gid.isdigit()
    assert int(gid) > 0
    # Kubernetes' runAsUser is the same user.
    deployment = load_yaml((ROOT / "deploy/kubernetes/deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_cmd_is_exec_form_serve_and_port_5000_is_exposed() -> None:
    assert [json.loads(cmd) for cmd in only("CMD")] == [["nexus-actors", "serve"]]
    assert only("EXPOSE") == ["5000"]
    assert only("STOPSIGNAL") == ["SIGTERM"]
    assert not only("ENTRYPOINT")


def test_the_image_carries_oci_labels() -> None:
    labels = " ".join(only("LABEL"))
    for key in ("title", "description", "version", "revision", "created", "source",
                "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def healthcheck_command() -> list[str]:
    (check,) = only("HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    assert "--start-period" in options
    assert "--interval" in options
    parsed: list[str] = json.loads(command)
    return parsed


def test_healthcheck_is_python_on_health_not_curl() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "/health" in command[2]
    assert "curl" not in " ".join(only("HEALTHCHECK"))


# --- the health checks and CMD, run against a real server ----------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`nexus-actors serve` (the image's CMD) with rooms in memory, on a free port."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "NEXUS_HOST": "127.0.0.1",
           "DATABASE_URL": "memory", "NEXUS_LOG_FORMAT": "json"}
    env.pop("NEXUS_TLS_CERT", None)
    process = subprocess.Popen([sys.executable, "-m", "nexus_actors", "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        assert process.stderr is not None
        process.stderr.close()


def compose_healthcheck() -> list[str]:
    compose = load_yaml((ROOT / "compose.yaml").read_text())
    test: list[str] = compose["services"]["server"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return test[1:]


def ecs_healthcheck() -> list[str]:
    task = json.loads((ROOT / "deploy/aws/task-definition.json").read_text())
    command: list[str] = task["containerDefinitions"][0]["healthCheck"]["command"]
    assert command[0] == "CMD"
    return command[1:]


HEALTH_CHECKS = {"Containerfile": healthcheck_command, "compose.yaml": compose_healthcheck,
                 "task-definition.json": ecs_healthcheck}


def run_check(command: list[str], port: int) -> int:
    assert command[0] == "python"
    env = {**os.environ, "PORT": str(port)}
    env.pop("NEXUS_TLS_CERT", None)
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True,
                          timeout=30, check=False).returncode


@pytest.mark.realclock
def test_health_checks_pass_on_a_serving_server_and_fail_when_it_is_gone(
        server: tuple[subprocess.Popen[bytes], int]) -> None:
    process, port = server
    for where, command in HEALTH_CHECKS.items():
        assert run_check(command(), port) == 0, where
    # The CMD drains on SIGTERM and exits 0: what `podman stop` and Kubernetes rely on.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DRAIN_TIMEOUT + 10) == 0
    assert process.stderr is not None
    assert b"drained in" in process.stderr.read()
    for where, command in HEALTH_CHECKS.items():
        assert run_check(command(), port) == 1, where


# --- the build context ---------------------------------------------------------------------


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(.containerignore's rules as (excludes, pattern)), Docker's syntax: `*` stays in one
    path segment, `**` crosses them, `!` re-includes, the last matching rule wins, and a
    rule matching a directory applies to everything under it."""
    rules = []
    for line in (ROOT / ".containerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/?|\*)", pattern):
            if part in ("**", "**/"):
                regex += "(?:.*/)?" if part == "**/" else ".*"
            elif part == "*":
                regex += "[^/]*"
            else:
                regex += translate(part).removeprefix("(?s:").removesuffix(")\\Z")
        rules.append((excludes, re.compile(regex)))
    return rules


def in_context(path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for excludes, pattern in ignore_rules():
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            included = not excludes
    return included


def repository_files() -> list[str]:
    skip = {".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis",
            "node_modules", ".nexus"}
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            found.append(str((Path(folder) / name).relative_to(ROOT)))
    return found


def test_containerignore_and_dockerignore_are_the_same() -> None:
    assert (ROOT / ".containerignore").read_text() == (ROOT / ".dockerignore").read_text()


def test_the_build_context_holds_only_the_package_sources() -> None:
    probes = [".venv/bin/python", ".nexus/pg/PG_VERSION", ".git/config", ".env",
              "tests/simulation/traces/seed-1.json", "scripts/loadgen/node_modules/x/y.js",
              "src/nexus_actors/__pycache__/cli.cpython-312.pyc", ".hypothesis/examples/x"]
    for path in repository_files() + probes:
        expected = path in ("pyproject.toml", "README.md") or (
            path.startswith("src/") and "__pycache__" not in path
            and not path.endswith((".pyc", ".pyo")))
        assert in_context(path) == expected, path
    # Every COPY of the build stage finds its source in the context.
    for copy in only("COPY"):
        if "--from=" in copy:
            continue
        for source in shlex.split(copy)[:-1]:
            assert in_context(source.rstrip("/")), source
    assert in_context("src/nexus_actors/sql/001_init.sql")


# --- compose.yaml --------------------------------------------------------------------------


def test_compose_runs_postgresql_16_with_a_volume_and_a_health_check() -> None:
    db = load_yaml((ROOT / "compose.yaml").read_text())["services"]["db"]
    assert db["image"].endswith("postgres:16")
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in db["volumes"])
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert "ports" not in db


def test_compose_server_waits_for_the_database_and_is_replicas_ready() -> None:
    compose = load_yaml((ROOT / "compose.yaml").read_text())
    server = compose["services"]["server"]
    assert server["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert server["environment"]["DATABASE_URL"].startswith("postgresql://nexus:")
    assert "@db:5432/nexus" in server["environment"]["DATABASE_URL"]
    assert server["ports"] == ["${NEXUS_PUBLISH_PORT:-5000}:5000"]
    assert server["build"] == {"context": ".", "dockerfile": "Containerfile"}
    assert server["deploy"]["replicas"] == 1
    assert "container_name" not in server
    grace = int(server["stop_grace_period"].removesuffix("s"))
    assert grace > DRAIN_TIMEOUT
    assert server["env_file"] == ".env"


# --- .env.example --------------------------------------------------------------------------

_SETTING_LINE = re.compile(r"^#?([A-Z][A-Z0-9_]*)=(.*)$")


def env_example() -> list[tuple[str, str, str]]:
    """(name, value, the comment line above it) for each setting line of .env.example."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    found = []
    for n, line in enumerate(lines):
        match = _SETTING_LINE.match(line)
        if match:
            found.append((match[1], match[2], lines[n - 1] if n else ""))
    return found


def test_env_example_names_exactly_the_settings_in_declaration_order() -> None:
    names = [name for name, _, _ in env_example()]
    assert names == [meta.env for _, meta, _ in Config.settings()]


def test_env_example_gives_each_setting_a_comment_and_its_default() -> None:
    defaults = {meta.env: (meta, default) for _, meta, default in Config.settings()}
    for name, value, comment in env_example():
        assert comment.startswith("# "), name
        assert len(comment) > 10, name
        meta, default = defaults[name]
        parsed = meta.parse(value)
        if default is not None:
            assert parsed == default, f"{name}={value} is not the default {default!r}"


def test_env_example_holds_no_secret_and_sets_nothing_by_default() -> None:
    secret = {attrs.fields_dict(Config)[name].metadata["nexus_setting"].env
              for name, _, _ in Config.settings() if not attrs.fields_dict(Config)[name].repr}
    assert {"DATABASE_URL", "METRICS_AUTH_TOKEN"} <= secret
    for name, value, _ in env_example():
        if name in secret:
            assert "CHANGE-ME" in value, name
    lines = (ROOT / ".env.example").read_text().splitlines()
    assert all(line == "" or line.startswith("#") for line in lines), \
        "every setting is commented out: a copied .env changes nothing until edited"
