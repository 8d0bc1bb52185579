"""Injected sources of time, randomness and identity, and the way to other processes.

The server never calls ``time.time()``, ``random`` or ``uuid`` directly, nor
dials another server process itself: it asks :class:`Deps`. Production uses the
system's; tests and the simulation use :meth:`Deps.seeded`, so a run is a pure
function of its seed and the trio clock.
"""

from __future__ import annotations

import random
import secrets
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import attrs
import trio

Dial = Callable[[str], Awaitable[trio.abc.Stream]]
"Opens a byte stream to another process's advertised URL (``ws://`` or ``wss://``)."


async def dial_tcp(url: str) -> trio.abc.Stream:
    """A TCP connection (TLS for ``wss://``, verified with the system's certificates)."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if secure:
        stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host)
    return stream


@attrs.frozen(kw_only=True)
class Deps:
    wall_ms: Callable[[], int]
    "Wall-clock milliseconds for timestamps and room activity times."
    random: random.Random
    "Room codes and jitter."
    new_token: Callable[[], str]
    "Secret resume tokens (at least 128 random bits)."
    new_id: Callable[[], str]
    "Public ids: members, server-generated entity and event ids."
    dial: Dial = dial_tcp
    "How a relay reaches the process that owns a room (tests: an in-memory listener)."

    @classmethod
    def production(cls) -> Deps:
        return cls(
            wall_ms=lambda: time.time_ns() // 1_000_000,
            random=random.SystemRandom(),
            new_token=lambda: secrets.token_urlsafe(24),
            new_id=lambda: str(uuid.uuid4()),
        )

    @classmethod
    def seeded(cls, seed: int, *, epoch_ms: int = 1_767_225_600_000) -> Deps:
        """Deterministic deps: wall time follows the trio clock from ``epoch_ms``."""
        rng = random.Random(seed)

        def new_id() -> str:
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))

        return cls(
            wall_ms=lambda: epoch_ms + int(trio.current_time() * 1000),
            random=rng,
            new_token=lambda: _seeded_token(rng),
            new_id=new_id,
        )


def _seeded_token(rng: random.Random) -> str:
    return rng.getrandbits(192).to_bytes(24, "big").hex()
