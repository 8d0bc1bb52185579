"""The store seen by the server: durable rooms, journals and snapshots.

All writes go through :meth:`Store.commit`, one batch per transaction, issued
only by the persistence actor. Reads (:meth:`Store.load_room`) are issued by
a room actor when it starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import attrs

from ..room.events import Event

RoomStatus = Literal["active", "hibernating", "abandoned"]


@attrs.frozen(kw_only=True)
class AppendEvent:
    """Append one durable event to a room's journal."""

    code: str
    event: Event


@attrs.frozen(kw_only=True)
class PutSnapshot:
    """Replace a room's snapshot (``snapshot`` is the JSON of ``RoomState.snapshot()``)."""

    code: str
    sequence: int
    snapshot: bytes


@attrs.frozen(kw_only=True)
class PutRoom:
    """Create or update a room's row: status, activity time and epoch history."""

    code: str
    status: RoomStatus
    last_activity: int
    "Wall-clock milliseconds."
    epochs: tuple[tuple[int, int], ...]
    "``(epoch, first sequence)`` pairs, oldest first; the last one is current."
    host_id: str | None = None
    created: bool = False
    "A new room: replaces any abandoned room of the same code."


@attrs.frozen(kw_only=True)
class PutPresence:
    """A seat's connection state and when it was last seen (for operators and seat expiry)."""

    code: str
    member_id: str
    connected: bool
    at: int
    "Wall-clock milliseconds."


@attrs.frozen(kw_only=True)
class PutSeatToken:
    """A seat's resume token was rotated: the hashes a ``reconnect`` may present now.

    Not journaled (other members never see it); a room loaded from the store takes its
    seats' hashes from here rather than from the snapshot or the ``session/join`` event.
    """

    code: str
    member_id: str
    token_hash: str
    "The newest token, sent to the member once this write is durable."
    previous_hash: str
    "The token the member presented to resume: still valid until it uses the newest."


@attrs.frozen(kw_only=True)
class LogConnection:
    """A connection lifecycle record for ``connection_events`` (best-effort analytics)."""

    code: str
    user_id: str | None
    kind: str
    "``connect``, ``resume``, ``disconnect``, ``host-migrated``, ``kicked``, ..."
    at: int
    metadata: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class ReleaseLease:
    """Give up the room's lease (a drain, or an idle room stopping), if ``fence`` is still
    the lease's: any process may claim the room at once instead of after its expiry."""

    code: str
    fence: int


@attrs.frozen(kw_only=True)
class CheckLease:
    """Nothing to write: committed only if the room's fence is still its lease's. A room
    about to give an answer that only its owner may give (a token is not valid) sends
    this first: a room that lost its lease without noticing yet learns it instead."""

    code: str


Write = (AppendEvent | PutSnapshot | PutRoom | PutPresence | PutSeatToken | LogConnection
         | ReleaseLease | CheckLease)


@attrs.frozen(kw_only=True)
class Claimed:
    """This process owns the room now; its writes carry ``fence``."""

    fence: int
    takeover: bool
    "The lease was another process's, and had expired."
    previous: int | None
    "The lease's fence before this claim (``None``: nobody held it)."


@attrs.frozen(kw_only=True)
class HeldElsewhere:
    """Another process holds the room's lease and renewed it in time."""

    owner: str
    "Its node id."
    url: str | None
    "Where it can be reached (its advertised WebSocket URL)."
    remaining: float
    "Seconds until the lease expires unless it is renewed."


Claim = Claimed | HeldElsewhere


@attrs.frozen(kw_only=True)
class RoomRecord:
    """A room as the store holds it."""

    code: str
    status: RoomStatus
    last_activity: int
    epochs: tuple[tuple[int, int], ...]
    snapshot: bytes | None
    "Latest snapshot JSON, or ``None`` when the room has only a journal."
    journal: Sequence[Event]
    "Retained events in ``serverSequence`` order (at least every event after the snapshot)."
    last_seen: Mapping[str, int] = attrs.Factory(dict)
    "When each seat was last seen connected (wall-clock ms), where known."
    tokens: Mapping[str, tuple[str, str]] = attrs.Factory(dict)
    """Seat → ``(token hash, previous token hash)`` of its latest rotation, where one was
    recorded (``""``: no previous token)."""
    connected: frozenset[str] = frozenset()
    """Seats whose member the store last saw connected (its previous owner stopped
    before they left): for the others, ``last_seen`` is when they left."""


@attrs.frozen(kw_only=True)
class RoomStats:
    """One row of the ``room_stats`` view: rooms of one status."""

    status: RoomStatus
    rooms: int
    avg_age_seconds: float | None
    "Mean time since creation (``None`` where the store does not know it)."
    players_connected: int


class Store(Protocol):
    """Durable storage for rooms. Implementations must make ``commit`` atomic."""

    async def open(self) -> None:
        """Get ready (connect); called once before use."""
        ...

    async def load_room(self, code: str) -> RoomRecord | None:
        """The room's record, or ``None`` if the code was never used."""
        ...

    async def commit(self, writes: Sequence[Write], *,
                     fences: Mapping[str, int] | None = None) -> frozenset[str]:
        """Apply every write in one transaction, or none (raise ``StoreError``).

        With ``fences`` (room code → the fence of the lease its writer holds), the same
        transaction first checks each room's lease: the writes of a room whose fence is
        no longer the lease's are left out, and its code is returned (the room is
        *fenced*). The others commit.

        A batch may be retried after an error raised once it had committed (the
        connection failed before the acknowledgement): events already in the journal
        with the same ``serverSequence`` and ``eventId`` are skipped, so a retry never
        writes anything twice and never fails because of the first attempt.
        """
        ...

    async def claim(self, code: str, node: str, url: str | None, ttl: float) -> Claim:
        """Take room ``code``'s lease for ``node`` for ``ttl`` seconds, with a new fence:
        if nobody holds it, if its holder let it expire, or if ``node`` holds it already
        (a restarted room of the same process). Otherwise say who holds it."""
        ...

    async def renew(self, node: str, leases: Mapping[str, int], ttl: float) -> set[str]:
        """Extend ``node``'s leases (room code → fence) by ``ttl`` seconds, in one
        statement; the codes still held (a lease claimed by another since is not)."""
        ...

    async def relay_secret(self) -> str:
        """The secret every process shares to authenticate relayed connections."""
        ...

    async def abandon_idle(self, before: int) -> list[str]:
        """Mark rooms hibernating since before ``before`` (ms) abandoned; return their codes."""
        ...

    async def delete_abandoned(self, before: int) -> int:
        """Delete rooms abandoned since before ``before`` (ms), with their journals."""
        ...

    async def ping(self) -> None:
        """Raise ``StoreError`` if the store cannot be reached."""
        ...

    async def room_stats(self) -> list[RoomStats]:
        """Rooms by status, with their connected players (for operators)."""
        ...

    async def aclose(self) -> None: ...
