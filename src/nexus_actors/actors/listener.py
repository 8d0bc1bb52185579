"""The listener: accepts TCP streams and routes each to an HTTP answer or a WebSocket.

One port serves everything: ``/ws`` upgrades to a WebSocket (run by the
connection actor); ``/health`` and ``/ready`` answer JSON. The request is read
(by the connection layer's :class:`Handshake`) under ``handshake_timeout``;
this module only routes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import attrs
import trio

from ..config import Config
from ..deps import Deps
from ..errors import Code, Refusal
from ..protocol.connect import OpenRequest, parse_connect
from ..protocol.http import HttpReply
from . import peer as close
from .connection import Handshake, peer_factory, run_connection
from .health import Health
from .messages import Refused, RegistryMsg
from .peer import Peer

log = logging.getLogger("nexus_actors.listener")

WEBSOCKET_PATH = "/ws"


@attrs.define(kw_only=True)
class Listener:
    """What the accept loop needs for every connection."""

    config: Config
    deps: Deps
    health: Health
    registry: trio.MemorySendChannel[RegistryMsg]
    make_peer: Callable[[int, str], Peer]
    ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))
    open_connections: int = 0
    "WebSocket connections being served."
    _all_closed: trio.Event = attrs.Factory(trio.Event)

    async def wait_all_closed(self) -> None:
        """Return once no WebSocket connection is open."""
        while self.open_connections:
            await self._all_closed.wait()

    @classmethod
    def create(cls, config: Config, deps: Deps, health: Health,
               registry: trio.MemorySendChannel[RegistryMsg]) -> Listener:
        return cls(config=config, deps=deps, health=health, registry=registry,
                   make_peer=peer_factory(config, deps))

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted stream to the end."""
        handshake: Handshake | None = None
        try:
            with trio.move_on_after(self.config.handshake_timeout):
                handshake = await Handshake.read(stream, self.config)
            if handshake is None:
                return
            path = urlsplit(handshake.target).path
            if path == WEBSOCKET_PATH:
                await self._websocket(handshake)
            else:
                await handshake.respond(self.route(handshake.method, path))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _websocket(self, handshake: Handshake) -> None:
        if not await handshake.upgrade():
            return
        opening: OpenRequest | Refused
        try:
            opening = parse_connect(handshake.target,
                                    max_name_length=self.config.max_name_length)
        except Refusal as refusal:
            close_code = (close.INVALID_TOKEN if refusal.code is Code.INVALID_TOKEN
                          else close.BAD_REQUEST)
            opening = Refused(code=refusal.code, message=refusal.message, close_code=close_code)
        peer = self.make_peer(next(self.ids), handshake.address)
        self.open_connections += 1
        try:
            await run_connection(handshake, opening, peer, self.config, self.deps,
                                 self.registry)
        finally:
            self.open_connections -= 1
            if not self.open_connections:
                self._all_closed.set()
                self._all_closed = trio.Event()

    def route(self, method: str, path: str) -> HttpReply:
        """The answer to a plain HTTP request (``HEAD`` gets the same, without a body)."""
        if method not in ("GET", "HEAD"):
            return HttpReply(status=405, body={"error": "method not allowed"},
                             headers={"Allow": "GET, HEAD"})
        if path == "/health":
            uptime = round(trio.current_time() - self.health.started_at, 3)
            return HttpReply(status=200, body={"status": "ok", "uptime": uptime,
                                               "connections": self.open_connections})
        if path == "/ready":
            if self.health.ready:
                return HttpReply(status=200, body={"ready": True})
            return HttpReply(status=503, body={"ready": False,
                                               "reasons": self.health.why_not_ready()})
        return HttpReply(status=404, body={"error": "not found", "path": path[:200]})
