"""Plain HTTP requests to a :class:`~nexus_actors.testing.TestServer` (``/health``,
``/metrics``...), over the same in-memory streams as its WebSockets."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
import trio

from .harness import TestServer


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    "Lower-cased names (each sent once: :func:`parse` checks)."
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_to_eof(stream: trio.abc.Stream) -> bytes:
    chunks = []
    with trio.fail_after(60):
        while chunk := await stream.receive_some():
            chunks.append(chunk)
    await stream.aclose()
    return b"".join(chunks)


def parse(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        assert key not in headers, f"the {key} header was sent twice: {head!r}"
        headers[key] = value.strip()
    return Reply(int(status), headers, body)


async def exchange(server: TestServer, request: bytes) -> bytes:
    """Send ``request`` on a new connection; everything the server sent before closing."""
    stream = server.listener.connect()
    await stream.send_all(request)
    return await read_to_eof(stream)


async def get(server: TestServer, path: str, **headers: str) -> Reply:
    """``GET path``; ``headers`` as ``Authorization="Bearer x"``."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return parse(await exchange(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()))
