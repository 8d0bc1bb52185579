"""A Python client for protocol v1 on Trio: one seat in one room, kept across connections.

``async with connect(url, room=..., name=..., role=...) as session`` takes a seat;
``session.events()`` tells what happens; ``session.state`` is the room to draw.
See ``docs/client.md``.
"""

from .backoff import Backoff as Backoff
from .connect import connect as connect
from .errors import (
    ClientError as ClientError,
    ConnectFailed as ConnectFailed,
    EventsLagged as EventsLagged,
    OutboxFull as OutboxFull,
    Refused as Refused,
    SessionClosed as SessionClosed,
    UnknownEntity as UnknownEntity,
)
from .events import (
    ClientEvent as ClientEvent,
    ConnectionQuality as ConnectionQuality,
    Cursor as Cursor,
    CursorsMoved as CursorsMoved,
    EventAcked as EventAcked,
    EventRefused as EventRefused,
    Member as Member,
    PresenceChanged as PresenceChanged,
    Reconnected as Reconnected,
    Reconnecting as Reconnecting,
    ReconnectionFailed as ReconnectionFailed,
    Resynced as Resynced,
    RoomEvent as RoomEvent,
    ServerError as ServerError,
    SessionEnded as SessionEnded,
    TokenRotated as TokenRotated,
    UpdateApplied as UpdateApplied,
    UpdateConfirmed as UpdateConfirmed,
    UpdateRolledBack as UpdateRolledBack,
)
from .options import Options as Options
from .runner import Opener as Opener
from .session import (
    Created as Created,
    Sent as Sent,
    Session as Session,
    UpdateSent as UpdateSent,
)
