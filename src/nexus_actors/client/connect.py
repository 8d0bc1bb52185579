"""``connect``: take a seat and keep it for the duration of an ``async with`` block."""

from __future__ import annotations

import random
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio

from .core import Role, SessionCore, Target
from .options import Options
from .runner import Opener, Runner
from .session import Session


def endpoint(url: str, ssl_context: ssl.SSLContext | None = None) -> tuple[str, Opener]:
    """The WebSocket URL without its query (path ``/ws`` unless one is given), and an
    opener of TCP (``ws://``) or TLS (``wss://``) connections to its host."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
    host = parts.hostname
    port = parts.port or (443 if scheme == "wss" else 80)
    path = parts.path if parts.path not in ("", "/") else "/ws"

    async def opener() -> trio.abc.Stream:
        if scheme == "wss":
            return await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=ssl_context or ssl.create_default_context(),
                https_compatible=True)
        return await trio.open_tcp_stream(host, port)

    return f"{scheme}://{parts.netloc}{path}", opener


@asynccontextmanager
async def connect(url: str, *, room: str | None = None, name: str | None = None,
                  role: Role = "player", token: str | None = None,
                  options: Options | None = None, opener: Opener | None = None,
                  rng: random.Random | None = None,
                  new_id: Callable[[], str] | None = None,
                  ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Session]:
    """Take a seat and keep it, reconnecting as needed, for the duration of the block.

    - ``role="host"``: create a room (``room``: the code to use, or ``None`` to let the
      server pick one); ``role="player"``: join ``room``.
    - ``token``: take back the seat that token belongs to in ``room``.

    ``opener`` replaces the TCP connection (the URL then only names the host and path);
    ``rng`` drives the reconnection jitter and ``new_id`` makes event, update and entity
    ids, so a test can be deterministic. Raises
    :class:`~nexus_actors.client.errors.Refused` when the server refuses the request and
    :class:`~nexus_actors.client.errors.ConnectFailed` when no connection could be made.
    Leaving the block closes the connection cleanly; the seat stays (``session.token``
    takes it back later) unless :meth:`Session.leave` gave it up.
    """
    options = options or Options()
    target = Target(room=room, name=name, role=role, token=token)
    base, default_opener = endpoint(url, ssl_context)
    core = SessionCore(target=target, options=options,
                       new_id=new_id or (lambda: str(uuid.uuid4())))
    runner = Runner(core, base=base, opener=opener or default_opener,
                    rng=rng or random.Random(), options=options)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.supervise)
            nursery.start_soon(runner.timers)
            await runner.ready.wait()
            if runner.failure is None:
                try:
                    yield Session(runner)
                finally:
                    with trio.CancelScope(shield=True):
                        await runner.close()
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The session's own tasks do not fail: a lone exception is the block's own.
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0],
                                                         BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise
    if runner.failure is not None:
        raise runner.failure
