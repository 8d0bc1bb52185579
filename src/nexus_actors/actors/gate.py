"""The output gate: frames a member may see only once something is durable.

A room broadcasts an event to the other members at once, but the sender's own
copy, its ``event-ack`` and its ``update-confirmed`` wait until the
persistence actor reports the event committed; a new seat's welcome (with its
resume token) waits until the seat's ``session/join`` is committed, and a
rotated token's ``session/token`` until the rotation is. The gate
keeps those frames, in sequence order, and releases them as the durable
sequence advances. It is owned by one room actor and does no I/O: frames are
queued on peers, which the room flushes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import attrs

from ..protocol.wire import Wire
from .peer import Peer


@attrs.define
class _Waiting:
    """Frames for one member, released when ``sequence`` is durable."""

    sequence: int
    member_id: str
    events: list[tuple[int, Wire]]
    "The member's own events ``(serverSequence, frame)``; skipped if a replay covered them."
    frames: list[Wire]
    "``event-ack`` and, for optimistic updates, ``update-confirmed``."


class OutputGate:
    def __init__(self, durable_sequence: int = 0) -> None:
        self.durable_sequence = durable_sequence
        "Every event up to this ``serverSequence`` is committed."
        self._marks: deque[tuple[int, int]] = deque()
        self._waiting: deque[_Waiting] = deque()
        self._seats: dict[str, int] = {}
        self._after_marks: deque[tuple[int, str, Peer, Wire]] = deque()

    def journaled(self, mark: int, sequence: int) -> None:
        """Event ``sequence`` was handed to the persistence actor as intent ``mark``."""
        self._marks.append((mark, sequence))

    def own_event(self, member_id: str, sequence: int, wire: Wire) -> None:
        """The sender's copy of its own event, delivered once the event is durable."""
        tail = self._waiting[-1] if self._waiting else None
        if tail is None or tail.member_id != member_id or tail.sequence != sequence:
            tail = _Waiting(sequence=sequence, member_id=member_id, events=[], frames=[])
            self._waiting.append(tail)
        tail.events.append((sequence, wire))

    def after(self, member_id: str, sequence: int, frames: list[Wire],
              peer: Peer | None) -> None:
        """Queue ``frames`` on ``peer`` once ``sequence`` is durable (at once if it is)."""
        if sequence <= self.durable_sequence:
            if peer is not None:
                for frame in frames:
                    peer.queue(frame)
            return
        tail = self._waiting[-1] if self._waiting else None
        if tail is not None and tail.member_id == member_id and tail.sequence >= sequence:
            tail.frames.extend(frames)
            return
        # Keep the queue in sequence order: a frame may wait a little longer, never less.
        at = max(sequence, tail.sequence if tail is not None else 0)
        self._waiting.append(_Waiting(sequence=at, member_id=member_id, events=[],
                                      frames=frames))

    def hold_seat(self, member_id: str, sequence: int, peer: Peer) -> None:
        """Keep everything queued for a new seat back until its join (``sequence``) is durable."""
        if sequence > self.durable_sequence:
            peer.hold()
            self._seats[member_id] = sequence

    def when_durable(self, mark: int, member_id: str, peer: Peer, frame: Wire) -> None:
        """Queue ``frame`` on ``peer`` once intent ``mark`` is durable, if ``peer`` is then
        still the member's connection (a later connection may hold a newer frame)."""
        self._after_marks.append((mark, member_id, peer, frame))

    def forget(self, member_id: str) -> None:
        """The member's connection is gone: nothing of it is held any more."""
        self._seats.pop(member_id, None)

    def committed(self, mark: int, members: Mapping[str, Peer],
                  seen_through: Mapping[str, int]) -> None:
        """Intents up to ``mark`` are durable: release what waited for them."""
        while self._marks and self._marks[0][0] <= mark:
            self.durable_sequence = self._marks.popleft()[1]
        durable = self.durable_sequence
        while self._waiting and self._waiting[0].sequence <= durable:
            entry = self._waiting.popleft()
            peer = members.get(entry.member_id)
            if peer is None:
                continue
            seen = seen_through.get(entry.member_id, 0)
            for sequence, wire in entry.events:
                if sequence > seen:
                    peer.queue(wire)
            for frame in entry.frames:
                peer.queue(frame)
        while self._after_marks and self._after_marks[0][0] <= mark:
            _, member_id, peer, frame = self._after_marks.popleft()
            if members.get(member_id) is peer:
                peer.queue(frame)
        for member_id, sequence in list(self._seats.items()):
            if sequence <= durable:
                del self._seats[member_id]
                peer = members.get(member_id)
                if peer is not None:
                    peer.release()
