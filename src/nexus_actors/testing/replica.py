"""A client's copy of a room, kept from the frames the server sends.

It does what protocol v1 asks of a client (``docs/protocol.md``, "What a client
must do"): adopt the session frame's state on a baseline; on a resume keep its
own state and apply the replay; apply journaled events strictly in
``serverSequence`` order, holding later ones until a gap is filled (a
sender's own events arrive with its acks, after others' later events); track
presence and remote cursors. Anything the server sends that a correct client
could not reconcile raises :class:`Inconsistent`: the simulation treats that
as a failed invariant.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..room import events as ev
from ..room.state import RoomState


class Inconsistent(AssertionError):
    """The server sent something a correct client cannot reconcile."""


@attrs.define
class Replica:
    """One client's view of one room."""

    code: str
    chat_history: int
    state: RoomState | None = None
    epoch: int = 0
    connected: dict[str, bool] = attrs.Factory(dict)
    "Presence of every seat, as the client was told."
    cursors: dict[str, tuple[str, float, float]] = attrs.Factory(dict)
    "Other members' cursors: ``userId`` → ``(sceneId, x, y)``."
    history: dict[int, str] = attrs.Factory(dict)
    "``serverSequence`` → ``eventId`` of every event applied in this epoch."
    _held: dict[int, dict[str, Any]] = attrs.Factory(dict)
    _session: dict[str, Any] | None = None
    _replay_through: int | None = None
    _presence_at: int = 0
    "Sequence of the last session frame, whose member list gave presence."

    @property
    def applied(self) -> int:
        return self.state.sequence if self.state is not None else 0

    # Frames --------------------------------------------------------------

    def session(self, data: dict[str, Any]) -> None:
        """A ``session/created|joined|reconnected`` frame: wait for its event-cursor."""
        self._session = data
        self._presence_at = data["sequence"]
        self.connected = {p["id"]: p["connected"] for p in data["players"]}
        self.cursors.clear()

    def cursor_mode(self, data: dict[str, Any]) -> None:
        """``event-cursor``: adopt the session's state, or keep ours and expect a replay."""
        session = self._session
        if session is None:
            raise Inconsistent("event-cursor without a session frame")
        self._held.clear()
        if data["mode"] == "baseline" or self.state is None:
            if data["mode"] == "resume":
                raise Inconsistent("resume mode for a client that has no state")
            self.state = RoomState.from_session(session)
            self.epoch = session["epoch"]
            self.history = {}
            if data["sequence"] != session["sequence"]:
                raise Inconsistent(f"baseline at {data['sequence']} for a state at "
                                   f"{session['sequence']}")
            self._replay_through = None
            self._session = None
            return
        if data["sequence"] != self.applied:
            raise Inconsistent(f"replay from {data['sequence']} but the client applied "
                               f"{self.applied}")
        self.epoch = session["epoch"]
        self._replay_through = data["replayThrough"]
        self._check_replayed()

    def event(self, frame: dict[str, Any]) -> None:
        """An ``event`` frame: journaled (applied in order) or a presence notice."""
        data = frame["data"]
        if "serverSequence" not in frame:
            name = data["name"]
            if name == "session/connected":
                self.connected[data["uuid"]] = True
            elif name == "session/disconnected":
                self.connected[data["uuid"]] = False
                self.cursors.pop(data["uuid"], None)
            return
        if self.state is None or (self._session is not None and self._replay_through is None):
            raise Inconsistent(f"event {frame['serverSequence']} before the event-cursor")
        sequence = frame["serverSequence"]
        if data["name"] == "session/join" and sequence > self._presence_at:
            # Presence follows arrival order: a notice that the new member went away
            # may arrive while its join is held behind a gap, and must win. Joins the
            # session frame already covers (a replay) do not change presence.
            self.connected[data["player"]["id"]] = True
        if sequence <= self.applied:
            if self.history.get(sequence, frame["eventId"]) != frame["eventId"]:
                raise Inconsistent(f"event {sequence} was {self.history[sequence]}, now "
                                   f"{frame['eventId']}")
            return  # seen already (a replay overlapping what arrived live)
        self._held[sequence] = frame
        while self.applied + 1 in self._held:
            self._apply(self._held.pop(self.applied + 1))
        self._check_replayed()

    def _apply(self, frame: dict[str, Any]) -> None:
        assert self.state is not None
        data = dict(frame["data"])
        name = data.pop("name")
        event = ev.Event(sequence=frame["serverSequence"], name=name, data=data,
                         event_id=frame["eventId"], actor_id=frame["actorId"],
                         timestamp=frame["timestamp"])
        try:
            ev.apply(self.state, event, chat_history=self.chat_history)
        except (KeyError, ValueError) as exc:
            raise Inconsistent(f"event {event.sequence} ({name}) does not apply: {exc!r}"
                               ) from exc
        self.history[event.sequence] = event.event_id
        if name in ("session/leave", "session/kicked"):
            member: str = data["uuid"] if name == "session/leave" else data["playerId"]
            self.connected.pop(member, None)
            self.cursors.pop(member, None)

    def _check_replayed(self) -> None:
        """Once a resume's replay is applied, our state must be the session frame's."""
        if self._replay_through is None or self.applied < self._replay_through:
            return
        assert self.state is not None
        assert self._session is not None
        expected = RoomState.from_session(self._session).client_view()
        if self.state.client_view() != expected:
            raise Inconsistent("after the replay the client's state differs from the "
                               "session frame's")
        self._session = None
        self._replay_through = None

    def cursors_frame(self, data: dict[str, Any]) -> None:
        for cursor in data["cursors"]:
            position = cursor["position"]
            self.cursors[cursor["userId"]] = (cursor["sceneId"], position["x"], position["y"])
        for gone in data["removed"]:
            self.cursors.pop(gone, None)

    @property
    def settled(self) -> bool:
        """No held events and no replay in progress."""
        return not self._held and self._session is None
