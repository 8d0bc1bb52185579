"""Where rooms live when no actor holds them: the :class:`Store` protocol and its writes."""

from .base import (
    AppendEvent as AppendEvent,
    LogConnection as LogConnection,
    PutPresence as PutPresence,
    PutRoom as PutRoom,
    PutSeatToken as PutSeatToken,
    PutSnapshot as PutSnapshot,
    RoomRecord as RoomRecord,
    RoomStats as RoomStats,
    Store as Store,
    Write as Write,
)
from .memory import MemoryStore as MemoryStore
