"""Every message that crosses an actor mailbox: a closed set of frozen classes.

Commands are imperative (``Attach``), notices past tense (``Committed``).
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from ..errors import Code
from ..protocol.connect import OpenRequest
from ..protocol.inbound import EventFrame
from ..protocol.wire import Wire
from .mailbox import CursorMailbox
from .peer import Peer

# Replies to a connection asking for a seat ---------------------------------


@attrs.frozen(kw_only=True)
class Attached:
    member_id: str
    room: trio.MemorySendChannel[RoomMsg]
    "The room's mailbox (a clone the connection owns and closes)."
    cursors: CursorMailbox
    "Where the connection leaves its latest cursor for the room's next tick."


@attrs.frozen(kw_only=True)
class Refused:
    code: Code
    message: str
    close_code: int
    backoff: Wire | None = None
    "A ``backoff`` frame when the client should come back later."


@attrs.frozen(kw_only=True)
class Relay:
    """Another live process owns the room: relay the connection to it."""

    url: str
    "Its advertised WebSocket URL (``ws://host:port``)."
    remaining: float
    "Seconds until its lease expires unless renewed (when to come back if it is down)."


SessionResult = Attached | Refused | Relay

# Room mailbox --------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Attach:
    """Seat a connection (create, join or resume); the room answers on ``reply``."""

    request: OpenRequest
    peer: Peer
    reply: trio.MemorySendChannel[SessionResult]
    inbox: trio.MemorySendChannel[RoomMsg]
    "A clone of the room's mailbox to hand to the connection."
    relayed: bool = False
    "Relayed here by another process: never relay it again (refuse instead)."


@attrs.frozen(kw_only=True)
class Inbound:
    """A validated client event from the connection ``peer_id``."""

    peer_id: int
    frame: EventFrame


@attrs.frozen(kw_only=True)
class Detach:
    """The connection ``peer_id`` is gone (any close without ``session/leave``)."""

    peer_id: int


@attrs.frozen
class CursorsPending:
    """A connection left a cursor in the room's cursor mailbox: schedule a tick."""


@attrs.frozen(kw_only=True)
class Committed:
    """The persistence actor committed this room's intents up to ``mark``."""

    mark: int


@attrs.frozen(kw_only=True)
class WritesRejected:
    """The store refused some of this room's writes: they are lost, the room must restart."""

    mark: int
    "The highest intent number refused (an incarnation ignores its predecessors')."


@attrs.frozen(kw_only=True)
class LeaseLost:
    """Another process owns the room now (its lease was taken, or a commit was fenced):
    stop at once, and send the clients to resume there."""

    fence: int
    "The lease lost (an incarnation holding a newer one ignores it)."


@attrs.frozen
class Stop:
    """The registry agreed that an idle room may stop."""


@attrs.frozen
class Drain:
    """The server is shutting down: send clients away with a hint and flush."""


@attrs.frozen
class Crash:
    """Fault injection: make the room actor raise (tests and the simulation)."""


@attrs.frozen(kw_only=True)
class Inspect:
    """Report the room's state as it is now (tests and the simulation)."""

    reply: trio.MemorySendChannel[dict[str, Any] | None]


RoomMsg = (Attach | Inbound | CursorsPending | Detach | Committed | WritesRejected | LeaseLost
           | Stop | Drain | Crash | Inspect)

# Registry mailbox ----------------------------------------------------------


@attrs.frozen(kw_only=True)
class OpenSession:
    request: OpenRequest
    peer: Peer
    reply: trio.MemorySendChannel[SessionResult]
    relayed: bool = False
    "The connection was relayed here by another process."


@attrs.frozen(kw_only=True)
class RoomIdle:
    """A room with nobody connected and everything durable asks to stop."""

    code: str
    generation: int
    attaches: int
    "How many ``Attach`` messages it has taken; a stale count means one is in flight."


@attrs.frozen(kw_only=True)
class RoomExited:
    code: str
    generation: int


@attrs.frozen(kw_only=True)
class DrainRooms:
    done: trio.Event


@attrs.frozen(kw_only=True)
class CrashRoom:
    code: str


@attrs.frozen(kw_only=True)
class InspectRoom:
    code: str
    reply: trio.MemorySendChannel[dict[str, Any] | None]


@attrs.frozen(kw_only=True)
class QueryRooms:
    reply: trio.MemorySendChannel[dict[str, Any]]


RegistryMsg = (OpenSession | RoomIdle | RoomExited | DrainRooms | CrashRoom | InspectRoom
               | QueryRooms)

# Lease actor mailbox ---------------------------------------------------------


@attrs.frozen(kw_only=True)
class Hold:
    """A room claimed its lease: renew it with the others until :class:`Let` or lost."""

    code: str
    fence: int
    room: trio.MemorySendChannel[RoomMsg]
    "The room's mailbox (a clone the lease actor owns), told if the lease is lost."


@attrs.frozen(kw_only=True)
class Let:
    """A room stopped (its release is queued with its last writes): renew it no more."""

    code: str
    fence: int


LeaseMsg = Hold | Let
