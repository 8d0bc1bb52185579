"""What a session tells the application: one frozen class per kind of event.

Every class has a ``kind`` (the name used in ``docs/client.md``) so an
application can dispatch on the type or on the name. Dictionaries inside
events are the session's own data: read them, do not change them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs

Status = Literal["excellent", "good", "fair", "poor", "disconnected"]
ResumeMode = Literal["resume", "baseline"]


@attrs.frozen(kw_only=True)
class Cursor:
    """Another member's pointer."""

    user_id: str
    user_name: str
    scene_id: str
    x: float
    y: float

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Cursor:
        position = data["position"]
        return cls(user_id=data["userId"], user_name=data["userName"],
                   scene_id=data["sceneId"], x=position["x"], y=position["y"])


@attrs.frozen(kw_only=True)
class Member:
    """A seat in the room, as this client knows it."""

    id: str
    name: str
    role: Literal["host", "co-host", "player"]
    connected: bool


# The room ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RoomEvent:
    """A journaled room event, applied to the session's state in ``serverSequence`` order."""

    kind: ClassVar[str] = "event"
    name: str
    "``token/move``, ``session/join``, ..."
    data: dict[str, Any]
    "The normalized payload (``data`` without ``name``)."
    sequence: int
    event_id: str
    actor_id: str | None
    "The member whose request caused it; ``None`` for the server's own events."
    timestamp: int
    "Server wall-clock milliseconds when it was applied."
    mine: bool
    "Sent by this seat."
    replayed: bool
    "Missed while disconnected and replayed on resume."


@attrs.frozen(kw_only=True)
class PresenceChanged:
    """A member's connection came or went (its seat stays)."""

    kind: ClassVar[str] = "presence"
    member_id: str
    connected: bool


@attrs.frozen(kw_only=True)
class CursorsMoved:
    """Other members' cursors that moved or disappeared since the last tick."""

    kind: ClassVar[str] = "cursors"
    cursors: tuple[Cursor, ...]
    removed: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Resynced:
    """The state was replaced by the server's (a resume that could not replay): redraw."""

    kind: ClassVar[str] = "resynced"
    sequence: int
    epoch: int


# Your own events ----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class EventAcked:
    """A durable event of this seat is committed on the server."""

    kind: ClassVar[str] = "ack"
    event_id: str
    sequence: int
    duplicate: bool
    "The server had applied it already (a resend after a reconnect)."


@attrs.frozen(kw_only=True)
class EventRefused:
    """A durable event was refused by the room (permissions, ids, rules); nothing applied."""

    kind: ClassVar[str] = "refused"
    event_id: str
    name: str
    code: str
    message: str
    detail: dict[str, Any]


@attrs.frozen(kw_only=True)
class UpdateApplied:
    """An optimistic update is shown locally, before the server has answered."""

    kind: ClassVar[str] = "applied"
    update_id: str
    event_id: str
    name: str
    "``token/move``, ``token/update``, ``scene/update`` or ``character/update``."
    entity_id: str
    value: dict[str, Any]
    "The entity as now shown."
    previous: dict[str, Any]
    "The entity as shown before."


@attrs.frozen(kw_only=True)
class UpdateConfirmed:
    """The server committed an optimistic update."""

    kind: ClassVar[str] = "confirmed"
    update_id: str
    event_id: str
    sequence: int
    version: int | None


@attrs.frozen(kw_only=True)
class UpdateRolledBack:
    """An optimistic update is no longer shown: the state shows the server's value again.

    ``reason`` is the server's (``version-conflict``, ``forbidden``, ``not-found``,
    ``invalid``, ...) or ``timeout`` when no answer came in time. A rejected update
    was not applied. A timed-out one stays in the outbox and may still be applied
    by the server later; it then arrives as an ordinary :class:`RoomEvent`.
    """

    kind: ClassVar[str] = "rolled-back"
    update_id: str
    event_id: str
    entity_id: str
    reason: str
    current_version: int | None
    "The entity's version on the server (rejections only)."
    current: dict[str, Any] | None
    "The entity as the server has it (rejections only): what the state now shows."


# The connection -------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ConnectionQuality:
    """Round-trip latency (milliseconds) and its grade; ``disconnected`` while away."""

    kind: ClassVar[str] = "quality"
    latency: float | None
    status: Status


@attrs.frozen(kw_only=True)
class TokenRotated:
    """The server gave this seat a new resume token (after each reconnect); the old one
    stops working once the new one is used. Store it wherever you keep the token."""

    kind: ClassVar[str] = "token"
    token: str


@attrs.frozen(kw_only=True)
class Reconnecting:
    """The connection was lost; attempt ``attempt`` starts in ``next_attempt_in`` seconds."""

    kind: ClassVar[str] = "reconnecting"
    attempt: int
    next_attempt_in: float
    reason: str
    "Why the last connection ended: a close code (``1012``), ``dropped``, ``idle``, ``gap``."


@attrs.frozen(kw_only=True)
class Reconnected:
    """The seat was taken back; unanswered events have been sent again."""

    kind: ClassVar[str] = "reconnected"
    attempt: int
    mode: ResumeMode
    "``resume``: the missed events were replayed; ``baseline``: the state was replaced."
    replayed: int
    "Missed events replayed."


@attrs.frozen(kw_only=True)
class ReconnectionFailed:
    """Reconnecting gave up; the session has ended."""

    kind: ClassVar[str] = "reconnection-failed"
    attempts: int
    code: str
    "``attempts-exhausted``, or the server's refusal (``invalid-token``, ``room-not-found``)."
    message: str


@attrs.frozen(kw_only=True)
class SessionEnded:
    """The server closed the connection for good (left, kicked, superseded); no retry."""

    kind: ClassVar[str] = "ended"
    close_code: int
    reason: str


@attrs.frozen(kw_only=True)
class ServerError:
    """An ``error`` frame about no event of this seat (``rate-limited``, ``invalid-json``)."""

    kind: ClassVar[str] = "error"
    code: str
    message: str
    detail: dict[str, Any]


ClientEvent = (RoomEvent | PresenceChanged | CursorsMoved | Resynced | EventAcked
               | EventRefused | UpdateApplied | UpdateConfirmed | UpdateRolledBack
               | ConnectionQuality | TokenRotated | Reconnecting | Reconnected
               | ReconnectionFailed | SessionEnded | ServerError)
"Everything :meth:`~nexus_actors.client.Session.events` yields."
