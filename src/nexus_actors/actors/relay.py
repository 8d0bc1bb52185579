"""Relaying a client to the process that owns its room.

When a connection asks for a room whose lease another live process holds, its
connection actor opens a WebSocket to that process (the owner's advertised URL
and the client's own request target, with two headers: the relay secret every
process reads from the store, and the client's address) and pumps messages
both ways, transparently to the client:

- up: the client's text messages, once this process's own limits have passed
  them (size, rate, flooding: the same as for a room served here), unchanged;
- down: the owner's frames, unchanged, except its ``ping`` reports: this
  process pings the client itself and reports the client's own latency.

A close passes through with its code and reason, after the frames before it
(an ``error``, a ``backoff`` hint). If the owner's side ends without a close (the
process died), the client is closed with a ``room-restart`` hint and resumes
through the load balancer, wherever the room lives next. An owner that cannot be
reached at all gets the client an ``unavailable`` hint instead.

The owner trusts the headers only with the right secret; a relayed connection
is never relayed again (a room that moved meanwhile is refused, and the client
comes back).
"""

from __future__ import annotations

import hmac
import logging

import trio

from ..client.transport import HandshakeFailed, Link
from ..errors import Code
from ..protocol import outbound
from ..protocol.wire import Wire
from . import peer as close
from .peer import Peer
from .services import Node

log = logging.getLogger("nexus_actors.relay")

SECRET_HEADER = "X-Nexus-Relay"
"The relay secret: the connection comes from another process of this cluster."
CLIENT_HEADER = "X-Nexus-Client"
"The address of the client a relayed connection carries (``host:port``)."
NODE_HEADER = "X-Nexus-Node"
"The node id of the process relaying (a room most of whose members come through one moves)."

_PING = b'{"type":"ping"'
"How the owner's latency reports begin (``outbound.ping``): this process sends its own."
MAX_QUEUED_UP = 1024
"Client messages waiting for the owner to read them before the client is sent away."


def relayed_from(node: Node, secret: str | None, client: str | None) -> str | None:
    """The client address of a connection another process relayed here (``None``: not a
    relay, or a wrong secret)."""
    if secret is None or client is None or node.relay_secret is None:
        return None
    if not hmac.compare_digest(secret.encode(), node.relay_secret.encode()):
        return None
    return client[:100]


def _kind(payload: bytes) -> str:
    """A server frame's ``type`` (every frame starts ``{"type":"...``), for metrics."""
    if payload.startswith(b'{"type":"'):
        end = payload.find(b'"', 9)
        if end > 9:
            return payload[9:end].decode("ascii", "replace")
    return "relayed"


class Upstream:
    """The connection to the room's owner, and the pump from it to the client."""

    def __init__(self, link: Link, peer: Peer) -> None:
        self.link = link
        self.peer = peer

    @classmethod
    async def open(cls, stream: trio.abc.Stream, url: str, target: str, *, peer: Peer,
                   node: Node, idle_timeout: float) -> Upstream:
        """The WebSocket handshake with the owner at ``url`` for the client's ``target``."""
        if node.relay_secret is None:
            raise HandshakeFailed("the relay secret is not known yet (the store is down)")
        # Unpaced: the client's messages were limited on the way in.
        link = await Link.open(
            stream, f"{url}{target}", compress=False, idle_timeout=idle_timeout,
            headers=[(SECRET_HEADER, node.relay_secret), (CLIENT_HEADER, peer.address),
                     (NODE_HEADER, node.id)])
        return cls(link, peer)

    def up(self, message: bytes) -> None:
        """A client message to the owner (an owner that stops reading sends the client
        away, as a full room mailbox would)."""
        if self.link.queued >= MAX_QUEUED_UP:
            self.peer.close(close.TRY_AGAIN_LATER, "room overloaded")
            return
        self.link.send([message])
        metrics = self.peer.metrics
        if metrics is not None:
            metrics.relayed_frames["up"] += 1

    def _down(self, message: bytes) -> None:
        peer = self.peer
        if not message.startswith(_PING):
            peer.queue(Wire(message, _kind(message)))
            if peer.metrics is not None:
                peer.metrics.relayed_frames["down"] += 1
        if not self.link.buffered:
            peer.flush()

    async def pump(self, close_timeout: float, gone: Wire) -> None:
        """Deliver the owner's frames until its side ends, then close the client the same
        way (``gone``: the hint for an owner that went without a close)."""
        await self.link.run(self._down, close_timeout=close_timeout)
        code = self.link.close_code
        if code is None:
            self.peer.close(close.SERVICE_RESTART, "room restart", gone)
        else:
            self.peer.close(code, self.link.close_reason)

    def close(self, code: int) -> None:
        """The client is gone: close the owner's side with the client's code."""
        self.link.close(code if code >= 1000 and code not in (1005, 1006, 1015) else 1000)


UNREACHABLE = (OSError, HandshakeFailed, trio.TooSlowError, trio.BrokenResourceError,
               trio.ClosedResourceError)
"What opening a relay may fail with: the owner is not there (or not answering)."


def unreachable_frames(url: str, retry_ms: int, now_ms: int) -> tuple[Wire, Wire]:
    """What a client is told when its room's owner cannot be reached."""
    log.info("the owner of a room at %s cannot be reached", url)
    return (outbound.error(Code.UNAVAILABLE, "the room's server cannot be reached; try again",
                           now_ms),
            outbound.backoff("unavailable", retry_ms, now_ms))
