"""Helpers for tests that run the server as a separate process."""

from __future__ import annotations

import os
import socket

import trio

from ..config import Config


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_environment(**settings: str) -> dict[str, str]:
    """This process's environment without any server setting, plus ``settings``."""
    names = {meta.env for _, meta, _ in Config.settings()}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(settings)
    return env


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything ``stream`` sends until it ends."""
    reply = b""
    while chunk := await stream.receive_some():
        reply += chunk
    return reply


async def http_get(port: int, path: str) -> bytes:
    """The whole reply to ``GET path`` on 127.0.0.1 (raises ``OSError`` while nothing
    accepts on the port)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return await read_all(stream)


async def health_status(port: int) -> int | None:
    """The status of ``GET /health`` on 127.0.0.1, or ``None`` while nothing accepts on
    the port (a server process that has not begun to listen, or has stopped)."""
    try:
        reply = await http_get(port, "/health")
    except OSError:
        return None
    return int(reply.split(b" ", 2)[1])


async def scrape(port: int) -> dict[str, float]:
    """``GET /metrics`` of a server process on 127.0.0.1: every sample, by its name with
    its labels as exposed (``nexus_relays_total{outcome="opened"}``)."""
    reply = await http_get(port, "/metrics")
    samples: dict[str, float] = {}
    for line in reply.partition(b"\r\n\r\n")[2].decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
