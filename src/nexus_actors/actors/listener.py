"""The listener: accepts TCP streams and routes each to an HTTP answer or a WebSocket.

One port serves everything: ``/ws`` upgrades to a WebSocket (run by the
connection actor); ``/health`` and ``/ready`` answer JSON. The opening
handshake is parsed by ``websockets``' sans-I/O ``ServerProtocol`` under
``handshake_timeout``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import attrs
import trio
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from ..config import Config
from ..deps import Deps
from ..errors import Code, Refusal
from ..protocol.connect import OpenRequest, parse_connect
from ..protocol.http import json_response
from . import peer as close
from .connection import RECEIVE_SIZE, peer_factory, run_connection
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

    def new_protocol(self) -> ServerProtocol:
        return ServerProtocol(
            extensions=[ServerPerMessageDeflateFactory(
                server_max_window_bits=12, client_max_window_bits=12,
                compress_settings={"memLevel": 5})],
            max_size=self.config.max_message_bytes,
        )

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted stream to the end."""
        protocol = self.new_protocol()
        request: Request | None = None
        try:
            with trio.move_on_after(self.config.handshake_timeout):
                request = await _read_request(stream, protocol)
            if request is None:
                await _flush(stream, protocol)
                return
            path = urlsplit(request.path).path
            if path == WEBSOCKET_PATH:
                await self._websocket(stream, protocol, request)
            else:
                response = self.route(request, path)
                if request.method == "HEAD":
                    response.body = b""  # same headers as GET, no body
                protocol.send_response(response)
                await _flush(stream, protocol)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _websocket(self, stream: trio.abc.Stream, protocol: ServerProtocol,
                         request: Request) -> None:
        response = protocol.accept(request)
        protocol.send_response(response)
        await _flush(stream, protocol)
        if response.status_code != 101:
            return
        opening: OpenRequest | Refused
        try:
            opening = parse_connect(request.path, max_name_length=self.config.max_name_length)
        except Refusal as refusal:
            close_code = (close.INVALID_TOKEN if refusal.code is Code.INVALID_TOKEN
                          else close.BAD_REQUEST)
            opening = Refused(code=refusal.code, message=refusal.message, close_code=close_code)
        peer = self.make_peer(next(self.ids), _address(stream))
        self.open_connections += 1
        try:
            await run_connection(stream, protocol, opening, peer, self.config, self.deps,
                                 self.registry)
        finally:
            self.open_connections -= 1
            if not self.open_connections:
                self._all_closed.set()
                self._all_closed = trio.Event()

    def route(self, request: Request, path: str) -> Response:
        if request.method not in ("GET", "HEAD"):
            return json_response(405, {"error": "method not allowed"},
                                 extra={"Allow": "GET, HEAD"})
        if path == "/health":
            return json_response(200, {"status": "ok",
                                       "uptime": round(trio.current_time()
                                                       - self.health.started_at, 3),
                                       "connections": self.open_connections})
        if path == "/ready":
            if self.health.ready:
                return json_response(200, {"ready": True})
            return json_response(503, {"ready": False, "reasons": self.health.why_not_ready()})
        return json_response(404, {"error": "not found", "path": path[:200]})


async def _read_request(stream: trio.abc.Stream, protocol: ServerProtocol) -> Request | None:
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            protocol.receive_eof()
            return None
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Request):
                return event
        if protocol.handshake_exc is not None:
            return None


async def _flush(stream: trio.abc.Stream, protocol: ServerProtocol) -> None:
    for chunk in protocol.data_to_send():
        if chunk:
            await stream.send_all(chunk)


def _address(stream: trio.abc.Stream) -> str:
    socket_stream = stream
    while isinstance(socket_stream, trio.SSLStream):
        socket_stream = socket_stream.transport_stream
    if isinstance(socket_stream, trio.SocketStream):
        try:
            host, port, *_ = socket_stream.socket.getpeername()
        except OSError:
            return "?"
        return f"{host}:{port}"
    return "memory"
