"""A session's logic without I/O: server frames in, client frames and events out.

The trio shell (:mod:`nexus_actors.client.session`) only moves bytes: it opens
connections to :meth:`SessionCore.query`, feeds each text message to
:meth:`~SessionCore.receive`, writes what :meth:`~SessionCore.take_frames`
returns, calls :meth:`~SessionCore.tick` at :meth:`~SessionCore.next_deadline`,
and asks :meth:`~SessionCore.closed` whether and how to reconnect. Time is
passed in, so every rule here can be tested with plain function calls.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any, Final, Literal
from urllib.parse import urlencode

import attrs
import orjson

from .backoff import ABNORMAL_CLOSURE, TERMINAL_CLOSE_CODES, may_retry
from .errors import Refused, SessionClosed, UnknownEntity
from .events import (
    ClientEvent,
    ConnectionQuality,
    EventAcked,
    EventRefused,
    Reconnected,
    ResumeMode,
    ServerError,
    TokenRotated,
    UpdateApplied,
    UpdateConfirmed,
    UpdateRolledBack,
)
from .optimistic import TABLES, Pending, Updates
from .options import Options
from .outbox import Entry, Outbox
from .quality import DISCONNECTED, Probe, from_ping
from .replica import Replica

log = logging.getLogger("nexus_actors.client")

Role = Literal["host", "player"]
SESSION_FRAMES: Final = frozenset({"session/created", "session/joined", "session/reconnected"})
RETRY_LATER: Final = frozenset({"overloaded", "unavailable"})
"Error codes for an event that was not applied and should be sent again later."


@attrs.frozen(kw_only=True)
class Target:
    """Whom to connect as: create a room, join one, or take a seat back with its token."""

    room: str | None = None
    name: str | None = None
    role: Role = "player"
    token: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.token is not None:
            if self.room is None:
                raise ValueError("resuming a seat needs its room code")
        elif self.name is None:
            raise ValueError("creating or joining a room needs a name")
        elif self.role == "player" and self.room is None:
            raise ValueError("joining as a player needs a room code")


@attrs.frozen(kw_only=True)
class Verdict:
    """What to do after a connection ended."""

    retry: bool
    immediate: bool
    "Reconnect at once, without backoff (the client itself asked to resume)."
    hint: float
    "Seconds the server asked to wait (``backoff`` frame), 0 if it did not say."
    close_code: int
    reason: str
    refusal: Refused | None
    "The server refused the connect request (an ``error`` before the session frame)."


def _seconds(milliseconds: Any) -> float:
    return max(0.0, float(milliseconds)) / 1000.0 if isinstance(milliseconds, int | float) else 0.0


@attrs.define
class SessionCore:
    """One seat's session across its connections."""

    target: Target
    options: Options
    new_id: Callable[[], str]
    "Fresh UUIDs for event, update and entity ids."
    outbox: Outbox = attrs.Factory(
        lambda self: Outbox(limit=self.options.outbox_limit, new_id=self.new_id),
        takes_self=True)
    updates: Updates = attrs.Factory(Updates)
    probe: Probe = attrs.Factory(Probe)
    replica: Replica | None = None
    room_code: str | None = None
    member_id: str | None = None
    token: str | None = None
    "The seat's secret resume token: the newest one the server gave (session frame or notice)."
    seated: bool = False
    "A session frame and its ``event-cursor`` arrived on the current connection."
    ended: bool = False
    quality: ConnectionQuality = DISCONNECTED
    resume_reason: str | None = None
    "Set when the session wants to reconnect now (a gap that did not fill)."
    _attempt: int = 0
    _welcome: dict[str, Any] | None = None
    _announce: Reconnected | None = None
    "Told once the resume's replay has been applied."
    _replay_end: int = 0
    _hint: float = 0.0
    _refusal: dict[str, Any] | None = None
    _resend_at: float | None = None
    _cursor: bytes | None = None
    _last_cursor: bytes | None = None
    _frames: list[bytes] = attrs.Factory(list)
    _events: list[ClientEvent] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        if self.target.token is not None:
            self.room_code = self.target.room
            self.token = self.target.token

    # Output -------------------------------------------------------------------------

    def take_frames(self) -> list[bytes]:
        """Client frames to send on the current connection, in order."""
        frames, self._frames = self._frames, []
        return frames

    def take_cursor(self) -> bytes | None:
        """The latest cursor update not sent yet (only while seated)."""
        if not self.seated:
            return None
        cursor, self._cursor = self._cursor, None
        return cursor

    def cursor_waiting(self) -> bool:
        """A cursor update waits for :meth:`take_cursor`."""
        return self.seated and self._cursor is not None

    def take_events(self) -> list[ClientEvent]:
        events, self._events = self._events, []
        return events

    def emit(self, event: ClientEvent) -> None:
        self._events.append(event)

    def _set_quality(self, quality: ConnectionQuality) -> None:
        self.quality = quality
        self.emit(quality)

    # Connections ----------------------------------------------------------------------

    def query(self) -> str:
        """The query string (``join=K7PX&name=Ana``) of the next connection."""
        params: dict[str, Any]
        if self.token is not None and self.room_code is not None:
            params = {"reconnect": self.room_code, "token": self.token}
            replica = self.replica
            if replica is not None and not replica.broken:
                params["lastSeenSequence"] = replica.sequence
                params["epoch"] = replica.epoch
        elif self.target.role == "host":
            params = {"host": self.target.room or "", "name": self.target.name}
        else:
            params = {"join": self.target.room, "name": self.target.name}
        return urlencode(params)

    def opened(self, attempt: int) -> None:
        """A new connection finished its WebSocket handshake (``attempt`` 0: the first)."""
        self._attempt = attempt
        self.seated = False
        self._welcome = None
        self._announce = None
        self._hint = 0.0
        self._refusal = None
        self._frames.clear()
        self.resume_reason = None

    def closed(self, close_code: int | None, reason: str) -> Verdict:
        """The connection ended (``close_code`` ``None``: no close frame, for ``reason``)."""
        was_seated = self.seated
        self.seated = False
        self._welcome = None
        self.probe.forget()
        if self.quality.status != "disconnected":
            self._set_quality(DISCONNECTED)
        code = close_code if close_code is not None else ABNORMAL_CLOSURE
        if self.resume_reason is not None:
            reason, self.resume_reason = self.resume_reason, None
            return Verdict(retry=True, immediate=True, hint=0.0, close_code=code,
                           reason=reason, refusal=None)
        refusal = None
        if self._refusal is not None and not was_seated:
            data = self._refusal
            hint = self._hint or _seconds(data.get("retryAfterMs"))
            refusal = Refused(str(data.get("message", "connect refused")),
                              code=str(data.get("code")), close_code=code,
                              retry_after=hint or None)
        retry = may_retry(code) and (refusal is None
                                     or refusal.code not in TERMINAL_CLOSE_CODES.values())
        if close_code is not None:
            reason = str(close_code)
        hint = self._hint
        if refusal is not None and refusal.retry_after is not None:
            hint = max(hint, refusal.retry_after)
        return Verdict(retry=retry, immediate=False, hint=hint, close_code=code,
                       reason=reason, refusal=refusal)

    # Frames from the server -----------------------------------------------------------

    def receive(self, text: bytes | str, now: float) -> None:
        """One text message from the server."""
        try:
            frame = orjson.loads(text)
            kind = frame["type"]
            data = frame["data"]
            handler = _HANDLERS.get(kind)
            if handler is not None and isinstance(data, dict):
                handler(self, frame, data, now)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignored a server frame that does not follow protocol v1: %.200r",
                        text, exc_info=True)

    def _on_event(self, frame: dict[str, Any], data: dict[str, Any], now: float) -> None:
        if "serverSequence" not in frame and data["name"] in SESSION_FRAMES:
            self._welcome = data
            self.room_code = data["roomCode"]
            self.member_id = data["uuid"]
            self._keep_token(data["token"])
            return
        if "serverSequence" not in frame and data["name"] == "session/token":
            self._keep_token(data["token"])  # rotated by the last reconnect, now durable
            return
        replica = self.replica
        if replica is None or not self.seated:
            return
        events = replica.event(frame, now)
        self._events.extend(events)
        if events:
            self.updates.prune(replica.state)
        self._after_replica(replica)

    def _keep_token(self, token: str) -> None:
        """Keep the newest token the server gave: the next resume presents it."""
        if token != self.token:
            if self.token is not None:
                self.emit(TokenRotated(token=token))
            self.token = token

    def _after_replica(self, replica: Replica) -> None:
        if replica.broken:
            self.resume_reason = "inconsistent"
        elif replica.overflowed:
            self.resume_reason = "gap"
        if self._announce is not None and replica.sequence >= self._replay_end:
            self.emit(self._announce)
            self._announce = None

    def _on_cursor(self, frame: dict[str, Any], data: dict[str, Any], now: float) -> None:
        session, self._welcome = self._welcome, None
        if session is None or self.member_id is None:
            return
        options = self.options
        mode: ResumeMode
        if self.replica is None or self.replica.member_id != self.member_id:
            self.replica = Replica.baseline(self.member_id, session,
                                            chat_history=options.chat_history,
                                            max_held=options.max_held)
            mode, replayed = "baseline", 0
        else:
            mode, replayed, events = self.replica.welcome(session, data)
            self._events.extend(events)
            if mode == "baseline":
                self.updates.forget_rebased()
        self.seated = True
        if self._attempt > 0:
            self._announce = Reconnected(attempt=self._attempt, mode=mode, replayed=replayed)
            self._replay_end = data["replayThrough"] if mode == "resume" else 0
            self._after_replica(self.replica)
        self._frames.extend(entry.frame() for entry in self.outbox)
        self._resend_at = None
        self._frames.append(self.probe.ping(now))
        if self._cursor is None:
            self._cursor = self._last_cursor

    def _on_ack(self, frame: dict[str, Any], data: dict[str, Any], now: float) -> None:
        if self.outbox.settle(data["eventId"]) is not None:
            self.emit(EventAcked(event_id=data["eventId"], sequence=data["serverSequence"],
                                 duplicate=bool(data.get("duplicate"))))

    def _on_confirmed(self, frame: dict[str, Any], data: dict[str, Any], now: float) -> None:
        entry = self.outbox.settle(data["eventId"])
        if self.updates.settle(data["updateId"]) is not None:
            self.emit(UpdateConfirmed(update_id=data["updateId"], event_id=data["eventId"],
                                      sequence=data["serverSequence"],
                                      version=data.get("version")))
        elif entry is not None:  # after its timeout rolled it back: the event's own answer
            self.emit(EventAcked(event_id=entry.event_id, sequence=data["serverSequence"],
                                 duplicate=bool(data.get("duplicate"))))

    def _on_rejected(self, frame: dict[str, Any], data: dict[str, Any], now: float) -> None:
        entry = self.outbox.settle(data["eventId"])
        current = data.get("current")
        reason = str(data.get("reason") or data.get("code"))
        pending = self.updates.reject(data["updateId"], current)
        if pending is not None:
            if self.replica is not None:
                self.updates.prune(self.replica.state)
            self._rolled_back(pending, reason, data.get("currentVersion"), current)
        elif entry is not None:  # after its timeout rolled it back: the event's own answer
            detail = {k: v for k, v in data.items()
                      if k not in ("eventId", "updateId", "reason", "message")}
            self.emit(EventRefused(event_id=entry.event_id, name=entry.name, code=reason,
                                   message=str(data.get("message", "")), detail=detail))

    def _rolled_back(self, pending: Pending, reason: str, current_version: Any,
                     current: Any) -> None:
        self.emit(UpdateRolledBack(
            update_id=pending.update_id, event_id=pending.event_id,
            entity_id=pending.entity_id, reason=reason,
            current_version=current_version if isinstance(current_version, int) else None,
            current=current if isinstance(current, dict) else None))

    def _on_error(self, frame: dict[str, Any], data: dict[str, Any], now: float) -> None:
        code = str(data["code"])
        detail = {k: v for k, v in data.items() if k not in ("code", "message", "eventId")}
        message = str(data.get("message", ""))
        if not self.seated:
            self._refusal = data
            return
        entry = self.outbox.get(data["eventId"]) if "eventId" in data else None
        if entry is None:
            if code == "rate-limited":  # dropped messages get no answer: send them again
                self._resend_later(now + _seconds(data.get("retryAfterMs")))
            if code != "superseded":  # the close that follows ends the session
                self.emit(ServerError(code=code, message=message, detail=detail))
            return
        if code in RETRY_LATER:
            self._resend_later(now + _seconds(data.get("retryAfterMs")))
            return
        self.outbox.settle(entry.event_id)
        pending = self.updates.settle(entry.update_id) if entry.update_id is not None else None
        if pending is not None:
            self._rolled_back(pending, code, data.get("currentVersion"), data.get("current"))
        else:
            self.emit(EventRefused(event_id=entry.event_id, name=entry.name, code=code,
                                   message=message, detail=detail))

    def _resend_later(self, when: float) -> None:
        self._resend_at = when if self._resend_at is None else max(self._resend_at, when)

    def _on_cursors(self, frame: dict[str, Any], data: dict[str, Any], now: float) -> None:
        if self.replica is not None and self.seated:
            self.emit(self.replica.cursors_frame(data))

    def _on_ping(self, frame: dict[str, Any], data: dict[str, Any], now: float) -> None:
        self._set_quality(from_ping(data))

    def _on_heartbeat(self, frame: dict[str, Any], data: dict[str, Any], now: float) -> None:
        quality = self.probe.pong(data, now) if data.get("kind") == "pong" else None
        if quality is not None:
            self._set_quality(quality)

    def _on_backoff(self, frame: dict[str, Any], data: dict[str, Any], now: float) -> None:
        self._hint = _seconds(data.get("retryAfterMs"))

    # Timers ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (trio time)."""
        deadlines = [self.updates.next_deadline(), self._resend_at]
        gap = (self.replica.gap_since() if self.replica is not None and self.seated
               and self.resume_reason is None else None)
        if gap is not None:
            deadlines.append(gap + self.options.gap_timeout)
        return min((d for d in deadlines if d is not None), default=None)

    def tick(self, now: float) -> None:
        """Roll back updates that waited too long, resume on a stale gap, resend."""
        for pending in self.updates.expire(now):
            self._rolled_back(pending, "timeout", None, None)
        if self.seated and self.replica is not None:
            gap = self.replica.gap_since()
            if gap is not None and now >= gap + self.options.gap_timeout:
                self.resume_reason = "gap"
        if self._resend_at is not None and now >= self._resend_at:
            self._resend_at = None
            if self.seated:
                self._frames.extend(entry.frame() for entry in self.outbox)

    # Sending --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.ended:
            raise SessionClosed("the session has ended")

    def send(self, name: str, data: dict[str, Any]) -> Entry:
        """Queue a durable event (raises ``OutboxFull`` when too many wait for answers)."""
        self._check_open()
        entry = self.outbox.add(name, data)
        if self.seated:
            self._frames.append(entry.frame())
        return entry

    def update(self, name: str, kind: str, entity_id: str, fields: dict[str, Any],
               changes: dict[str, Any], *, force: bool, now: float) -> Entry:
        """An optimistic update of one entity: shown at once, sent with ``version`` (unless
        ``force``: last write wins) and an ``updateId``."""
        self._check_open()
        assert self.replica is not None
        table = TABLES[kind]
        state = self.replica.state
        previous = self.updates.entity(state, table, entity_id)
        if previous is None:
            raise UnknownEntity(kind, entity_id)
        update_id = self.new_id()
        data = {f"{kind}Id": entity_id, **fields, "updateId": update_id}
        if not force:
            data["version"] = previous["version"]
        entry = self.outbox.add(name, data, update_id=update_id)
        self.updates.add(Pending(update_id=update_id, event_id=entry.event_id, name=name,
                                 table=table, entity_id=entity_id, changes=changes,
                                 version=previous["version"] + 1,
                                 deadline=now + self.options.update_timeout))
        shown = self.updates.entity(state, table, entity_id)
        assert shown is not None
        self.emit(UpdateApplied(update_id=update_id, event_id=entry.event_id, name=name,
                                entity_id=entity_id, value=copy.deepcopy(shown),
                                previous=copy.deepcopy(previous)))
        if self.seated:
            self._frames.append(entry.frame())
        return entry

    def cursor(self, scene_id: str, x: float, y: float) -> None:
        """Report this member's pointer; only the latest position is sent."""
        self._check_open()
        self._cursor = self._last_cursor = orjson.dumps({"type": "event", "data": {
            "name": "cursor/update", "sceneId": scene_id, "position": {"x": x, "y": y}}})


Handler = Callable[[SessionCore, dict[str, Any], dict[str, Any], float], None]

_HANDLERS: Final[dict[str, Handler]] = {
    "event": SessionCore._on_event,
    "event-cursor": SessionCore._on_cursor,
    "event-ack": SessionCore._on_ack,
    "update-confirmed": SessionCore._on_confirmed,
    "update-rejected": SessionCore._on_rejected,
    "error": SessionCore._on_error,
    "cursors": SessionCore._on_cursors,
    "ping": SessionCore._on_ping,
    "heartbeat": SessionCore._on_heartbeat,
    "backoff": SessionCore._on_backoff,
}
