"""Several real server processes on one PostgreSQL, behind a real HAProxy, on loopback.

For the scale-out tests and ``scripts/bench scaling``: :func:`open_cluster`
starts ``count`` ``nexus-actors serve`` processes (each on its own port, with
``NEXUS_ADVERTISE_URL`` pointing at it and HAProxy's address trusted) and an
HAProxy (Debian's ``haproxy`` package) with ``deploy/haproxy/haproxy.cfg``
rendered for them: its listen address and its servers changed, nothing else,
plus a stats socket to ask which servers it considers up. Processes can be
killed (``kill -9``), paused (SIGSTOP/SIGCONT), drained (SIGTERM) and started
again on the same port. Every wait is bounded; nothing outlives the block.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from .processes import free_port, health_status, read_all, server_environment

HAPROXY_CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "haproxy" / "haproxy.cfg"
"The shipped HAProxy configuration (from a source checkout)."
START_TIMEOUT = 30.0
"Seconds a process may take to answer /health, or HAProxy to count it up."
POLL = 0.05
"Seconds between looks at a process starting (polling is the only way to see it)."


class ClusterError(Exception):
    """A process did not start or stop as it should; the message holds its log's tail."""


def haproxy_path() -> str | None:
    """The ``haproxy`` executable, if installed."""
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.path.exists(p)),
        None)


def render_haproxy(template: str, *, port: int, servers: list[int], stats: Path,
                   check_interval: str = "1s") -> str:
    """``template`` (the shipped haproxy.cfg) listening on 127.0.0.1:``port`` with
    ``servers`` (ports on 127.0.0.1) as the backend, a stats socket, and at most 4,000
    connections (the shipped file's limit needs more open files than a test has). Raises
    ``ValueError`` if the template no longer has the lines this replaces."""
    lines = template.splitlines()
    out: list[str] = []
    replaced = {"bind": False, "server": False, "global": False}
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("bind "):
            out.append(f"    bind 127.0.0.1:{port}")
            replaced["bind"] = True
        elif stripped.startswith("server "):
            if not replaced["server"]:
                out.extend(f"    server nexus-{i + 1} 127.0.0.1:{p}"
                           for i, p in enumerate(servers))
                replaced["server"] = True
        elif stripped.startswith("maxconn "):
            out.append("    maxconn 4000")  # within this machine's limit on open files
        elif stripped.startswith("default-server "):
            out.append(re.sub(r"inter \S+", f"inter {check_interval}", line))
        elif stripped == "global":
            out.append(line)
            out.append(f"    stats socket {stats} mode 600 level admin")
            replaced["global"] = True
        else:
            out.append(line)
    missing = [key for key, done in replaced.items() if not done]
    if missing:
        raise ValueError(f"haproxy.cfg has no {', '.join(missing)} line to replace")
    return "\n".join(out) + "\n"


@attrs.define(eq=False)
class ServerProcess:
    """One ``nexus-actors serve`` process (started again on the same port)."""

    index: int
    port: int
    env: dict[str, str]
    log: Path
    process: trio.Process | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "nexus_actors", "serve"], env=self.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        with trio.fail_after(START_TIMEOUT):
            while await health_status(self.port) != 200:
                if self.process.poll() is not None:
                    raise ClusterError(f"server {self.index} exited: {self.tail()}")
                await trio.sleep(POLL)

    def signal(self, signum: int) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signum)

    async def kill(self) -> None:
        """``kill -9``: nothing drained, nothing flushed."""
        self.signal(signal.SIGKILL)
        await self.wait()

    async def drain(self) -> int:
        """SIGTERM, and wait for the exit status (at most ``START_TIMEOUT``)."""
        self.signal(signal.SIGTERM)
        with trio.fail_after(START_TIMEOUT):
            return await self.wait()

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@attrs.define(eq=False)
class Cluster:
    """``servers`` behind ``haproxy``, all on one database."""

    servers: list[ServerProcess]
    port: int
    "HAProxy's port."
    stats: Path
    haproxy: trio.Process
    database_url: str

    @property
    def url(self) -> str:
        """Where clients connect: HAProxy."""
        return f"ws://127.0.0.1:{self.port}"

    async def up(self) -> set[int]:
        """The servers HAProxy counts as up (their indexes)."""
        state = await self._stats("show servers state nexus\n")
        up = set()
        for line in state.splitlines()[2:]:
            fields = line.split()
            # be_id be_name srv_id srv_name srv_addr srv_op_state ...: 2 is running.
            if len(fields) > 5 and fields[3].startswith("nexus-") and fields[5] == "2":
                up.add(int(fields[3].removeprefix("nexus-")) - 1)
        return up

    async def until_up(self, indexes: set[int]) -> None:
        """Wait until HAProxy counts exactly ``indexes`` as up (at most ``START_TIMEOUT``)."""
        with trio.fail_after(START_TIMEOUT):
            # Polling its stats is the only way to see what another process decided.
            while await self.up() != indexes:  # noqa: ASYNC110
                await trio.sleep(POLL * 4)

    async def _stats(self, command: str) -> str:
        stream = await trio.open_unix_socket(str(self.stats))
        async with stream:
            await stream.send_all(command.encode())
            return (await read_all(stream)).decode()


@asynccontextmanager
async def open_cluster(database_url: str, logs: Path, *, count: int = 3,
                       settings: dict[str, str] | None = None,
                       check_interval: str = "1s") -> AsyncIterator[Cluster]:
    """``count`` server processes and HAProxy, until the block ends (then all killed)."""
    haproxy = haproxy_path()
    if haproxy is None:
        raise ClusterError("haproxy is not installed (apt-get install haproxy)")
    await trio.Path(logs).mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(count)]
    proxy_port = free_port()
    servers = [
        ServerProcess(index=i, port=port, log=logs / f"server-{i + 1}.log", env=server_environment(
            **{"PORT": str(port), "NEXUS_HOST": "127.0.0.1", "DATABASE_URL": database_url,
               "NEXUS_ADVERTISE_URL": f"ws://127.0.0.1:{port}",
               "NEXUS_TRUSTED_PROXIES": "127.0.0.1", "LOG_LEVEL": "info",
               "NEXUS_LOG_FORMAT": "json", **(settings or {})}))
        for i, port in enumerate(ports)]
    stats = logs / "haproxy.sock"
    config = logs / "haproxy.cfg"
    config.write_text(render_haproxy(HAPROXY_CONFIG.read_text(), port=proxy_port,
                                     servers=ports, stats=stats,
                                     check_interval=check_interval))
    proxy: trio.Process | None = None
    try:
        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(server.start)
        with (logs / "haproxy.log").open("ab") as log:
            proxy = await trio.lowlevel.open_process(
                [haproxy, "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log)
        cluster = Cluster(servers=servers, port=proxy_port, stats=stats, haproxy=proxy,
                          database_url=database_url)
        with trio.fail_after(START_TIMEOUT):
            while not stats.exists():
                if proxy.poll() is not None:
                    raise ClusterError(
                        f"haproxy exited: {(logs / 'haproxy.log').read_text()[-2000:]}")
                await trio.sleep(POLL)
        await cluster.until_up(set(range(count)))
        yield cluster
    finally:
        with trio.CancelScope(shield=True):
            for process in [proxy, *(s.process for s in servers)]:
                if process is not None and process.returncode is None:
                    process.kill()
                    await process.wait()
