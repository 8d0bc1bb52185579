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


async def health_status(port: int) -> int | None:
    """The status of ``GET /health`` on 127.0.0.1, or ``None`` while nothing accepts on
    the port (a server process that has not begun to listen, or has stopped)."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return None
    async with stream:
        await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while chunk := await stream.receive_some():
            reply += chunk
    return int(reply.split(b" ", 2)[1])
