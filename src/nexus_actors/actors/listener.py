"""The listener: accepts TCP streams and routes each to an HTTP answer or a WebSocket.

One port serves everything: ``/ws`` upgrades to a WebSocket (run by the
connection actor); ``/health``, ``/ready`` and ``/api/stats`` answer JSON,
``/metrics`` the Prometheus exposition, and ``/`` and ``/static/<file>`` the
built-in web page (:mod:`nexus_actors.protocol.static`). The request is read
(by the connection layer's :class:`Handshake`) under ``handshake_timeout``;
this module only routes.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import math
import resource
from collections.abc import Callable
from urllib.parse import urlsplit

import attrs
import trio

from .. import metrics
from ..config import Config
from ..deps import Deps
from ..errors import Code, Refusal, StoreError
from ..metrics import Metrics
from ..protocol.connect import OpenRequest, parse_connect
from ..protocol.http import HttpReply
from ..protocol.limits import PerAddress, forwarded_client, host_of
from ..protocol.static import StaticSite
from ..store.base import RoomStats, Store
from . import peer as close
from .connection import Handshake, peer_factory, run_connection
from .health import Health
from .messages import Refused, RegistryMsg
from .peer import Peer
from .relay import CLIENT_HEADER, NODE_HEADER, SECRET_HEADER, relayed_from
from .services import Node, Services

log = logging.getLogger("nexus_actors.listener")

WEBSOCKET_PATH = "/ws"
STATS_TIMEOUT = 1.0
"Seconds /metrics and /api/stats wait for the store's room counts."


@attrs.define(kw_only=True)
class Listener:
    """What the accept loop needs for every connection."""

    config: Config
    deps: Deps
    health: Health
    registry: trio.MemorySendChannel[RegistryMsg]
    store: Store
    metrics: Metrics
    make_peer: Callable[[int, str], Peer]
    connects: PerAddress
    "WebSocket handshakes per address."
    failures: PerAddress
    "Failed joins and reconnects per address."
    node: Node
    "This process (its relay secret authenticates relayed connections)."
    static: StaticSite = attrs.Factory(StaticSite.from_package)
    "The built-in web page's files, read once at start-up."
    ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))
    open_connections: int = 0
    "WebSocket connections being served."
    _all_closed: trio.Event = attrs.Factory(trio.Event)

    async def wait_all_closed(self) -> None:
        """Return once no WebSocket connection is open."""
        while self.open_connections:
            await self._all_closed.wait()

    @classmethod
    def create(cls, services: Services) -> Listener:
        s = services
        config = s.config
        return cls(config=config, deps=s.deps, health=s.health, registry=s.registry,
                   store=s.store, metrics=s.metrics,
                   make_peer=peer_factory(config, s.deps, s.metrics),
                   connects=PerAddress(config.address_connect_rate,
                                       config.address_connect_burst),
                   failures=PerAddress(config.address_failure_rate,
                                       config.address_failure_burst),
                   node=s.node)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted stream to the end."""
        handshake: Handshake | None = None
        try:
            with trio.move_on_after(self.config.handshake_timeout):
                handshake = await Handshake.read(stream, self.config)
            if handshake is None:
                return
            path = urlsplit(handshake.target).path
            origin = handshake.header("Origin")
            if path == WEBSOCKET_PATH:
                address = forwarded_client(handshake.address,
                                           handshake.header("X-Forwarded-For"),
                                           self.config.trusted_proxies or ())
                host = host_of(address)
                client = relayed_from(self.node, handshake.header(SECRET_HEADER),
                                      handshake.header(CLIENT_HEADER))
                if client is not None:  # its own process checked origin and rate
                    via = (handshake.header(NODE_HEADER) or "?")[:100]
                    await self._websocket(handshake, client, via=via)
                elif origin is not None and not self.origin_allowed(origin):
                    await handshake.respond(HttpReply(
                        status=403, body={"error": "origin not allowed",
                                          "code": str(Code.FORBIDDEN)}))
                elif not self.connects.take(host, trio.current_time()):
                    retry = max(1, math.ceil(self.connects.retry_after(host) * 1000))
                    await handshake.respond(HttpReply(
                        status=429, body={"error": "too many connections from this address",
                                          "code": str(Code.RATE_LIMITED),
                                          "retryAfterMs": retry},
                        headers={"Retry-After": str(math.ceil(retry / 1000))}))
                else:
                    await self._websocket(handshake, address)
                return
            if handshake.method == "OPTIONS":
                reply = HttpReply(status=204, body=b"", headers={
                    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization",
                    "Access-Control-Max-Age": "600"})
            elif path == "/metrics" and handshake.method in ("GET", "HEAD"):
                reply = await self.metrics_reply(handshake.header("Authorization"))
            elif path == "/api/stats" and handshake.method in ("GET", "HEAD"):
                reply = await self.stats_reply()
            else:
                reply = self.route(handshake.method, path,
                                   upgrade=handshake.header("Upgrade") is not None)
            await handshake.respond(self._cors(reply, origin))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _websocket(self, handshake: Handshake, address: str, *,
                         via: str | None = None) -> None:
        """Upgrade and serve the client at ``address`` (``via``: the node id of the
        process that relayed it here)."""
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
        peer = self.make_peer(next(self.ids), address)
        peer.via = via
        self.open_connections += 1
        try:
            await run_connection(handshake, opening, peer, self.config, self.deps,
                                 self.registry, self.failures, self.node,
                                 relayed=via is not None)
        finally:
            self.open_connections -= 1
            if not self.open_connections:
                self._all_closed.set()
                self._all_closed = trio.Event()

    def origin_allowed(self, origin: str) -> bool:
        allowed = self.config.cors_origin
        return allowed is None or "*" in allowed or origin.rstrip("/").lower() in allowed

    def _cors(self, reply: HttpReply, origin: str | None) -> HttpReply:
        """``reply`` with the CORS headers a browser on ``origin`` may read it with."""
        if origin is None or not self.origin_allowed(origin):
            return reply
        allowed = "*" if self.config.cors_origin is None else origin
        return attrs.evolve(reply, headers={**reply.headers,
                                             "Access-Control-Allow-Origin": allowed,
                                             "Vary": "Origin"})

    def route(self, method: str, path: str, *, upgrade: bool = False) -> HttpReply:
        """The answer to a plain HTTP request (``HEAD`` gets the same, without a body).
        A WebSocket handshake (``upgrade``) to a page path is not a page request: 404."""
        if method not in ("GET", "HEAD"):
            return HttpReply(status=405, body={"error": "method not allowed"},
                             headers={"Allow": "GET, HEAD, OPTIONS"})
        if path == "/health":
            uptime = round(trio.current_time() - self.health.started_at, 3)
            return HttpReply(status=200, body={"status": "ok", "uptime": uptime,
                                               "connections": self.open_connections})
        if path == "/ready":
            if self.health.ready:
                return HttpReply(status=200, body={"ready": True})
            return HttpReply(status=503, body={"ready": False,
                                               "reasons": self.health.why_not_ready()})
        page = None if upgrade else self.static.reply(path)
        if page is not None:
            return page
        return HttpReply(status=404, body={"error": "not found", "path": path[:200]})

    async def metrics_reply(self, authorization: str | None) -> HttpReply:
        """The Prometheus exposition (behind ``METRICS_AUTH_TOKEN`` when it is set)."""
        token = self.config.metrics_auth_token
        if token is not None:
            given = (authorization or "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                return HttpReply(status=401, body={"error": "unauthorized"},
                                 headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        self.metrics.room_status = {s.status: s.rooms for s in await self._room_stats() or []}
        return HttpReply(status=200, body=self.metrics.exposition(),
                         content_type=metrics.CONTENT_TYPE)

    async def stats_reply(self) -> HttpReply:
        """The seed's operator stats: rooms and players from the store, this process."""
        stats = await self._room_stats()
        process = {"liveRooms": self.metrics.rooms_live,
                   "connections": self.open_connections,
                   "membersConnected": self.metrics.members_connected,
                   "memory": _memory(),
                   "uptime": round(trio.current_time() - self.health.started_at, 3)}
        if stats is None:
            return HttpReply(status=503, body={"error": "store unavailable", **process})
        by_status = {s.status: s for s in stats}
        return HttpReply(status=200, body={
            "activeRooms": by_status["active"].rooms if "active" in by_status else 0,
            "hibernatingRooms": (by_status["hibernating"].rooms
                                 if "hibernating" in by_status else 0),
            "totalPlayers": sum(s.players_connected for s in stats),
            "roomStatsByStatus": [{"status": s.status, "roomCount": s.rooms,
                                   "avgAgeSeconds": s.avg_age_seconds,
                                   "totalPlayers": s.players_connected} for s in stats],
            **process})

    async def _room_stats(self) -> list[RoomStats] | None:
        """The store's room counts, or ``None`` if it does not answer within a second."""
        with trio.move_on_after(STATS_TIMEOUT):
            try:
                return await self.store.room_stats()
            except StoreError:
                return None
        return None


def _memory() -> dict[str, int | None]:
    """Resident and peak resident memory of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident = int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        resident = None
    return {"rssBytes": resident, "maxRssBytes": peak}
