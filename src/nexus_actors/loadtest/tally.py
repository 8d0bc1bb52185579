"""What the simulated players saw, counted from their sessions' events (no I/O).

Every number in the report comes from here. Time is passed in (trio's clock,
one process, seconds), so the rules can be tested with plain function calls.

- **Cursor latency**: a player's cursor position carries its send time (``x``,
  milliseconds since :attr:`Tally.origin`); a receiver counts each position of
  each sender once, the first time it sees it, and ignores one it has seen or
  an older one (a resent last position after a reconnect).
- **Acknowledgements**: a move is answered by ``confirmed`` or ``ack``, by its
  own event applied to the sender's copy (an answer that came after the
  client's update timeout), or by a refusal. What no answer reached at the end
  is read from the session's outbox (``Session.unanswered``): those are lost.
- **Duplicates**: an event applied twice to one player's copy (a sequence at or
  below the last one applied) or journaled twice (one event id at two
  sequences in one room).
- **Reconnections**: from the first ``reconnecting`` after a lost connection to
  ``reconnected`` (succeeded) or ``reconnection-failed``.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

import attrs

from ..client import (
    ClientEvent,
    CursorsMoved,
    EventAcked,
    EventRefused,
    Reconnected,
    Reconnecting,
    ReconnectionFailed,
    Resynced,
    RoomEvent,
    ServerError,
    SessionEnded,
    UpdateApplied,
    UpdateConfirmed,
    UpdateRolledBack,
)
from .histogram import Histogram


@attrs.define
class PlayerTally:
    """One simulated player's own bookkeeping."""

    room: int
    sending: deque[float] = attrs.Factory(deque)
    """When each move was sent whose ``applied`` event has not been read yet (a session
    emits one per move, in order, before any answer to it)."""
    outstanding: dict[str, float] = attrs.Factory(dict)
    "Moves sent and not answered yet: event id → when it was sent."
    timed_out: set[str] = attrs.Factory(set)
    """Outstanding moves the client rolled back for its update timeout: the server's answer
    to those may come without an event (a late refusal)."""
    last_sequence: int = 0
    "The last ``serverSequence`` applied to this player's copy."
    cursors_seen: dict[str, float] = attrs.Factory(dict)
    "Sender member id → the newest position (its send time, ms) seen from it."
    reconnecting_since: float | None = None
    "When the connection was lost, while reconnecting."

    def waiting(self) -> bool:
        """Some move's answer is still to come as an event (timed-out moves aside: the
        answer to those may come without one)."""
        return bool(self.sending) or not self.outstanding.keys() <= self.timed_out


