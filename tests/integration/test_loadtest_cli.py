"""The client commands as a user runs them, against a real server process on loopback.

``nexus-actors loadtest`` cuts connections under its sessions and still
reports nothing lost, nothing applied twice and every reconnection made;
``nexus-actors client`` plays a room from lines on its standard input.

The server runs with the per-address limits lifted (every simulated player
connects from 127.0.0.1). No subprocess outlives its test: each is killed in a
``finally`` if still running.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from rich.console import Console

from nexus_actors.loadtest import Plan
from nexus_actors.loadtest.report import GeneratorFailed
from nexus_actors.loadtest.runner import Display
from nexus_actors.loadtest.workers import coordinate
from nexus_actors.testing.processes import free_port, health_status, server_environment

pytestmark = pytest.mark.realclock

START_TIMEOUT = 20.0
"Seconds the server process may take to answer /health (imports are slow on a busy machine)."
LOADTEST_TIMEOUT = 60.0
"Seconds the small load test may take in all: start-up, set-up, 4 s of load, settling."
CLIENT_TIMEOUT = 30.0
"Seconds the terminal client scenario may take."
UNLIMITED = {"NEXUS_ADDRESS_CONNECT_RATE": "100000", "NEXUS_ADDRESS_CONNECT_BURST": "100000",
             "NEXUS_RATE_LIMIT": "1000", "NEXUS_RATE_BURST": "1000"}
"Settings that lift the per-address and per-connection limits, as docs/loadtest.md says."


@asynccontextmanager
async def served(log: Path) -> AsyncIterator[str]:
    """``nexus-actors serve`` (memory store, limits lifted) until /health answers; its URL."""
    port = free_port()
    env = server_environment(PORT=str(port), NEXUS_HOST="127.0.0.1", LOG_LEVEL="warning",
                             DATABASE_URL="memory", **UNLIMITED)
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "nexus_actors", "serve"], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            with trio.fail_after(START_TIMEOUT):
                # Polling is the only way to see an external process start listening.
                while await health_status(port) != 200:
                    if process.poll() is not None:
                        pytest.fail(f"server exited: {await trio.Path(log).read_text()}")
                    await trio.sleep(0.05)
            yield f"ws://127.0.0.1:{port}"
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nexus_actors", *args]


async def run_loadtest(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """``nexus-actors loadtest ARGS`` against a fresh server; its JSON report and its table,
    once it has exited 0 with a passing report."""
    report_path = tmp_path / "report.json"
    with trio.fail_after(START_TIMEOUT + LOADTEST_TIMEOUT):
        async with served(tmp_path / "server.log") as url:
            result = await trio.run_process(
                command("loadtest", "--url", url, *args, "--json", str(report_path)),
                stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
                check=False)
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    report: dict[str, Any] = orjson.loads(report_path.read_bytes())
    assert report["passed"] is True, output
    return report, result.stdout.decode()


async def test_loadtest_with_churn_loses_nothing_and_every_reconnection_succeeds(
        tmp_path: Path) -> None:
    report, table = await run_loadtest(tmp_path, "--rooms", "2", "--players", "3",
                                       "--duration", "4", "--churn", "0.5",
                                       "--churn-interval", "1.5", "--seed", "1")
    assert "lost" in table
    assert report["plan"]["seed"] == 1
    assert report["connections"]["opened"] == 6
    assert report["connections"]["failed"] == 0
    events, reconnections = report["events"], report["reconnections"]
    assert events["sent"] > 0
    assert (events["lost"], events["duplicates"]) == (0, 0)
    assert events["acked"] + events["rejected"] + events["unreported"] == events["sent"]
    assert events["ack_latency_ms"]["p50"] is not None
    assert events["ack_latency_ms"]["p99"] is not None
    assert reconnections["cuts"] > 0
    assert reconnections["attempted"] > 0
    assert reconnections["succeeded"] == reconnections["attempted"]
    assert reconnections["time_ms"]["p50"] is not None
    cursors = report["cursors"]
    assert cursors["received"] > 0
    assert 0 < cursors["delivered_ratio"] <= 1
    assert cursors["latency_ms"]["p99"] is not None


async def test_loadtest_over_two_generator_processes_reports_them_as_one_run(
        tmp_path: Path) -> None:
    report, _ = await run_loadtest(tmp_path, "--rooms", "3", "--players", "3",
                                   "--duration", "3", "--churn", "0.5", "--churn-interval",
                                   "1", "--processes", "2", "--seed", "4")
    assert report["plan"]["processes"] == report["generator"]["processes"] == 2
    assert report["connections"]["opened"] == 9
    events, reconnections = report["events"], report["reconnections"]
    assert events["sent"] > 0
    assert (events["lost"], events["duplicates"]) == (0, 0)
    assert events["acked"] + events["rejected"] + events["unreported"] == events["sent"]
    # Both processes cut connections, and every cut session came back.
    assert reconnections["cuts"] >= 4
    assert reconnections["succeeded"] == reconnections["attempted"] > 0
    # Rooms 0 and 2 were played by one process, room 1 by the other: every room's cursors
    # reached its other members, whichever process played it.
    assert report["cursors"]["received"] > 0
    assert report["generator"]["rounds"] > 0
    assert report["generator"]["cpu_s"] > 0


async def test_a_generator_process_that_dies_fails_the_run_and_stops_the_others() -> None:
    plan = Plan(url="ws://127.0.0.1:9", rooms=2, players=1, processes=2, seed=1)
    with trio.fail_after(CLIENT_TIMEOUT), pytest.raises(GeneratorFailed) as failed:
        await coordinate(plan, Display(Console(file=io.StringIO())),
                         command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    assert str(failed.value) == ("generator process 1 ended without its results (exit status "
                                 "3; its errors are above)")


async def test_loadtest_refuses_an_absurd_plan_with_exit_status_2() -> None:
    with trio.fail_after(CLIENT_TIMEOUT):
        result = await trio.run_process(
            command("loadtest", "--url", "ws://127.0.0.1:9", "--rooms", "0"),
            stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "nexus-actors loadtest: --rooms must be at least 1 and at most 10000 (got 0)")
    assert result.stdout == b""


class Terminal:
    """``nexus-actors client`` in a subprocess: type lines, wait for output."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.text = ""

    async def type(self, *lines: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all("".join(f"{line}\n" for line in lines).encode())

    async def shows(self, pattern: str) -> re.Match[str]:
        """Read output until ``pattern`` (a regular expression) appears in it."""
        assert self.process.stdout is not None
        while (found := re.search(pattern, self.text)) is None:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                pytest.fail(f"the client exited without showing {pattern!r}:\n{self.text}")
            self.text += chunk.decode()
        return found


@asynccontextmanager
async def terminal(*args: str) -> AsyncIterator[Terminal]:
    process = await trio.lowlevel.open_process(
        command("client", *args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        yield Terminal(process)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def test_terminal_clients_play_a_room_and_quit_with_0(tmp_path: Path) -> None:
    with trio.fail_after(START_TIMEOUT + CLIENT_TIMEOUT):
        async with served(tmp_path / "server.log") as url, \
                terminal(url, "--host", "--name", "GM") as gm:
            code = (await gm.shows(r"room ([A-Z0-9]+): you are GM \(host, "))[1]
            await gm.type("/scene Cave")
            await gm.shows(r"\] GM created scene Cave \(")
            await gm.type("/token Cave 1 2 Rook")
            await gm.shows(r"\] GM created token Rook \(\w+\) in Cave at \(1, 2\)")
            async with terminal(url, "--join", code, "--name", "Ana") as ana:
                await gm.shows(r"\] Ana joined as player")
                await ana.shows(rf"room {code}: you are Ana \(player, ")
                await ana.type("hello from Ana", "/move rook 3 4")
                await gm.shows(r"\[\d\d:\d\d:\d\d\] Ana: hello from Ana")
                await gm.shows(r"\[\d\d:\d\d:\d\d\] Ana moved Rook to \(3, 4\)")
                await ana.type("/quit")
                with trio.fail_after(CLIENT_TIMEOUT):
                    assert await ana.process.wait() == 0
            await gm.shows(r"\] Ana disconnected")
            await gm.type("/who")
            await gm.shows(r"  Ana \(player, \w+\) disconnected")
            await gm.type("/quit")
            with trio.fail_after(CLIENT_TIMEOUT):
                assert await gm.process.wait() == 0
