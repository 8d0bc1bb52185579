"""This client's copy of the room, kept from the server's frames (no I/O).

The copy is a :class:`~nexus_actors.room.state.RoomState` changed only by
:func:`nexus_actors.room.events.apply`, the server's own rules, so it is always
the server's state at :attr:`Replica.sequence`. Journaled events are applied
strictly in ``serverSequence`` order: one that arrives early (a member's own
events reach it only after they are committed, so others' later events can
come first) waits in a bounded buffer until the gap is filled. A gap that
lasts too long or a buffer that overflows is the session's cue to resume.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..room import events as ev
from ..room.state import RoomState
from .events import (
    ClientEvent,
    Cursor,
    CursorsMoved,
    Member,
    PresenceChanged,
    ResumeMode,
    Resynced,
    RoomEvent,
)


@attrs.define
class Replica:
    """One seat's view of one room: state, presence, cursors, events held behind a gap."""

    member_id: str
    "This seat (events it sent are ``mine``)."
    state: RoomState
    epoch: int
    chat_history: int
    "Chat messages the room keeps (the server's ``NEXUS_CHAT_HISTORY``)."
    max_held: int
    "Events that may wait behind a gap before the copy gives up on it."
    connected: dict[str, bool] = attrs.Factory(dict)
    cursors: dict[str, Cursor] = attrs.Factory(dict)
    overflowed: bool = False
    "More than ``max_held`` events waited behind a gap: resume to fill it."
    broken: bool = False
    "An event did not apply: this copy cannot be trusted; start over from a baseline."
    _held: dict[int, dict[str, Any]] = attrs.Factory(dict)
    _gap_since: float | None = None
    _session: dict[str, Any] | None = None
    "A resume's session frame, until its replay has been applied and checked."
    _replay_through: int = 0
    _presence_at: int = 0

    @classmethod
    def baseline(cls, member_id: str, session: dict[str, Any], *, chat_history: int,
                 max_held: int) -> Replica:
        replica = cls(member_id=member_id, state=RoomState.from_session(session),
                      epoch=session["epoch"], chat_history=chat_history, max_held=max_held)
        replica._presence(session)
        return replica

    # Views ---------------------------------------------------------------------

    @property
    def sequence(self) -> int:
        """The last ``serverSequence`` applied: what a resume sends as ``lastSeenSequence``."""
        return self.state.sequence

    def members(self) -> list[Member]:
        state = self.state
        return [Member(id=seat.id, name=seat.name, role=state.role_of(seat.id),
                       connected=self.connected.get(seat.id, False))
                for seat in state.seats.values()]

    def gap_since(self) -> float | None:
        """When the oldest event now waiting behind a gap arrived."""
        return self._gap_since

    # Session frames --------------------------------------------------------------

    def welcome(self, session: dict[str, Any], cursor: dict[str, Any]
                ) -> tuple[ResumeMode, int, list[ClientEvent]]:
        """A new connection's session frame and ``event-cursor``: keep our copy and expect
        a replay, or adopt the frame's state. Returns the mode, the number of events the
        replay will hold, and what to tell the application."""
        self._held.clear()
        self._gap_since = None
        self.overflowed = False
        self.cursors.clear()
        self._presence(session)
        self.epoch = session["epoch"]
        if (cursor["mode"] == "resume" and not self.broken
                and cursor["sequence"] == self.state.sequence):
            self._session = session
            self._replay_through = cursor["replayThrough"]
            return "resume", self._replay_through - self.state.sequence, self._check_replayed()
        self._adopt(session)
        return "baseline", 0, [Resynced(sequence=self.state.sequence, epoch=self.epoch)]

    def _adopt(self, session: dict[str, Any]) -> None:
        self.state = RoomState.from_session(session)
        self.broken = False
        self._session = None
        self._replay_through = 0

    def _presence(self, session: dict[str, Any]) -> None:
        self.connected = {p["id"]: p["connected"] for p in session["players"]}
        self._presence_at = session["sequence"]

    def _check_replayed(self) -> list[ClientEvent]:
        """Once a resume's replay is applied, our copy must equal the session frame's."""
        session = self._session
        if session is None or self.state.sequence < self._replay_through:
            return []
        self._session = None
        if self.state.client_view() == RoomState.from_session(session).client_view():
            return []
        self._adopt(session)
        return [Resynced(sequence=self.state.sequence, epoch=self.epoch)]

    # Events -------------------------------------------------------------------------

    def event(self, frame: dict[str, Any], now: float) -> list[ClientEvent]:
        """An ``event`` frame: a presence notice, or a journaled event applied in order."""
        data = frame["data"]
        name = data["name"]
        if "serverSequence" not in frame:
            return self._notice(name, data)
        sequence: int = frame["serverSequence"]
        if name == "session/join" and sequence > self._presence_at:
            # Presence follows arrival order, even for a join held behind a gap.
            self.connected[data["player"]["id"]] = True
        if sequence <= self.state.sequence or sequence in self._held:
            return []  # applied already (the replay overlapped live traffic)
        if len(self._held) >= self.max_held:
            self.overflowed = True
            return []
        self._held[sequence] = frame
        out: list[ClientEvent] = []
        while not self.broken and self.state.sequence + 1 in self._held:
            out.extend(self._apply(self._held.pop(self.state.sequence + 1)))
        if not self._held:
            self._gap_since = None
        elif self._gap_since is None or out:  # a new gap, or the old one moved on
            self._gap_since = now
        out.extend(self._check_replayed())
        return out

    def _notice(self, name: str, data: dict[str, Any]) -> list[ClientEvent]:
        if name not in ("session/connected", "session/disconnected"):
            return []
        member_id = data["uuid"]
        connected = name == "session/connected"
        self.connected[member_id] = connected
        if not connected:
            self.cursors.pop(member_id, None)
        return [PresenceChanged(member_id=member_id, connected=connected)]

    def _apply(self, frame: dict[str, Any]) -> list[ClientEvent]:
        data = dict(frame["data"])
        name = data.pop("name")
        event = ev.Event(sequence=frame["serverSequence"], name=name, data=data,
                         event_id=frame["eventId"], actor_id=frame.get("actorId"),
                         timestamp=frame.get("timestamp", 0))
        try:
            ev.apply(self.state, event, chat_history=self.chat_history)
        except (KeyError, ValueError, TypeError):
            self.broken = True
            return []
        if name in ("session/leave", "session/kicked"):
            member = data["uuid"] if name == "session/leave" else data["playerId"]
            self.connected.pop(member, None)
            self.cursors.pop(member, None)
        return [RoomEvent(name=name, data=data, sequence=event.sequence,
                          event_id=event.event_id, actor_id=event.actor_id,
                          timestamp=event.timestamp,
                          mine=event.actor_id == self.member_id,
                          replayed=event.sequence <= self._replay_through)]

    def cursors_frame(self, data: dict[str, Any]) -> CursorsMoved:
        moved = tuple(Cursor.from_wire(c) for c in data["cursors"])
        for cursor in moved:
            self.cursors[cursor.user_id] = cursor
        removed = tuple(data["removed"])
        for gone in removed:
            self.cursors.pop(gone, None)
        return CursorsMoved(cursors=moved, removed=removed)
