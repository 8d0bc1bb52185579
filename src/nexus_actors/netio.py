"""Reading a TCP stream the cheap way: wait until readable, then read once.

Shared by the server's connections and the client's links. ``receive_some`` on a
trio socket tries the read first and waits only when it fails; a peer that
sends one frame at a time makes that an extra failed system call per frame.
"""

from __future__ import annotations

import os
import sys

import trio


def plain_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket of a plain TCP stream on POSIX (where ``os.read``/``os.write`` work)."""
    if isinstance(stream, trio.SocketStream) and sys.platform != "win32":
        return stream.socket
    return None


async def receive(stream: trio.abc.Stream, socket: trio.socket.SocketType | None,
                  size: int) -> bytes | bytearray:
    """The next bytes from ``stream`` (``b""`` at EOF); ``socket`` is its
    :func:`plain_socket`, read directly when there is one."""
    if socket is None:
        return await stream.receive_some(size)
    while True:
        await trio.lowlevel.wait_readable(socket)
        try:
            # fileno() is -1 once the socket is closed: never a reused descriptor.
            return os.read(socket.fileno(), size)
        except BlockingIOError:
            continue