@attrs.define
class Tally:
    """Counts and latencies over the whole run."""

    origin: float
    "Trio time that cursor positions count from."
    sessions_opened: int = 0
    connect_failures: Counter[str] = attrs.Factory(Counter)
    "Sessions that could not be seated, by reason (the server's code, or the set-up's)."
    cursors_sent: int = 0
    cursors_expected: int = 0
    "Positions the other seated members of the sender's room should each have received."
    cursors_received: int = 0
    cursor_latency: Histogram = attrs.Factory(Histogram)
    "Milliseconds from a position's sending to its receipt, one per position received."
    moves_sent: int = 0
    acked: int = 0
    rejected: Counter[str] = attrs.Factory(Counter)
    "Moves the server refused, by reason (``version-conflict``, ...)."
    timeouts: int = 0
    "Moves rolled back by the client's update timeout (still waiting for an answer)."
    ack_latency: Histogram = attrs.Factory(Histogram)
    "Milliseconds from a move's sending to its acknowledgement."
    duplicates: int = 0
    reconnects_attempted: int = 0
    reconnects_succeeded: int = 0
    reconnects_failed: int = 0
    reconnect_time: Histogram = attrs.Factory(Histogram)
    "Milliseconds from a lost connection to the seat being back."
    cuts: int = 0
    "Connections cut by the churn."
    host_migrations: int = 0
    resyncs: int = 0
    "Resumes that could not replay and replaced the state."
    ended: Counter[str] = attrs.Factory(Counter)
    "Sessions that ended before the end of the run, by reason."
    errors: Counter[str] = attrs.Factory(Counter)
    "Server errors about none of a player's events (``rate-limited``, ...) and send errors."
    lagged: int = 0
    "Events a player read too slowly and that were dropped from its stream."
    tick_lag: Histogram = attrs.Factory(Histogram)
    """Milliseconds each room's sending round started after it was due: the generator's own
    lateness (a busy generator shows here, and in every latency)."""
    lost: int = 0
    "Durable events still without any answer from the server at the end."
    unreported: int = 0
    """Moves the server answered (they left the outbox) without the session reporting how:
    0 with this client, which reports an answer after the update timeout as ``ack`` or
    ``refused``; kept as a check of that."""
    _room_events: dict[int, dict[str, int]] = attrs.Factory(dict)
    "Room → event id → the sequence it was applied at."

    # Across processes ---------------------------------------------------------------------

    def to_data(self) -> dict[str, Any]:
        """Every count and latency, as JSON-ready data (for :meth:`merge` in another
        process); what only the run itself needs (the origin, the room journals) is left
        out."""
        data: dict[str, Any] = {}
        for field in _MERGED:
            value = getattr(self, field.name)
            if isinstance(value, Histogram):
                data[field.name] = {str(bucket): n for bucket, n in value.counts.items()}
            elif isinstance(value, Counter):
                data[field.name] = dict(value)
            else:
                data[field.name] = value
        return data

    def merge(self, data: dict[str, Any]) -> None:
        """Add the counts of another process's tally (:meth:`to_data`) to this one."""
        for field in _MERGED:
            value = getattr(self, field.name)
            theirs = data[field.name]
            if isinstance(value, Histogram):
                for bucket, n in theirs.items():
                    value.counts[int(bucket)] += n
                    value.count += n
            elif isinstance(value, Counter):
                value.update(theirs)
            else:
                setattr(self, field.name, value + theirs)

    def clock_ms(self, now: float) -> float:
        """Milliseconds since :attr:`origin`: what a cursor position carries."""
        return (now - self.origin) * 1000.0

    # What the players did ------------------------------------------------------------------

    def opened(self) -> None:
        self.sessions_opened += 1

    def connect_failed(self, reason: str, count: int = 1) -> None:
        self.connect_failures[reason] += count

    def cursor_sent(self, others: int) -> None:
        """A player sent a position that ``others`` members of its room should receive."""
        self.cursors_sent += 1
        self.cursors_expected += others

    def sending_move(self, player: PlayerTally, now: float) -> None:
        """A player is about to send a move (its ``applied`` event tells its id)."""
        player.sending.append(now)

    def move_sent(self) -> None:
        self.moves_sent += 1

    def move_not_sent(self, player: PlayerTally, code: str) -> None:
        """The move could not be queued (``outbox-full``, ...): no ``applied`` will come."""
        player.sending.pop()
        self.send_failed(code)

    def tick(self, due: float, now: float) -> None:
        """A room's sending round due at ``due`` started at ``now``."""
        self.tick_lag.add(max(0.0, now - due) * 1000.0)

    def send_failed(self, code: str) -> None:
        self.errors[f"send: {code}"] += 1

    def finish(self, player: PlayerTally, unanswered: int) -> None:
        """The run is over: ``unanswered`` durable events of this player's session never got
        an answer (``Session.unanswered``)."""
        self.lost += unanswered
        self.unreported += max(0, len(player.outstanding) - unanswered)

    # What the players saw -------------------------------------------------------------------

    def on_event(self, player: PlayerTally, event: ClientEvent, now: float) -> None:
        """One event from a player's session, read at trio time ``now``."""
        match event:
            case CursorsMoved():
                self._cursors(player, event, now)
            case UpdateApplied(event_id=event_id):
                player.outstanding[event_id] = (player.sending.popleft() if player.sending
                                                else now)
            case UpdateConfirmed(event_id=event_id) | EventAcked(event_id=event_id):
                self._acked(player, event_id, now)
            case RoomEvent():
                self._applied(player, event, now)
            case UpdateRolledBack(event_id=event_id, reason=reason):
                if reason == "timeout":
                    self.timeouts += 1
                    if event_id in player.outstanding:
                        player.timed_out.add(event_id)
                elif self._answered(player, event_id):
                    self.rejected[reason] += 1
            case EventRefused(event_id=event_id, code=code):
                if self._answered(player, event_id):
                    self.rejected[code] += 1
            case Reconnecting():
                if player.reconnecting_since is None:
                    self.reconnects_attempted += 1
                    player.reconnecting_since = now
            case Reconnected():
                if player.reconnecting_since is not None:
                    self.reconnects_succeeded += 1
                    self.reconnect_time.add((now - player.reconnecting_since) * 1000.0)
                    player.reconnecting_since = None
            case ReconnectionFailed(code=code):
                if player.reconnecting_since is not None:
                    self.reconnects_failed += 1
                    player.reconnecting_since = None
                self.ended[code] += 1
            case SessionEnded(reason=reason):
                self.ended[reason] += 1
            case Resynced(sequence=sequence):
                self.resyncs += 1
                player.last_sequence = sequence
            case ServerError(code=code):
                self.errors[code] += 1

    def _cursors(self, player: PlayerTally, event: CursorsMoved, now: float) -> None:
        received = self.clock_ms(now)
        seen = player.cursors_seen
        for cursor in event.cursors:
            last = seen.get(cursor.user_id)
            if last is not None and cursor.x <= last:
                continue
            seen[cursor.user_id] = cursor.x
            self.cursors_received += 1
            self.cursor_latency.add(received - cursor.x)

    @staticmethod
    def _answered(player: PlayerTally, event_id: str) -> bool:
        player.timed_out.discard(event_id)
        return player.outstanding.pop(event_id, None) is not None

    def _acked(self, player: PlayerTally, event_id: str, now: float) -> None:
        sent = player.outstanding.get(event_id)
        if self._answered(player, event_id) and sent is not None:
            self.acked += 1
            self.ack_latency.add((now - sent) * 1000.0)

    def _applied(self, player: PlayerTally, event: RoomEvent, now: float) -> None:
        if event.sequence <= player.last_sequence:
            self.duplicates += 1
            return
        player.last_sequence = event.sequence
        journal = self._room_events.setdefault(player.room, {})
        sequence = journal.get(event.event_id)
        if sequence is None:
            journal[event.event_id] = event.sequence
            if event.name == "session/host-migrated":
                self.host_migrations += 1
        elif sequence != event.sequence:
            self.duplicates += 1
        if event.mine:
            self._acked(player, event.event_id, now)  # answered after the update timed out


_MERGED = tuple(field for field in attrs.fields(Tally)
                if field.name not in ("origin", "_room_events"))
"The fields :meth:`Tally.to_data` carries: every count and latency of the run."
