"""The handle other actors hold on one connection: a bounded outbox and a close request.

Nothing here blocks. A room fans out with :meth:`Peer.queue` and, once per
batch of messages it handled, calls :meth:`Peer.flush`: the connection then
writes everything queued with one non-blocking write when the socket takes it,
and only wakes its writer task when the socket pushes back. (Waking a task per
frame is what makes a naive Trio relay slow.) :meth:`Peer.send` queues and
wakes the writer at once, for frames a connection sends itself.

An outbox that grows past its frame or byte bound means the client cannot keep
up; the peer is then closed with a ``backoff`` hint (1013) and its queued
frames are dropped. The client resumes and the journal replays what it
missed, so the room never waits for its slowest member and memory stays
bounded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import attrs
import trio

from ..metrics import Metrics
from ..protocol.wire import Wire

# WebSocket close codes (RFC 6455 and the 4000-4999 private range).
NORMAL = 1000
POLICY = 1008
TOO_BIG = 1009
SERVICE_RESTART = 1012
TRY_AGAIN_LATER = 1013
SUPERSEDED = 4000
KICKED = 4001
BAD_REQUEST = 4400
INVALID_TOKEN = 4401
ROOM_NOT_FOUND = 4404
ROOM_EXISTS = 4409
ROOM_FULL = 4429


@attrs.frozen
class CloseRequest:
    code: int
    reason: str
    final: tuple[Wire, ...] = ()
    "Frames sent just before the close frame (an error, a backoff hint)."


class Peer:
    """One client connection as rooms and the registry see it."""

    def __init__(self, peer_id: int, address: str, *, max_frames: int, max_bytes: int,
                 on_overflow: Callable[[Peer], None], metrics: Metrics | None = None) -> None:
        self.id = peer_id
        self.address = address
        self.via: str | None = None
        "The node id of the process that relays this connection here, if one does."
        self.metrics = metrics
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._on_overflow = on_overflow
        self._queue: deque[Wire] = deque()
        self._queued_bytes = 0
        self._fresh = 0
        self._fresh_bytes = 0
        "Frames (and bytes) queued since the last flush: not yet offered to the socket."
        self._wake = trio.Event()
        self.closing: CloseRequest | None = None
        "Set once a close was asked for; the writer sends ``final`` and the close frame."
        self.closed = False
        "Set when the connection is gone (the room treats it as a disconnect)."
        self.aborted = False
        self.held = False
        "Frames stay queued (not written) until :meth:`release`: the seat is not durable yet."
        self._scope: trio.CancelScope | None = None
        self._close_timeout = 0.0
        self._write_now: Callable[[], bool] | None = None

    def bind(self, scope: trio.CancelScope, close_timeout: float,
             write_now: Callable[[], bool] | None) -> None:
        """Called by the connection: its tasks' cancel scope and its non-blocking writer.

        A close must finish within ``close_timeout`` and an abort ends the connection
        at once, even if its writer is stuck in a write to a client that stopped
        reading.
        """
        self._scope = scope
        self._close_timeout = close_timeout
        self._write_now = write_now
        if self.aborted:
            scope.cancel()

    # Producer side (rooms, the connection's own reader) --------------------

    def queue(self, wire: Wire) -> bool:
        """Queue a frame for the next :meth:`flush`. ``False``: dropped (closing or full).

        Full means the client has not taken what was offered to it at earlier flushes:
        frames queued since the last flush do not count, so a burst produced in one turn
        (the acks and own events of one commit) never closes a client that reads.
        """
        if self.closing is not None or self.closed:
            return False
        if (len(self._queue) - self._fresh >= self.max_frames
                or self._queued_bytes - self._fresh_bytes > self.max_bytes):
            self._queue.clear()
            self._queued_bytes = self._fresh = self._fresh_bytes = 0
            self._on_overflow(self)
            return False
        self._queue.append(wire)
        self._queued_bytes += len(wire)
        self._fresh += 1
        self._fresh_bytes += len(wire)
        return True

    def send(self, wire: Wire) -> bool:
        """Queue a frame and wake the writer."""
        if self.queue(wire):
            self._fresh = self._fresh_bytes = 0  # offered at once
            self._wake.set()
            return True
        return False

    def hold(self) -> None:
        """Keep queued frames back until :meth:`release` (control frames still flow)."""
        self.held = True

    def release(self) -> None:
        self.held = False
        self.flush()

    def flush(self) -> None:
        """Write what is queued now if the socket takes it, else hand it to the writer."""
        self._fresh = self._fresh_bytes = 0  # from now on it counts against the limits
        if not self._queue or self.held:
            return
        if self._write_now is None or not self._write_now():
            self._wake.set()

    def close(self, code: int, reason: str, *final: Wire, discard_pending: bool = False) -> None:
        """Ask the writer to send ``final`` frames and a close frame (first request wins)."""
        if self.closing is not None or self.closed:
            return
        if discard_pending:
            self._queue.clear()
            self._queued_bytes = self._fresh = self._fresh_bytes = 0
        self.closing = CloseRequest(code, reason, final)
        self._count(final)
        self._wake.set()
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline,
                                       trio.current_time() + self._close_timeout)

    def abort(self) -> None:
        """Drop the connection without a closing handshake (a dead peer)."""
        self.aborted = True
        self._wake.set()
        if self._scope is not None:
            self._scope.cancel()

    def wake(self) -> None:
        """Wake the writer (the protocol has control frames to send)."""
        self._wake.set()

    # Consumer side (the connection's writer) -------------------------------

    async def wait(self) -> None:
        await self._wake.wait()
        self._wake = trio.Event()

    def take(self) -> list[Wire]:
        if self.held and self.closing is None:
            return []
        frames = list(self._queue)
        self._queue.clear()
        self._queued_bytes = self._fresh = self._fresh_bytes = 0
        self._count(frames)
        return frames

    def _count(self, frames: Iterable[Wire]) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        out = metrics.frames_out
        for wire in frames:
            kind = wire.kind
            out[kind] += 1
            if wire.label:
                (metrics.errors if kind == "error" else metrics.backoffs)[wire.label] += 1

    @property
    def queued(self) -> int:
        return len(self._queue)

    def __repr__(self) -> str:
        return f"<Peer {self.id} {self.address}>"
