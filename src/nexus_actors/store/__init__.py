"""Where rooms live when no actor holds them: the :class:`Store` protocol and its writes."""

from .base import (
    AppendEvent as AppendEvent,
    Claim as Claim,
    Claimed as Claimed,
    HeldElsewhere as HeldElsewhere,
    LogConnection as LogConnection,
    PutPresence as PutPresence,
    PutRoom as PutRoom,
    PutSeatToken as PutSeatToken,
    PutSnapshot as PutSnapshot,
    ReleaseLease as ReleaseLease,
    RoomRecord as RoomRecord,
    RoomStats as RoomStats,
    Store as Store,
    Write as Write,
)
from .memory import MemoryStore as MemoryStore
