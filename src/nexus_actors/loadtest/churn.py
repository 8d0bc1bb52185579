"""Churn: cutting connections the way a network failure does, so sessions must resume.

A player's session connects through a :class:`CuttableOpener`, which keeps the
stream it opened last. Cutting closes that stream's socket with ``SO_LINGER``
0: the server gets a reset, not a WebSocket close, and the client sees its
connection die under it. Neither side is told why, and the session reconnects
by itself with its resume token.
"""

from __future__ import annotations

import math
import random
import socket
import struct
from collections.abc import Sequence
from typing import TypeVar

import trio

from ..client import Opener

T = TypeVar("T")

RESET_ON_CLOSE = struct.pack("ii", 1, 0)
"``SO_LINGER`` on with a zero timeout: closing sends a reset and drops unsent data."


def victims(rng: random.Random, candidates: Sequence[T], fraction: float) -> list[T]:
    """The ``fraction`` of ``candidates`` to cut this round (rounded up: at least one when
    the fraction and the candidates are not zero), chosen by ``rng``."""
    if fraction <= 0 or not candidates:
        return []
    count = min(len(candidates), math.ceil(fraction * len(candidates) - 1e-9))
    return rng.sample(list(candidates), count)


def socket_of(stream: trio.abc.Stream | None) -> trio.socket.SocketType | None:
    """The socket under a TCP stream, or under a TLS stream over one."""
    while stream is not None:
        if isinstance(stream, trio.SocketStream):
            return stream.socket
        stream = getattr(stream, "transport_stream", None)
    return None


class CuttableOpener:
    """Opens connections like ``base`` and can cut the latest one."""

    def __init__(self, base: Opener) -> None:
        self.base = base
        self.stream: trio.abc.Stream | None = None
        self.opened = 0
        "Connections opened (the first and every reconnection)."

    async def __call__(self) -> trio.abc.Stream:
        stream = await self.base()
        self.opened += 1
        self.stream = stream
        return stream

    def cut(self) -> bool:
        """Reset the latest connection under the session (``False``: none to cut).

        A stream with no socket under it (the in-memory streams of
        ``nexus_actors.testing``) is cut with its own ``close()``, if it has one.
        """
        stream, self.stream = self.stream, None
        sock = socket_of(stream)
        if sock is None:
            close = getattr(stream, "close", None)
            if close is None:
                return False
            close()
            return True
        if sock.fileno() == -1:
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        except OSError:
            pass  # already dead: closing it is all there is to do
        sock.close()
        return True
