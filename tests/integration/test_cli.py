"""The console script as a user runs it: a real process, a real port, real signals.

``nexus-actors serve`` configured from the environment answers ``/health``
and serves rooms over TCP; SIGTERM drains it (every client gets a
``server-restart`` backoff hint and close 1012) and the process exits 0 within
the drain timeout. A bad setting fails start-up with exit code 2 and one line
naming it; ``serve --help`` lists every setting's environment variable and
``nexus-actors settings`` prints the Markdown table.

No subprocess outlives its test: each is killed in a ``finally`` if still running.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
import trio

from nexus_actors.config import Config, settings_table
from nexus_actors.testing import TestClient, query
from nexus_actors.testing.processes import free_port, health_status, server_environment

pytestmark = pytest.mark.realclock

START_TIMEOUT = 20.0
"Seconds the process may take to answer /health (imports are slow on a busy CI machine)."
DRAIN_TIMEOUT = 5
"NEXUS_DRAIN_TIMEOUT given to the process."
EXIT_MARGIN = 5.0
"Seconds beyond the drain timeout the process may take to exit after SIGTERM."
RUN_TIMEOUT = 20.0
"Seconds a short command (--help, settings, a refused start) may take."
SCRIPT = Path(sys.executable).with_name("nexus-actors")
"The console script installed next to this interpreter."


@asynccontextmanager
async def served(log: Path, *, command: Sequence[str] | None = None,
                 **settings: str) -> AsyncIterator[tuple[trio.Process, int]]:
    """Run ``python -m nexus_actors serve`` (or ``command``) until /health answers; kill it
    if still up after."""
    port = free_port()
    env = server_environment(PORT=str(port), NEXUS_HOST="127.0.0.1", LOG_LEVEL="info", **settings)
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            command or [sys.executable, "-m", "nexus_actors", "serve"], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            with trio.fail_after(START_TIMEOUT):
                # Polling is the only way to see an external process start listening.
                while await health_status(port) != 200:
                    if process.poll() is not None:
                        pytest.fail(f"server exited: {await trio.Path(log).read_text()}")
                    await trio.sleep(0.05)
            yield process, port
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def test_serve_runs_rooms_then_drains_on_sigterm_and_exits_0(
        tmp_path: Path, database_url: str) -> None:
    log = tmp_path / "stderr.log"
    with trio.fail_after(START_TIMEOUT + DRAIN_TIMEOUT + EXIT_MARGIN + 10):
        async with trio.open_nursery() as nursery, served(
                log, NEXUS_DRAIN_TIMEOUT=str(DRAIN_TIMEOUT),
                DATABASE_URL=database_url) as (process, port):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            host = await TestClient.open(stream, query(host="", name="GM"), nursery)
            assert (await host.next("event"))["data"]["name"] == "session/created"
            await host.next("event-cursor")
            event_id = await host.send_event("chat/message", {"text": "hello"})
            ack = await host.until("event-ack", eventId=event_id)
            assert ack["data"]["duplicate"] is False

            process.send_signal(signal.SIGTERM)
            hint = await host.until("backoff")
            assert hint["data"]["reason"] == "server-restart"
            assert await host.wait_closed() == 1012
            with trio.fail_after(DRAIN_TIMEOUT + EXIT_MARGIN):
                assert await process.wait() == 0
    assert "draining" in await trio.Path(log).read_text()


async def test_second_sigterm_during_the_drain_exits_at_once_with_143(tmp_path: Path) -> None:
    # A client that never answers the close frame holds the drain for NEXUS_CLOSE_TIMEOUT.
    log = tmp_path / "stderr.log"
    with trio.fail_after(START_TIMEOUT + 30):
        async with trio.open_nursery() as nursery, served(
                log, DATABASE_URL="memory", NEXUS_CLOSE_TIMEOUT="300",
                NEXUS_DRAIN_TIMEOUT="600") as (process, port):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            host = await TestClient.open(stream, query(host="", name="GM"), nursery)
            assert (await host.next("event"))["data"]["name"] == "session/created"
            host.stall()
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                while True:  # polling is the only way to see an external process's log
                    if "draining:" in await trio.Path(log).read_text():
                        break
                    await trio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                assert await process.wait() == 128 + signal.SIGTERM
            nursery.cancel_scope.cancel()  # the stalled client's reader
    text = await trio.Path(log).read_text()
    assert "received SIGTERM again; exiting without finishing the drain" in text, text


async def test_sigterm_while_waiting_for_the_database_exits_at_once_with_143(
        tmp_path: Path) -> None:
    # As PID 1 in a container a process without a SIGTERM handler ignores the signal.
    log = tmp_path / "stderr.log"
    env = server_environment(PORT=str(free_port()), NEXUS_HOST="127.0.0.1", LOG_LEVEL="info",
                             DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x",
                             NEXUS_DB_STARTUP_TIMEOUT="300")
    with trio.fail_after(RUN_TIMEOUT + 10), log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "nexus_actors", "serve"], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            while True:  # polling is the only way to see an external process's log
                if "database not reachable yet" in await trio.Path(log).read_text():
                    break
                assert process.poll() is None, await trio.Path(log).read_text()
                await trio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                assert await process.wait() == 128 + signal.SIGTERM
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert "received SIGTERM while starting; exiting" in await trio.Path(log).read_text()


async def test_bad_setting_exits_2_with_one_line_naming_it_and_never_listens() -> None:
    with trio.fail_after(RUN_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "nexus_actors", "serve"],
            env=server_environment(NEXUS_HEARTBEAT_INTERVAL="abc", PORT=str(free_port()),
                            NEXUS_HOST="127.0.0.1"),
            stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "NEXUS_HEARTBEAT_INTERVAL" in lines[0]
    assert "abc" in lines[0]
    assert result.stdout == b""


async def test_serve_help_lists_every_setting_environment_variable() -> None:
    assert SCRIPT.exists(), f"console script not installed at {SCRIPT}"
    with trio.fail_after(RUN_TIMEOUT):
        result = await trio.run_process([str(SCRIPT), "serve", "--help"],
                                        env=server_environment(COLUMNS="100"), capture_stdout=True)
    text = result.stdout.decode()
    missing = [meta.env for _, meta, _ in Config.settings() if meta.env not in text]
    assert missing == []
    assert all(meta.flag in text for _, meta, _ in Config.settings())


async def test_settings_command_prints_the_markdown_table() -> None:
    assert SCRIPT.exists(), f"console script not installed at {SCRIPT}"
    with trio.fail_after(RUN_TIMEOUT):
        result = await trio.run_process([str(SCRIPT), "settings"], env=server_environment(),
                                        capture_stdout=True)
    lines = result.stdout.decode().strip().splitlines()
    assert lines[:2] == ["| Environment | Flag | Default | Meaning |", "|---|---|---|---|"]
    rows = lines[2:]
    assert [row.split(" | ")[0] for row in rows] == [
        f"| `{meta.env}`" for _, meta, _ in Config.settings()]
    assert "\n".join(lines) == settings_table()


@pytest.mark.parametrize("log_format", ["json", "auto"])
async def test_serve_with_json_logs_writes_only_json_lines_from_start_to_stop(
        tmp_path: Path, log_format: str) -> None:
    # "auto" is json here: stderr is a file, not a terminal.
    assert SCRIPT.exists(), f"console script not installed at {SCRIPT}"
    log = tmp_path / "stderr.log"
    async with served(log, command=[str(SCRIPT), "serve"], NEXUS_LOG_FORMAT=log_format,
                      DATABASE_URL="memory") as (process, port):
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(DRAIN_TIMEOUT + EXIT_MARGIN):
            assert await process.wait() == 0
    text = await trio.Path(log).read_text(encoding="utf-8")
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert lines, "nothing was logged"
    assert all(isinstance(line, dict) for line in lines), text
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines), text
    messages = [line["message"] for line in lines]
    assert messages[0].startswith("nexus-actors "), messages
    assert "starting" in messages[0], messages
    assert f"listening on 127.0.0.1:{port} (http/ws)" in messages, messages
    assert "received SIGTERM; draining" in messages, messages
    assert messages[-1] == "stopped", messages
