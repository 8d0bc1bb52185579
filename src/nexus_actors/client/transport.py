"""One WebSocket connection over any trio stream, through ``websockets``' sans-I/O protocol.

A :class:`Link` reads whole text messages (reassembling fragments; the
protocol answers the server's pings by itself and the link writes the pongs
at once) and writes queued messages at a paced rate, below the server's rate
limit, with cursor updates coalesced to the latest one per interval. It knows
nothing of the room protocol.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Sequence

import trio
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from .. import netio
from ..protocol.limits import TokenBucket

RECEIVE_SIZE = 65536
_ANSWERED = frozenset({Opcode.PING, Opcode.CLOSE})
"Frames the protocol answers by itself: their answer is written at once."
MIN_WAIT = 0.001
"Seconds: the shortest wait for the send pacing to allow the next message."


class HandshakeFailed(Exception):
    """The server did not upgrade the connection to a WebSocket."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        "The HTTP status, if a response came."
        self.retry_after = retry_after
        "Seconds from a ``Retry-After`` header (a 429 or 503)."


def _no_cursor() -> bytes | None:
    return None


def _no_cursor_waiting() -> bool:
    return False


class Link:
    """A WebSocket client connection: text messages in, paced text messages out (and,
    for a session, its latest cursor position at most every ``cursor_interval``)."""

    def __init__(self, stream: trio.abc.Stream, protocol: ClientProtocol, *,
                 idle_timeout: float, pacing: TokenBucket | None = None,
                 cursor_interval: float = 0.0,
                 take_cursor: Callable[[], bytes | None] = _no_cursor,
                 cursor_waiting: Callable[[], bool] = _no_cursor_waiting) -> None:
        self.stream = stream
        self.protocol = protocol
        self.idle_timeout = idle_timeout
        self.pacing = pacing
        "Limits the messages sent (``None``: as fast as they come)."
        self.cursor_interval = cursor_interval
        self.take_cursor = take_cursor
        "Where the latest cursor update comes from (``None``: nothing new)."
        self.cursor_waiting = cursor_waiting
        "Whether a cursor update waits to be taken (without taking it)."
        self.reason = "dropped"
        "Why the connection ended when there was no close frame: dropped, idle, or an abort."
        self._messages: deque[bytes] = deque()
        self._parts: list[bytes] | None = None
        self._outgoing: deque[bytes] = deque()
        self._closing: tuple[int, str] | None = None
        "A clean close asked for: sent once everything queued before it is written."
        self._ended = False
        self._wake = trio.Event()
        self._next_cursor = -math.inf
        self._scope = trio.CancelScope()
        self._heard = trio.current_time()
        "When data last arrived."
        self._socket = netio.plain_socket(stream)

    # Opening --------------------------------------------------------------------------

    @classmethod
    async def open(cls, stream: trio.abc.Stream, uri: str, *, compress: bool,
                   idle_timeout: float, pacing: TokenBucket | None = None,
                   cursor_interval: float = 0.0,
                   take_cursor: Callable[[], bytes | None] = _no_cursor,
                   cursor_waiting: Callable[[], bool] = _no_cursor_waiting,
                   headers: Sequence[tuple[str, str]] = ()) -> Link:
        """Run the opening handshake for ``uri`` (``ws://host:port/ws?...``) on ``stream``,
        with extra request ``headers``."""
        # ``None``, not ``[]``: an empty list would send an empty extensions header.
        extensions = [ClientPerMessageDeflateFactory()] if compress else None
        protocol = ClientProtocol(parse_uri(uri), extensions=extensions, max_size=None)
        request = protocol.connect()
        for name, value in headers:
            request.headers[name] = value
        protocol.send_request(request)
        link = cls(stream, protocol, idle_timeout=idle_timeout, pacing=pacing,
                   cursor_interval=cursor_interval, take_cursor=take_cursor,
                   cursor_waiting=cursor_waiting)
        await link._write(protocol.data_to_send())
        response: Response | None = None
        while response is None:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise HandshakeFailed(f"connection lost during the handshake: {exc}") from exc
            if not data:
                raise HandshakeFailed("connection closed during the handshake")
            protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, Response):
                    response = event
                else:
                    link._take(event)
        if protocol.handshake_exc is not None or response.status_code != 101:
            raise HandshakeFailed(f"handshake refused: HTTP {response.status_code}",
                                  status=response.status_code,
                                  retry_after=_retry_after(response))
        return link

    # Reading --------------------------------------------------------------------------

    def _take(self, event: object) -> None:
        if not isinstance(event, Frame):
            return
        if event.opcode is Opcode.TEXT:
            self._parts = [bytes(event.data)]
        elif event.opcode is Opcode.CONT and self._parts is not None:
            self._parts.append(bytes(event.data))
        else:
            return
        if event.fin:
            self._messages.append(b"".join(self._parts))
            self._parts = None

    async def receive(self) -> bytes | None:
        """The next text message; ``None`` once the connection has ended."""
        while not self._messages:
            if self._ended:
                return None
            try:
                data = await netio.receive(self.stream, self._socket, RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            self._heard = trio.current_time()
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
                self._ended = True
            answer = not data
            for event in self.protocol.events_received():
                self._take(event)
                # The protocol answers a ping with a pong and a close with a close.
                answer = answer or (isinstance(event, Frame) and event.opcode in _ANSWERED)
            if self.protocol.close_rcvd is not None or self.protocol.parser_exc is not None:
                self._ended = answer = True
            if answer:
                self._wake.set()  # for the writer: something to write at once
        return self._messages.popleft()

    @property
    def close_code(self) -> int | None:
        """The server's close code (``None``: the connection ended without a close frame)."""
        close = self.protocol.close_rcvd
        return close.code if close is not None else None

    @property
    def close_reason(self) -> str:
        close = self.protocol.close_rcvd
        return close.reason if close is not None else ""

    @property
    def queued(self) -> int:
        """Messages waiting to be written."""
        return len(self._outgoing)

    @property
    def buffered(self) -> int:
        """Messages already received and not yet delivered (more will follow at once)."""
        return len(self._messages)

    # Writing --------------------------------------------------------------------------

    def send(self, messages: Collection[bytes]) -> None:
        """Queue text messages; they are written in order, paced."""
        if messages:
            self._outgoing.extend(messages)
            self._wake.set()

    def nudge(self) -> None:
        """Something may be ready to write (a new cursor position)."""
        self._wake.set()

    async def _write(self, chunks: list[bytes]) -> None:
        data = b"".join(chunks)
        if data:
            await self.stream.send_all(data)
        if chunks and not chunks[-1] and isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()  # the protocol asked to end the stream

    def _next_message(self, now: float) -> tuple[bytes | None, float]:
        """A message that may be sent now, or when to look again."""
        if self.protocol.state is not State.OPEN:
            self._outgoing.clear()
            return None, math.inf
        if not self._outgoing and (self._closing is not None or now < self._next_cursor):
            # Wake for the cursor pacing only if a cursor waits; a new one nudges.
            waiting = self._closing is None and self.cursor_waiting()
            return None, self._next_cursor if waiting else math.inf
        pacing = self.pacing
        if pacing is not None and pacing.refill(now) < 1.0:
            # At least a millisecond: a wait rounded away to nothing would never refill.
            return None, now + max(pacing.retry_after(), MIN_WAIT)
        if self._outgoing:
            message = self._outgoing.popleft()
        else:
            cursor = self.take_cursor()
            if cursor is None:
                return None, math.inf
            message = cursor
            self._next_cursor = now + self.cursor_interval
        if pacing is not None:
            pacing.take(now)
        return message, now

    async def _writer(self) -> None:
        try:
            while True:
                now = trio.current_time()
                while True:  # everything the pacing allows now, in one write
                    message, later = self._next_message(now)
                    if message is None:
                        break
                    self.protocol.send_text(message)
                if (self._closing is not None and not self._outgoing
                        and self.protocol.state is State.OPEN):
                    self.protocol.send_close(*self._closing)
                await self._write(self.protocol.data_to_send())
                if later == math.inf:
                    await self._wake.wait()
                else:
                    with trio.move_on_at(later):
                        await self._wake.wait()
                self._wake = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.abort()

    # Running and closing ------------------------------------------------------------

    async def run(self, deliver: Callable[[bytes], None], *, close_timeout: float) -> None:
        """Deliver every message until the connection ends, then close the stream."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                with self._scope:
                    await self._deliver_all(deliver)
                nursery.cancel_scope.cancel()
            with trio.move_on_after(close_timeout):
                await self._write(self.protocol.data_to_send())  # the echo of a close frame
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _deliver_all(self, deliver: Callable[[bytes], None]) -> None:
        """Deliver every message until the connection ends or stays silent for
        ``idle_timeout``. The idle deadline is kept lazily: reads share one cancel scope
        (one per read would cost as much as the read), renewed from the time data last
        arrived only when it expires. A read cancelled while waiting loses nothing."""
        while True:
            with trio.CancelScope(deadline=self._heard + self.idle_timeout):
                while (message := await self.receive()) is not None:
                    deliver(message)
                return
            if trio.current_time() >= self._heard + self.idle_timeout:
                self.reason = "idle"
                self._ended = True
                return

    def abort(self, reason: str | None = None) -> None:
        """End the connection at once, without a closing handshake."""
        if reason is not None:
            self.reason = reason
        self._ended = True
        self._scope.cancel()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Begin the closing handshake once every message queued so far is written (paced
        as usual); :meth:`run` returns once the server answers."""
        if self.protocol.state is State.OPEN and self._closing is None:
            self._closing = (code, reason)
            self._wake.set()


def _retry_after(response: Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
